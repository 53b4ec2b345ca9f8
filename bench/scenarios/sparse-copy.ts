// Scenario "sparse-copy": copies without reflink (issue 16 item 1), on a
// loop-mounted ext4, side by side with `cp --sparse=always` (what Qubes runs
// for the same copy) in the same run on the same filesystem, interleaved:
// - an empty volume, and one holding 1 GiB of data in 1 MiB extents spread
//   over it: sparseCopy (durable, as a pool's copy of an origin) against cp
//   followed by an fsync of the copy; and both without the fsync;
// - AppVM start+stop in a file-reflink pool with setup_check=False (copies
//   are sparse copies), against the same file operations written straight,
//   with `cp --sparse=always` for each copy.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../src/drivers/file-reflink/pool.js';
import { createSparse, sparseCopy } from '../../src/files/files.js';
import { fileExtents } from '../../src/files/extents.js';
import { DomainStorage } from '../../src/storage/domain-storage.js';
import { defaultVolumeConfigs } from '../../src/storage/volume-sets.js';
import { scratchExt4 } from '../scratch-fs.js';
import { fsyncPath, straightLineCycle } from '../straight-line.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';
import { scatter } from './lifecycle.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const run = promisify(execFile);

async function cp(src: string, dst: string): Promise<void> {
  await run('cp', ['--sparse=always', '--', src, dst]);
}

/** Runs `a` and `b` `n` times each, interleaved, alternating which goes first; `reset` after each. */
async function sideBySide(n: number, a: () => Promise<unknown>, b: () => Promise<unknown>, reset: () => Promise<unknown>): Promise<[number[], number[]]> {
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < n; i++) {
    for (const first of i % 2 ? [false, true] : [true, false]) {
      if (first) ta.push(await timeMs(a));
      else tb.push(await timeMs(b));
      await reset();
    }
  }
  return [ta, tb];
}

export const sparseCopyScenario: Scenario = {
  name: 'sparse-copy',
  describe: 'copies without reflink on ext4 (empty and 1 GiB-data 10 GiB volumes; AppVM start+stop) against cp --sparse=always',
  async run(opts) {
    const size = opts.quick ? 256 * MiB : 10 * GiB;
    const data = opts.quick ? 16 * MiB : GiB;
    // Each durable copy is 1 GiB of writes to a shared disk whose single fsyncs span 3-5x: seven copies
    // could not tell 1.13x from 1.0x (docs/benchmarks.md, issue 16 item 1), so fifteen of each.
    const copies = opts.quick ? 3 : 15;
    const cycles = opts.quick ? 2 : 7;
    const scratch = await scratchExt4('sparse-copy', opts.quick ? 2 : 24);
    const ext = await fileExtents();
    const notes = [
      `filesystem: ${scratch.kind}`,
      `volumes ${size / MiB} MiB, ${data / MiB} MiB of data in 1 MiB extents; ${copies} copies and ${cycles} start+stop cycles each, interleaved`,
      `holes and kernel copies: ${typeof ext === 'string' ? `unavailable (${ext}): reads everything` : 'lseek SEEK_DATA/SEEK_HOLE + copy_file_range through koffi'}`,
    ];
    const figures: Figure[] = [];
    try {
      const dir = path.join(scratch.dir, 'copies');
      await fs.mkdir(dir);
      const empty = path.join(dir, 'empty.img');
      const full = path.join(dir, 'data.img');
      const dst = path.join(dir, 'copy.img');
      await createSparse(empty, size);
      await createSparse(full, size);
      await scatter(full, data, 7);
      const drop = () => fs.rm(dst, { force: true });
      for (const [label, src] of [['empty', empty], ['data', full]] as const) {
        const [lib, base] = await sideBySide(copies, () => sparseCopy(src, dst), async () => {
          await cp(src, dst);
          await fsyncPath(dst);
        }, drop);
        const b = figure(`${label}.cp+fsync`, 'ms', base, { note: 'cp --sparse=always, then fsync of the copy' });
        figures.push(b, withBaseline(figure(`${label}.library`, 'ms', lib), b, label === 'empty' ? '< 20 ms' : 'ratio <= 1.1'));
        const [libNs, baseNs] = await sideBySide(copies, () => sparseCopy(src, dst, undefined, undefined, false), () => cp(src, dst), drop);
        const bn = figure(`${label}.cp`, 'ms', baseNs, { note: 'cp --sparse=always alone' });
        figures.push(bn, withBaseline(figure(`${label}.library-nosync`, 'ms', libNs), bn));
      }
      await fs.rm(dir, { recursive: true });
      figures.push(...(await lifecycle(scratch.dir, size, data, cycles)));
      return { figures, notes };
    } finally {
      await scratch.cleanup();
    }
  },
};

/** AppVM start+stop in a file-reflink pool on ext4, against the straight-line baseline with cp. */
async function lifecycle(root: string, size: number, data: number, cycles: number): Promise<Figure[]> {
  const dir = path.join(root, 'pool');
  const pool = fileReflinkDriver.createPool('bench', {
    dir_path: dir, setup_check: false, revisions_to_keep: 1, ephemeral_volatile: false,
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
  await app.stop(); // the first revision, as in steady state

  // The baseline: the same steps as bench/scenarios/lifecycle.ts's, with cp where that one reflinks.
  const baselineCycle = await straightLineCycle(
    path.join(root, 'baseline'),
    path.join(dir, 'vm-templates/tpl/root.img'),
    path.join(dir, 'appvms/work/private.img'),
    size,
    cp,
  );
  const libraryCycle = async () => {
    await app.start();
    await app.stop();
  };
  const [lib, base] = await sideBySide(cycles, libraryCycle, baselineCycle, async () => undefined);
  const baseline = figure('appvm.baseline-cp', 'ms', base, { note: 'straight-line link/cp --sparse=always/rename/fsync/truncate' });
  return [baseline, withBaseline(figure('appvm.start+stop', 'ms', lib), baseline, 'ratio <= 1.2')];
}
