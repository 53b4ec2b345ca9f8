// The child of the lvm_thin power-cut test (power-cut.ts), in the test VM:
// opens the lvm_thin pool VG/THIN and runs the plan's operations one after
// the other, writing `ACK i` on stdout once operation i resolved (the
// acknowledgement the test holds the driver to), `DONE` after the last; then
// waits to be killed (the power cut comes at a random moment). A failed
// operation writes `FAIL i MESSAGE` and exits 1.
//
// Usage: node power-cut-child.js VG THIN KEEP PLAN_JSON
import * as fs from 'node:fs';
import { openPool } from '../../conformance/open-pool.js';
import { pattern } from '../../helpers/data.js';
import type { LvmThinPool } from '../../../src/drivers/lvm-thin/index.js';
import type { Volume } from '../../../src/storage/volume.js';
import { PAGE, type CutOp } from './power-cut-plan.js';

const [vg, thin, keepArg, planJson] = process.argv.slice(2);
if (!vg || !thin || !keepArg || !planJson) throw new Error('usage: power-cut-child.js VG THIN KEEP PLAN_JSON');
const keep = Number(keepArg);
const plan = JSON.parse(planJson) as CutOp[];

/** A line on stdout, written at once (the parent counts what was acknowledged before the cut). */
const say = (s: string): void => {
  fs.writeSync(1, `${s}\n`);
};

/** Writes the page of `seed` at offset 0; `flush`: then fsync (a domain's flush; an import's writer always does). */
async function writePage(dev: string, seed: number, flush: boolean): Promise<void> {
  const fh = await fs.promises.open(dev, 'r+');
  try {
    await fh.write(pattern(PAGE, seed), 0, PAGE, 0);
    if (flush) await fh.sync();
  } finally {
    await fh.close();
  }
}

const pool = (await openPool('lvm_thin', 'cut', { volume_group: vg, thin_pool: thin, revisions_to_keep: keep })) as LvmThinPool;
const vol = (name: string, size: number): Volume =>
  pool.initVolume({ name, dirPrefix: 'appvms' }, { name: 'private', rw: true, save_on_stop: true, size });

async function run(op: CutOp): Promise<void> {
  const v = vol(op.vol, op.size);
  switch (op.op) {
    case 'create':
      return v.create();
    case 'import': {
      const dev = await v.importData(op.size);
      // As the Admin API's import writes it: the data, then fsync, then the end.
      await writePage(dev, op.seed, true);
      return v.importDataEnd(true);
    }
    case 'start':
      return v.start();
    case 'write':
      return writePage(await v.path(), op.seed, op.flush);
    case 'stop':
      return v.stop();
    case 'revert':
      return v.revert();
    case 'clone':
      return v.importVolume(vol(op.src, op.srcSize));
    case 'resize':
      return v.resize(op.size);
    case 'remove':
      return v.remove();
  }
}

say('READY');
for (const [i, op] of plan.entries()) {
  process.stderr.write(`power-cut child: ${i} ${JSON.stringify(op)}\n`);
  try {
    await run(op);
  } catch (e) {
    say(`FAIL ${i} ${(e instanceof Error ? e.message : String(e)).replace(/\n/g, ' ')}`);
    process.exit(1);
  }
  say(`ACK ${i}`);
}
say('DONE');
// Until the power cut.
setInterval(() => undefined, 60_000);
