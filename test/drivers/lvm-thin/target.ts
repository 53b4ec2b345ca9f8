// The lvm_thin driver's pool factory for the conformance suite, in the test
// VM: every pool is the thin pool THIN of volume group VG on a scratch disk.
// LV names are per volume group and the suite's crash and model cases reuse
// domain names, so a new pool's place is made fresh by removing every thin
// volume of the VG first (the suite uses one pool at a time, but for the
// second pool of a cross-pool clone, made before that test's volumes).
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { OptionValue } from '../../../src/storage/options.js';
import type { Pool } from '../../../src/storage/pool.js';
import { lvmThinDriver } from '../../../src/drivers/lvm-thin/index.js';
import { openPool } from '../../conformance/open-pool.js';
import { fileIo, type ConformanceTarget } from '../../conformance/target.js';
import { readAt } from '../../helpers/data.js';
import { lvm } from './lvm-cmd.js';

/**
 * The active LVs of `vg` as the kernel has them (/dev/VG/: one symlink per
 * active LV, the thin pool itself has none): every LV the driver makes is
 * active, and reading them costs no LVM command (each costs seconds in the
 * emulated guest).
 */
async function activeLvs(vg: string): Promise<string[]> {
  return (await fs.readdir(`/dev/${vg}`).catch(() => [] as string[])).sort();
}

/** Removes every thin volume of `vg` (one lvremove; the thin pools stay). */
export async function wipeThinVolumes(vg: string, thin: string): Promise<void> {
  const lvs = (await activeLvs(vg)).filter((n) => n !== thin).map((n) => `${vg}/${n}`);
  if (lvs.length) lvm('lvremove', '-q', '--force', ...lvs);
}

/** Export files of the driver left in the temp directory. */
async function exportFiles(): Promise<string[]> {
  return (await fs.readdir(os.tmpdir())).filter((n) => n.startsWith('qs-lvm-export-'));
}

export function lvmThinTarget(vg: string, thin: string, modelRuns: number): ConformanceTarget {
  const dirs: string[] = [];
  let n = 0;
  return {
    driver: lvmThinDriver,
    place: 'vm',
    skip: false,
    async makePool(options: Record<string, OptionValue> = {}): Promise<Pool> {
      await wipeThinVolumes(vg, thin);
      return openPool('lvm_thin', `lvm${++n}`, { volume_group: vg, thin_pool: thin, ...options });
    },
    async scratchDir() {
      const d = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-conf-lvm-scratch-'));
      dirs.push(d);
      return d;
    },
    async cleanup() {
      await wipeThinVolumes(vg, thin);
      for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
    },
    io: fileIo,
    failpoints: ['lvm.'],
    /** Running copies and imports (LV-snap, LV-import), volatile LVs, export files. */
    async debris() {
      const out: string[] = [];
      for (const name of await activeLvs(vg)) if (/-(snap|import|volatile)$/.test(name)) out.push(`${vg}/${name}`);
      out.push(...(await exportFiles()));
      return out;
    },
    revisionData: (v, r, length) => readAt(`/dev/${vg}/${v.vid.split('/')[1]}-${r.id}`, 0, length),
    modelRuns,
  };
}
