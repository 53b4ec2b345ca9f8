/**
 * The rbd driver as it was before librbd (every operation spawns `rbd`/`ceph`
 * commands), kept only as the bench baseline of bench/scenarios/rbd.ts: the
 * same operations, through the CLI, in the same run. Not registered as a
 * driver; never used by the daemon.
 */
import type { PoolOptions } from '../../src/storage/options.js';
import { RbdCliPool } from './pool.js';

export function createRbdCliPool(name: string, options: PoolOptions): RbdCliPool {
  return new RbdCliPool(name, options);
}
