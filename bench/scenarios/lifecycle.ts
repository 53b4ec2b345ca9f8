// Scenario "lifecycle": AppVM start+stop through the library, against the same
// file operations written as the shortest straight-line code (the baseline),
// interleaved in the same process on the same filesystem.
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../src/drivers/file-reflink/pool.js';
import { DomainStorage } from '../../src/storage/domain-storage.js';
import { defaultVolumeConfigs } from '../../src/storage/volume-sets.js';
import { scratchXfs } from '../scratch-fs.js';
import { straightLineCycle } from '../straight-line.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** Writes `dataBytes` in 1 MiB extents spread evenly over the file. */
export async function scatter(file: string, dataBytes: number, seed: number): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    const size = (await fh.stat()).size;
    const n = dataBytes / MiB;
    const stride = Math.floor(size / n / MiB) * MiB;
    const buf = Buffer.alloc(MiB, seed);
    for (let i = 0; i < n; i++) await fh.write(buf, 0, MiB, i * stride);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const FICLONE = fsc.COPYFILE_FICLONE_FORCE | fsc.COPYFILE_EXCL;

export const lifecycle: Scenario = {
  name: 'lifecycle',
  describe: 'AppVM start+stop (root snapshot, private origin keeping 1 revision, volatile), 10 GiB volumes with 1 GiB of data',
  async run(opts) {
    const cycles = opts.quick ? 3 : 25;
    const size = opts.quick ? 256 * MiB : 10 * GiB;
    const data = opts.quick ? 16 * MiB : GiB;
    const scratch = await scratchXfs('lifecycle', opts.quick ? 2 : 8);
    try {
      const dir = path.join(scratch.dir, 'pool');
      const pool = fileReflinkDriver.createPool('bench', {
        dir_path: dir, setup_check: true, revisions_to_keep: 1, ephemeral_volatile: false,
      }) as FileReflinkPool;
      await pool.setup();
      const p = { root: 'bench', private: 'bench', volatile: 'bench' };
      const sizes = { root: size, private: size };
      const tpl = DomainStorage.init({ domain: { name: 'tpl', dirPrefix: 'vm-templates' }, volumes: defaultVolumeConfigs('TemplateVM', p, sizes) }, () => pool);
      const app = DomainStorage.init({ domain: { name: 'work', dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('AppVM', p, sizes), template: tpl }, () => pool);
      await tpl.create();
      await app.create();
      await scatter(path.join(dir, 'vm-templates/tpl/root.img'), data, 1);
      await scatter(path.join(dir, 'appvms/work/private.img'), data, 2);
      await app.start();
      await app.stop(); // make the first revision, as in steady state

      // The baseline: the same file operations on reflinks of the same images, in a directory of their own.
      const baselineCycle = await straightLineCycle(
        path.join(scratch.dir, 'baseline'),
        path.join(dir, 'vm-templates/tpl/root.img'),
        path.join(dir, 'appvms/work/private.img'),
        size,
        (src, dst) => fs.copyFile(src, dst, FICLONE),
      );
      const libraryCycle = async () => {
        await app.start();
        await app.stop();
      };

      const lib: number[] = [];
      const base: number[] = [];
      for (let i = 0; i < cycles; i++) {
        // interleaved, alternating which goes first, so drift hits both alike
        if (i % 2) {
          base.push(await timeMs(baselineCycle));
          lib.push(await timeMs(libraryCycle));
        } else {
          lib.push(await timeMs(libraryCycle));
          base.push(await timeMs(baselineCycle));
        }
      }
      const baseline = figure('lifecycle.baseline', 'ms', base, { note: 'straight-line link/reflink/rename/fsync/truncate' });
      const out: Figure[] = [
        baseline,
        withBaseline(figure('lifecycle.library', 'ms', lib), baseline, 'ratio <= 1.3'),
      ];
      return { figures: out, notes: [`filesystem: ${scratch.kind}`, `${cycles} cycles each, volumes ${size / MiB} MiB with ${data / MiB} MiB of data`] };
    } finally {
      await scratch.cleanup();
    }
  },
};
