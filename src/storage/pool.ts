/**
 * The pool contract: a named place where volumes live, served by one driver
 * with driver-specific options. `initVolume` only makes the object (nothing
 * on disk); `places` says where the pool works (see places.ts: the App
 * refuses a pool whose places are, hold or lie inside another pool's, the
 * base directory or the state file's directory, before anything is made);
 * `includedIn` answers from the places too; `setup` prepares the place,
 * `undoSetup` takes back what a setup made when the pool is not accepted
 * after all; `destroy` forgets it (data kept). `capabilities` is the
 * driver's declaration, which the base classes enforce (driver.ts).
 */
import * as path from 'node:path';
import type { DriverCapabilities } from './driver.js';
import { QubesValueError } from './errors.js';
import { KeyedMutex } from './lock.js';
import type { OptionValue, PoolOptions } from './options.js';
import type { PoolPlace } from './places.js';
import type { DomainRef, Volume, VolumeSpec } from './volume.js';

/**
 * What a pool answers to until its driver's declaration is bound (a pool made
 * without createPoolFrom, by a driver that does not pass its declaration to
 * the constructor): every kind, any number of revisions, writable, no
 * shrinking (the one change that cuts data away needs a declaration). The
 * property rules of volume.ts hold all the same.
 */
export const UNDECLARED_CAPABILITIES: DriverCapabilities = Object.freeze({
  volumeKinds: Object.freeze(['volatile', 'snapshot', 'origin', 'origin_snapshot'] as const),
  maxRevisions: Infinity,
  remote: false,
  writable: true,
  shrink: false,
});

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
  private declared: DriverCapabilities;

  /**
   * `capabilities`: the driver's declaration, for pools made without
   * createPoolFrom (which binds it anyway); a driver written before this
   * parameter existed gets it bound there.
   */
  constructor(name: string, driver: string, options: PoolOptions, capabilities: DriverCapabilities = UNDECLARED_CAPABILITIES) {
    checkPoolName(name);
    this.name = name;
    this.driver = driver;
    this.options = { ...options };
    this.declared = capabilities;
  }

  /**
   * What the driver declared this pool can do; the base classes refuse the
   * rest before the driver is called. A pool that stands in front of another
   * (callback) answers with that pool's.
   */
  get capabilities(): DriverCapabilities {
    return this.declared;
  }
  /** The driver whose declaration `capabilities` is, for messages (a callback pool's backend driver). */
  get declaredBy(): string {
    return this.driver;
  }

  /**
   * Binds the driver's declaration (createPoolFrom does, for every pool it
   * makes). The options were validated against it already (poolOptionSpecs).
   */
  bindCapabilities(capabilities: DriverCapabilities): void {
    this.declared = capabilities;
  }

  /** The option, else 1, or fewer when the driver keeps fewer (a kernel pool: 0). */
  get revisions_to_keep(): number {
    return Number(this.options['revisions_to_keep'] ?? Math.min(1, this.capabilities.maxRevisions));
  }
  get ephemeral_volatile(): boolean {
    return Boolean(this.options['ephemeral_volatile'] ?? false);
  }

  /** The pool's configuration: name, driver and every option (admin.pool.Info). */
  config(): Record<string, OptionValue> {
    return { name: this.name, driver: this.driver, ...this.options };
  }

  /**
   * Changes a mutable option, validated by the caller against
   * poolOptionSpecs of the declaration. revisions_to_keep above the
   * driver's maxRevisions is refused here all the same (QubesValueError,
   * nothing changed): no caller can set more than the driver keeps.
   */
  setOption(key: string, value: OptionValue): void {
    if (key === 'revisions_to_keep') checkRevisionsLimit(this, Number(value), `pool ${this.name}: option revisions_to_keep`);
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
  /**
   * Whether the pool can be used on this host (its driver's facilities and
   * its storage are there: an LVM volume group, say). The App calls it when
   * it loads a pool from the state: one that throws stays listed,
   * unavailable, with the message as the reason. Touches nothing. Default:
   * usable.
   */
  async checkUsable(): Promise<void> {}
  /** Forgets the pool; data on disk is left alone. */
  abstract destroy(): Promise<void>;
  /**
   * Releases what the pool object holds open (a cluster connection) when
   * its App closes; the pool and its data stay. Idempotent.
   */
  async close(): Promise<void> {}
  /**
   * Options the pool fills in when it is added (after setup), saved with it
   * from then on (rbd: a generated host_id). Default: none.
   */
  addedOptions(): Record<string, string> {
    return {};
  }
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
  /**
   * The pool among `others` whose storage holds this one's (admin.pool.Info
   * `included_in`): the one with the deepest directory place that one of
   * this pool's own directory places lies strictly inside. Each pool answers
   * for itself through places(), from its own options; none reads
   * another's.
   */
  async includedIn(others: readonly Pool[]): Promise<Pool | null> {
    const mine = ownDirectories(await this.places());
    if (!mine.length) return null;
    let best: Pool | null = null;
    let bestLen = -1;
    for (const p of others) {
      if (p === this) continue;
      for (const place of await p.places()) {
        if (place.kind !== 'directory') continue;
        const theirs = path.resolve(place.path);
        if (theirs.length > bestLen && mine.some((d) => d.startsWith(theirs + path.sep))) {
          best = p;
          bestLen = theirs.length;
        }
      }
    }
    return best;
  }
}

function ownDirectories(places: readonly PoolPlace[]): string[] {
  return places.filter((p) => p.kind === 'directory' && p.access === 'own').map((p) => path.resolve((p as { path: string }).path));
}

/**
 * Refuses (QubesValueError naming `what`) a revisions_to_keep above what the
 * pool's driver keeps (capabilities.maxRevisions).
 */
export function checkRevisionsLimit(pool: Pool, n: number, what: string): void {
  const most = pool.capabilities.maxRevisions;
  if (n > most)
    throw new QubesValueError(
      `${what}: ${n} is more than driver ${pool.declaredBy} keeps (at most ${most} revision${most === 1 ? '' : 's'})`,
    );
}
