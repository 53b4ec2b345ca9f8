// What a driver gives the conformance suite: a pool factory and how a
// domain reads and writes its volumes. A new driver gets the whole volume
// contract tested by writing one of these (see test/conformance/README.md).
import * as fs from 'node:fs/promises';
import type { StorageDriver } from '../../src/storage/driver.js';
import type { OptionValue } from '../../src/storage/options.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Revision, Volume } from '../../src/storage/volume.js';
import { readAt, writeAt } from '../helpers/data.js';

/** Where the tests run, as the test summary counts them. */
export type Place = 'xfs' | 'btrfs' | 'ext4' | 'ceph' | 'vm';

/** Reads and writes what a domain sees at a volume's path(). */
export interface VolumeIo {
  /** Its name, so a crash child picks the same one (see crash-child.ts). */
  readonly name: 'file' | 'rbd';
  read(path: string, offset: number, length: number): Promise<Buffer>;
  write(path: string, offset: number, data: Buffer): Promise<void>;
}

export const fileIo: VolumeIo = {
  name: 'file',
  read: (p, offset, length) => readAt(p, offset, length),
  write: (p, offset, data) => writeAt(p, offset, data),
};

export interface ConformanceTarget {
  /** The driver's name as it is registered (the suite reads its declaration from `driver`). */
  readonly driver: StorageDriver;
  readonly place: Place;
  /** Why the target cannot run here (no filesystem, no cluster), or false. */
  readonly skip: string | false;
  /**
   * A fresh pool in a fresh place (directory, image prefix), made through the
   * registry from the target's options with `options` over them (validated:
   * a refused option rejects). Not set up yet.
   */
  makePool(options?: Record<string, OptionValue>): Promise<Pool>;
  /** A fresh directory on this machine (for a file-reflink pool to clone to and from). */
  scratchDir(): Promise<string>;
  /** Removes everything made; run after the suite, also when tests failed. */
  cleanup(): Promise<void>;
  readonly io: VolumeIo;
  /** Prefixes of the failpoints (src/files/failpoint.ts) the driver's code passes; [] when it has none. */
  readonly failpoints: readonly string[];
  /** What a pool holds that is not at rest (temporary files, helper snapshots): must be [] after any operation ends. */
  debris(pool: Pool): Promise<string[]>;
  /** A revision's data (for the model), when the driver lets one read it; else the model checks revisions by reverting. */
  revisionData?(v: Volume, r: Revision, length: number): Promise<Buffer>;
  /** Read-only drivers: the vid of a volume present in a pool from makePool (a kernel version). */
  readonly presentVid?: string;
  /** Random command sequences of the model-based test (default 15; QS_MODEL_RUNS overrides). */
  readonly modelRuns?: number;
}

/** Files under `dir`, relative, for debris checks. */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const ents = await fs.readdir(rel ? `${dir}/${rel}` : dir, { withFileTypes: true }).catch(() => []);
    for (const e of ents) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else out.push(r);
    }
  };
  await walk('');
  return out.sort();
}
