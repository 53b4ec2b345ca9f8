// The volumes and operations of the conformance crash tests, built the same
// way in the test process and in the crash children (crash-child.ts): a
// template root `tpl` (origin), an AppVM private volume `priv` (origin) and,
// where the driver serves snapshots, the AppVM root `snap` of `tpl`.
import type { Pool } from '../../src/storage/pool.js';
import type { Volume } from '../../src/storage/volume.js';
import { pattern, MiB } from '../helpers/data.js';
import type { VolumeIo } from './target.js';
import { SIZE, tagBytes, volumesOf } from './volumes.js';

export interface CrashScenario {
  pool: Pool;
  tpl: Volume;
  priv: Volume;
  snap: Volume | null;
}

export function crashScenario(pool: Pool, withSnapshot: boolean): CrashScenario {
  const tpl = volumesOf(pool, 'tpl').templateRoot();
  const app = volumesOf(pool, 'work');
  return { pool, tpl, priv: app.origin(), snap: withSnapshot ? app.snapshot(tpl) : null };
}

/** The data an import writes (seed 5). */
export const IMPORTED = pattern(SIZE, 5);

export function crashOps(s: CrashScenario, io: VolumeIo): Record<string, () => Promise<void>> {
  const write = (v: Volume, tag: string) => async () => io.write(await v.path(), 0, tagBytes(tag));
  return {
    'create-all': async () => {
      await s.pool.setup();
      await s.tpl.create();
      await s.priv.create();
      await s.snap?.create();
    },
    'start-app': async () => {
      await s.snap?.start();
      await s.priv.start();
    },
    'stop-app': async () => {
      await s.priv.stop();
      await s.snap?.stop();
    },
    'start-tpl': () => s.tpl.start(),
    'stop-tpl': () => s.tpl.stop(),
    'write-tpl-A': write(s.tpl, 'tpl A'),
    'write-app-A': write(s.priv, 'app A'),
    'write-app-B': write(s.priv, 'app B'),
    'write-app-C': write(s.priv, 'app C'),
    'revert-app': () => s.priv.revert(),
    'resize-app': () => s.priv.resize(SIZE + 2 * MiB),
    'resize-tpl': () => s.tpl.resize(SIZE + 8 * MiB),
    'shrink-app': () => s.priv.resize(SIZE / 2, { force: true }),
    'import-app': async () => {
      const p = await s.priv.importData(SIZE);
      await io.write(p, 0, IMPORTED);
      await s.priv.importDataEnd(true);
    },
    'clone-tpl-into-app': () => s.priv.importVolume(s.tpl),
    'remove-app': async () => {
      await s.snap?.remove();
      await s.priv.remove();
    },
  };
}
