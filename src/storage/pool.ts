/**
 * The pool contract: a named place where volumes live, served by one driver
 * with driver-specific options. `initVolume` only makes the object (nothing
 * on disk); `places` says where the pool works (see places.ts: the App
 * refuses a pool whose places are, hold or lie inside another pool's, the
 * base directory or the state file's directory, before anything is made);
 * `setup` prepares the place, `undoSetup` takes back what a setup made when
 * the pool is not accepted after all; `destroy` forgets it (data kept).
 */
import { QubesValueError } from './errors.js';
import { KeyedMutex } from './lock.js';
import type { OptionValue, PoolOptions } from './options.js';
import type { PoolPlace } from './places.js';
import type { DomainRef, Volume, VolumeSpec } from './volume.js';

/** admin.pool.UsageDetails: data_size, data_usage and driver extras. */
export type UsageDetails = Record<string, number>;

const POOL_NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;

export function checkPoolName(name: string): void {
  if (!POOL_NAME_RE.test(name) || name === '.' || name === '..')
    throw new QubesValueError(
      `invalid pool name '${name.replace(/[\x00-\x1f]/g, '?').slice(0, 80)}': use letters, digits, '_', '.', '-' (at most 64)`,
    );
}

export abstract class Pool {
  readonly name: string;
  /** The driver name this pool was made by (as in storage.conf / qubes.xml). */
  readonly driver: string;
  /** Validated options, defaults included (see the driver's declaration). */
  protected readonly options: PoolOptions;
  /** One lock per vid: see Volume. */
  readonly locks = new KeyedMutex();

  constructor(name: string, driver: string, options: PoolOptions) {
    checkPoolName(name);
    this.name = name;
    this.driver = driver;
    this.options = { ...options };
  }

  get revisions_to_keep(): number {
    return Number(this.options['revisions_to_keep'] ?? 1);
  }
  get ephemeral_volatile(): boolean {
    return Boolean(this.options['ephemeral_volatile'] ?? false);
  }

  /** The pool's configuration: name, driver and every option (admin.pool.Info). */
  config(): Record<string, OptionValue> {
    return { name: this.name, driver: this.driver, ...this.options };
  }

  /** Changes a mutable option (already validated by the caller against the declaration). */
  setOption(key: string, value: OptionValue): void {
    this.options[key] = value;
  }

  /**
   * Removes what crashed processes left in the pool (temporary files of
   * copies, imports, exports). The App calls it when it opens, holding the
   * state lock: nothing of another process can be in flight then. Default:
   * nothing to do.
   */
  async sweepLeftovers(): Promise<void> {}

  /**
   * Where the pool works: the directories (or names) it owns or reads. Read
   * from the options only; touches nothing. A driver that keeps data on this
   * host must declare it here, or nothing keeps another pool out of it.
   */
  async places(): Promise<PoolPlace[]> {
    return [];
  }
  /**
   * Prepares the pool's place (directories, checks). Idempotent. A setup that
   * fails leaves nothing it made behind.
   */
  abstract setup(): Promise<void>;
  /**
   * Takes back what the last setup() made (directories it created, while
   * still empty), for a pool that was set up but then not accepted (its save
   * failed). Data is never removed.
   */
  async undoSetup(): Promise<void> {}
  /** Forgets the pool; data on disk is left alone. */
  abstract destroy(): Promise<void>;
  /** Makes a volume object for a domain; touches nothing on disk. */
  abstract initVolume(domain: DomainRef | null, spec: VolumeSpec): Volume;
  /** vids of the volumes present in the pool. */
  abstract listVolumes(): Promise<string[]>;
  /** A volume object for a vid present in the pool (with default properties). */
  abstract getVolume(vid: string): Promise<Volume>;
  /** Total bytes, or null if unknown. */
  abstract size(): Promise<number | null>;
  /** Used bytes, or null if unknown. */
  abstract usage(): Promise<number | null>;
  /** data_size, data_usage and any extras the driver knows. */
  async usageDetails(): Promise<UsageDetails> {
    const [size, usage] = await Promise.all([this.size(), this.usage()]);
    const d: UsageDetails = {};
    if (size !== null) d['data_size'] = size;
    if (usage !== null) d['data_usage'] = usage;
    return d;
  }
  /** The pool among `others` whose storage contains this one, if any. */
  includedIn(_others: readonly Pool[]): Pool | null {
    return null;
  }
}
