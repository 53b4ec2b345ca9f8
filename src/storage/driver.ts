/**
 * The driver interface, whole, in one place. A driver is plain data plus a
 * factory: its name, the interface version it was written for, its options
 * and capabilities as declared data (callers ask, never test driver names),
 * and `createPool`. Third-party drivers export an object of this type.
 */
import type { OptionSpec, PoolOptions } from './options.js';
import type { Pool } from './pool.js';
import type { VolumeKind } from './volume.js';

/**
 * Version of this interface. A driver states the version it was written
 * for; the registry accepts versions from DRIVER_API_VERSION - DRIVER_API_AGE
 * up to DRIVER_API_VERSION (the Proxmox APIVER/APIAGE scheme).
 */
export const DRIVER_API_VERSION = 1;
export const DRIVER_API_AGE = 0;

export interface DriverCapabilities {
  /** Volume kinds this driver can serve; others are refused at initVolume. */
  readonly volumeKinds: readonly VolumeKind[];
  /** Most revisions a volume can keep (Infinity when unbounded). */
  readonly maxRevisions: number;
  /** Data lives elsewhere and may be shared by several hosts. */
  readonly remote: boolean;
  /** Volumes can be written (false for read-only sources such as kernels). */
  readonly writable: boolean;
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
