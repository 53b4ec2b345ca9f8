// Scenario "clone": cloning a 1 GiB and a 10 GiB volume full of data on XFS
// (reflink): the time must not grow with the size.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../src/drivers/file-reflink/pool.js';
import { DomainStorage } from '../../src/storage/domain-storage.js';
import { defaultVolumeConfigs } from '../../src/storage/volume-sets.js';
import { scratchXfs } from '../scratch-fs.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

async function fill(file: string, bytes: number): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    const buf = Buffer.alloc(8 * MiB, 0x5a);
    for (let pos = 0; pos < bytes; pos += buf.length) await fh.write(buf, 0, Math.min(buf.length, bytes - pos), pos);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export const clone: Scenario = {
  name: 'clone',
  describe: 'clone a 1 GiB and a 10 GiB private volume full of data (importVolume within an XFS pool)',
  async run(opts) {
    const small = opts.quick ? 16 * MiB : GiB;
    const large = opts.quick ? 160 * MiB : 10 * GiB;
    const reps = opts.quick ? 2 : 9;
    const scratch = await scratchXfs('clone', opts.quick ? 2 : 14);
    try {
      const dir = path.join(scratch.dir, 'pool');
      const pool = fileReflinkDriver.createPool('bench', {
        dir_path: dir, setup_check: true, revisions_to_keep: 0, ephemeral_volatile: false,
      }) as FileReflinkPool;
      await pool.setup();
      const p = { root: 'bench', private: 'bench', volatile: 'bench' };
      const mk = async (name: string, priv: number) => {
        const d = DomainStorage.init({ domain: { name, dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('StandaloneVM', p, { root: MiB, private: priv }) }, () => pool);
        await d.create();
        return d;
      };
      const src1 = await mk('src1', small);
      const src10 = await mk('src10', large);
      await fill(path.join(dir, 'appvms/src1/private.img'), small);
      await fill(path.join(dir, 'appvms/src10/private.img'), large);
      const dst = await mk('dst', MiB);
      const t1: number[] = [];
      const t10: number[] = [];
      for (let i = 0; i < reps; i++) {
        t1.push(await timeMs(() => dst.get('private').importVolume(src1.get('private'))));
        t10.push(await timeMs(() => dst.get('private').importVolume(src10.get('private'))));
      }
      const f1 = figure('clone.1GiB', 'ms', t1, { target: '< 20 ms' });
      const f10 = withBaseline(figure('clone.10GiB', 'ms', t10, { target: '< 20 ms' }), f1, 'ratio <= 1.5');
      const figures: Figure[] = [f1, f10];
      return { figures, notes: [`filesystem: ${scratch.kind}`, `volumes of ${small / MiB} and ${large / MiB} MiB fully written, ${reps} clones each`] };
    } finally {
      await scratch.cleanup();
    }
  },
};
