/**
 * The driver interface, whole, in one place. A driver is plain data plus a
 * factory: its name, the interface version it was written for, its options
 * and capabilities as declared data (callers ask, never test driver names),
 * and `createPool`. Third-party drivers export an object of this type.
 *
 * The declaration is the contract: a pool made through `createPoolFrom`
 * knows its driver's capabilities (`Pool.capabilities`), and the base
 * classes of src/storage/ refuse what they rule out (a volume kind not
 * served, a writable volume or any change of data in a read-only driver,
 * a shrink in a driver that cannot shrink, more revisions than kept, a pool option `revisions_to_keep` above
 * `maxRevisions`) before the driver is called. A driver never checks them
 * again itself.
 */
import { oneLineReason, QubesException, StoragePoolException } from './errors.js';
import { parseOptions, type OptionSpec, type OptionValue, type PoolOptions } from './options.js';
import { checkPoolName, Pool } from './pool.js';
import type { VolumeKind } from './volume.js';

/**
 * Version of this interface. A driver states the version it was written
 * for; the registry accepts versions from DRIVER_API_VERSION - DRIVER_API_AGE
 * up to DRIVER_API_VERSION (the Proxmox APIVER/APIAGE scheme).
 */
export const DRIVER_API_VERSION = 1;
export const DRIVER_API_AGE = 0;

export interface DriverCapabilities {
  /** Volume kinds this driver can serve; others are refused when the volume object is made. */
  readonly volumeKinds: readonly VolumeKind[];
  /**
   * Most revisions a volume can keep (Infinity when unbounded): a volume's
   * revisions_to_keep, and the pool option, above it are refused.
   */
  readonly maxRevisions: number;
  /** Data lives elsewhere and may be shared by several hosts. */
  readonly remote: boolean;
  /**
   * Volumes can be written (false for read-only sources such as kernels):
   * when false, rw volumes are refused, and so is every operation that would
   * change a volume's data (resize, revert, import).
   */
  readonly writable: boolean;
  /**
   * Volumes can be shrunk (admin.vm.volume.Resize to a smaller size, a forced
   * `resize`): the driver implements `Volume.doShrink`, which keeps the data
   * before the cut as a revision when the volume keeps revisions. Absent or
   * false: a shrink is refused before the driver is called (drivers written
   * before this capability existed cannot shrink).
   */
  readonly shrink?: boolean;
  /**
   * What `admin.pool.volume.List` names (added after version 1; absent:
   * 'pool'). 'pool': the pool's own listing (`listVolumes`), for drivers
   * whose storage is the record of what exists (an LVM thin pool, a Ceph
   * pool, a kernel directory). 'domains': the volumes the loaded domains
   * hold in the pool, answered from memory, as Qubes' file and file-reflink
   * drivers answer (their list_volumes is the volumes init_volume made): an
   * image no domain owns is not named.
   */
  readonly listing?: VolumeListing;
}

/** See DriverCapabilities.listing. */
export type VolumeListing = 'pool' | 'domains';

/** What admin.pool.volume.List names for a pool of this declaration (absent: 'pool'). */
export function volumeListing(caps: DriverCapabilities): VolumeListing {
  return caps.listing === 'domains' ? 'domains' : 'pool';
}

/** Whether the declaration allows shrinking (absent: no, the safe default). */
export function canShrink(caps: DriverCapabilities): boolean {
  return caps.shrink === true;
}


export interface StorageDriver {
  readonly name: string;
  readonly apiVersion: number;
  /** One line: what it stores where. */
  readonly description: string;
  /** Options besides `name`, common ones (revisions_to_keep, ...) included. */
  readonly options: readonly OptionSpec[];
  readonly capabilities: DriverCapabilities;
  /** Makes the pool object from validated options; touches nothing on disk. */
  createPool(name: string, options: PoolOptions): Pool;
}

/**
 * The options a pool of `driver` takes, as validated: the declared ones,
 * with `revisions_to_keep` bounded by `capabilities.maxRevisions` (the
 * declaration says it once; the option follows).
 */
export function poolOptionSpecs(driver: Pick<StorageDriver, 'options' | 'capabilities'>): readonly OptionSpec[] {
  const most = driver.capabilities.maxRevisions;
  return driver.options.map((o) =>
    o.name === 'revisions_to_keep' && o.type === 'int' && Number.isFinite(most) && (o.max === undefined || o.max > most)
      ? { ...o, max: most }
      : o,
  );
}

/**
 * Makes a pool of `driver`, the one way every pool is made (the registry,
 * the App's factories, callback backends): checks the name, validates the
 * raw options against the declaration (poolOptionSpecs: unknown, missing or
 * mistyped keys and values out of bounds are QubesValueErrors naming the
 * key), calls the driver's factory and binds the driver's capabilities to
 * the pool. Nothing on disk is touched.
 */
export function createPoolFrom(driver: StorageDriver, name: string, rawOptions: Record<string, OptionValue>): Pool {
  checkPoolName(name);
  const options = parseOptions(poolOptionSpecs(driver), rawOptions, `pool ${name}`);
  let pool: unknown;
  try {
    pool = driver.createPool(name, options);
  } catch (e) {
    if (e instanceof QubesException) throw e;
    throw new StoragePoolException(`pool ${name}: driver ${driver.name} failed to make the pool: ${oneLineReason(e)}`, { cause: e });
  }
  if (!looksLikePool(pool, name))
    throw new StoragePoolException(`pool ${name}: driver ${driver.name} did not return a pool named '${name}'`);
  // A pool of a driver built against another copy of this package has its own base class, and its own checks.
  if (pool instanceof Pool) pool.bindCapabilities(driver.capabilities);
  return pool;
}

/** Duck-typed, so a driver built against another copy of this package still works. */
function looksLikePool(p: unknown, name: string): p is Pool {
  if (p instanceof Pool) return p.name === name;
  if (typeof p !== 'object' || p === null) return false;
  const o = p as Record<string, unknown>;
  return (
    o['name'] === name &&
    ['setup', 'destroy', 'initVolume', 'listVolumes', 'getVolume', 'size', 'usage', 'config'].every(
      (m) => typeof o[m] === 'function',
    )
  );
}
