/**
 * The pools of the state: the ones qubes.xml defines and the ones an R3.2
 * storage.conf defines (which stay there), made from their drivers or, where
 * a driver is missing here, kept as UnavailablePool; adding, removing and
 * setting an option of one (each saved through the App's commits); where
 * each may be on disk (places), and who uses each.
 */
import * as path from 'node:path';
import type { DomainStorage } from '../storage/domain-storage.js';
import { poolOptionSpecs, volumeListing } from '../storage/driver.js';
import { QubesPoolInUseError, QubesValueError, StoragePoolException } from '../storage/errors.js';
import { requireDmCrypt } from '../storage/ephemeral.js';
import { KeyedMutex } from '../storage/lock.js';
import { checkOptionChange, parseBool, parseInt10, type OptionSpec, type OptionValue } from '../storage/options.js';
import { checkPlaceContents, checkPlacesAgainst, readMounts, resolvePlaces } from '../storage/places.js';
import { checkPoolName, type Pool } from '../storage/pool.js';
import { printable, type Volume } from '../storage/volume.js';
import { loadStorageConf, removePoolFromStorageConf, type StorageConfContext } from '../registry/storage-conf.js';
import type { Domain, GlobalProperties } from './domain.js';
import type { DomainTable } from './domain-table.js';
import type { AppEvents } from './events.js';
import type { PoolFactory } from './pool-factory.js';
import type { PoolRecord, SaveScope, StateDocument } from './state-file.js';
import type { StateSaves } from './state-store.js';
import { UnavailablePool } from './unavailable.js';

/** A save that looks at no domain (pools, labels, global properties only). */
const NO_DOMAINS: SaveScope = new Set();

interface PoolEntry {
  pool: Pool;
  record: PoolRecord;
  /** Where the pool is defined: the state file, or storage.conf (R3.2), which keeps it. */
  origin: 'state' | 'storage.conf';
}

/** What the pools need of the App. */
export interface PoolsContext {
  readonly factory: PoolFactory;
  readonly saves: StateSaves;
  readonly events: AppEvents;
  /** For the users of a pool: the domains' volumes and the default_pool* settings. */
  readonly domains: Pick<DomainTable, 'list' | 'listed' | 'reserved'>;
  readonly globals: GlobalProperties;
  /** The state file, and the names beside it that are the state's own. */
  readonly stateFile: string;
  readonly stateOwnNames: readonly string[];
  readonly baseDir: string | undefined;
  readonly baseKeeps: readonly string[];
  readonly storageConf: { readonly file: string; readonly context: StorageConfContext } | undefined;
}

export class Pools {
  private readonly entries = new Map<string, PoolEntry>();
  private readonly pending = new Set<string>();
  /** Pool adds, one at a time: a pool's places are checked against every pool there (and being added). */
  private readonly addLock = new KeyedMutex();
  private readonly removing = new Set<string>();

  constructor(private readonly ctx: PoolsContext) {}

  // ---- looking up ----------------------------------------------------------------------

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Pool names, in state-file order. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  list(): Pool[] {
    return [...this.entries.values()].map((e) => e.pool);
  }

  /** A pool by name; QubesValueError if none. */
  get(name: string): Pool {
    const e = this.entries.get(name);
    if (!e) throw new QubesValueError(`no such pool '${printable(name)}'`);
    return e.pool;
  }

  /** A pool for a volume being built: refused while the pool is being removed. */
  forVolume(name: string): Pool {
    if (this.removing.has(name)) throw new QubesPoolInUseError(`pool ${name} is being removed`);
    return this.get(name);
  }

  /** Whether the pool's driver works here (false for pools loaded as unavailable). */
  isAvailable(name: string): boolean {
    return !(this.get(name) instanceof UnavailablePool);
  }

  /** Pools the state file holds (storage.conf's stay there). */
  records(): PoolRecord[] {
    return [...this.entries.values()].filter((e) => e.origin === 'state').map((e) => e.record);
  }

  /** Where a pool is defined. */
  origin(name: string): 'state' | 'storage.conf' {
    const e = this.entries.get(name);
    if (!e) throw new QubesValueError(`no such pool '${printable(name)}'`);
    return e.origin;
  }

  /** The pool a default_pool without value falls back to ('' when none fits). */
  autoDefault(): string {
    const usable = [...this.entries.values()].filter((e) => !(e.pool instanceof UnavailablePool));
    const def = usable.find((e) => e.pool.name === 'default');
    if (def) return def.pool.name;
    const fits = usable.find((e) => e.pool.capabilities.writable && e.pool.capabilities.volumeKinds.includes('origin'));
    return fits?.pool.name ?? '';
  }

  /** The pool kernels come from when default_pool_kernel has no value ('' when none). */
  autoKernel(): string {
    const fits = [...this.entries.values()].find((e) => !(e.pool instanceof UnavailablePool) && !e.pool.capabilities.writable);
    return fits?.pool.name ?? '';
  }

  private driverOptions(driver: string): readonly OptionSpec[] | null {
    try {
      const declared = this.ctx.factory.get?.(driver);
      return declared ? poolOptionSpecs(declared) : null;
    } catch {
      return null;
    }
  }

  /** Domains (and volumes) using a pool, and global settings naming it. */
  users(name: string): string[] {
    const users: string[] = [];
    this.forEachDomainVolume(name, this.ctx.domains.list(), (owner, volume) => users.push(`${owner}:${volume.name}`));
    const globals = this.ctx.globals;
    for (const p of globals.setPropertyNames())
      if (p.startsWith('default_pool') && globals.prop(p) === name) users.push(`global property ${p}`);
    return users;
  }

  /**
   * The vids admin.pool.volume.List names for a pool, sorted. Its driver's
   * declaration says where they come from (DriverCapabilities.listing):
   * 'domains' (file, file-reflink, xen, as in Qubes): the volumes the
   * domains hold in it, the same ones that make them its users, from memory,
   * nothing read from disk; else the pool's own listing (`listVolumes`).
   */
  async volumeList(name: string): Promise<string[]> {
    const pool = this.get(name);
    if (volumeListing(pool.capabilities) === 'pool') return [...(await pool.listVolumes())].sort();
    const vids: string[] = [];
    this.forEachDomainVolume(name, this.ctx.domains.listed.values(), (_owner, volume) => vids.push(volume.vid));
    vids.sort();
    // Once each (two volume-configs may name one vid), without a Set of 30,000 strings: sorted, equal ones are adjacent.
    return vids.filter((v, i) => i === 0 || v !== vids[i - 1]);
  }

  /**
   * Calls `fn` with each volume in pool `name` of `domains` and of the creates
   * in flight, and its owner (the domain's name, marked for a create). A
   * callback, not a generator: 40,000 volumes at 10,000 domains.
   */
  private forEachDomainVolume(name: string, domains: Iterable<Domain>, fn: (owner: string, volume: Volume) => void): void {
    const inPool = (owner: string, storage: DomainStorage | null): void => {
      if (storage) for (const volume of storage.volumes.values()) if (volume.pool.name === name) fn(owner, volume);
    };
    for (const d of domains) inPool(d.name, d.storage);
    for (const [n, r] of this.ctx.domains.reserved) inPool(`${n} (being created)`, r.storage);
  }

  // ---- loading -------------------------------------------------------------------------

  /** The pools of the state document; one whose driver is missing here loads as UnavailablePool. */
  async loadFromState(doc: StateDocument): Promise<void> {
    for (const rec of doc.readPools()) {
      if (this.entries.has(rec.name)) throw doc.error(rec.el.line, `pool ${rec.name} is defined twice`);
      try {
        checkPoolName(rec.name);
      } catch (e) {
        throw doc.error(rec.el.line, (e as Error).message);
      }
      let pool: Pool;
      try {
        pool = await this.ctx.factory.createPool(rec.driver, rec.name, { ...rec.options });
      } catch (e) {
        pool = new UnavailablePool(rec.name, rec.driver, { ...rec.options }, e instanceof Error ? e.message : String(e));
      }
      // A driver that is here but whose storage is not (lvm_thin without its volume group): unavailable, with the reason.
      const made = pool;
      await made.checkUsable().catch(async (e: unknown) => {
        pool = new UnavailablePool(rec.name, rec.driver, { ...rec.options }, e instanceof Error ? e.message : String(e), await made.places().catch(() => undefined));
      });
      this.entries.set(rec.name, { pool, record: { name: rec.name, driver: rec.driver, options: { ...rec.options } }, origin: 'state' });
    }
  }

  /** The pools of storage.conf (R3.2), after the state's. */
  async loadStorageConf(): Promise<void> {
    const conf = this.ctx.storageConf;
    if (!conf) return;
    const loaded = await loadStorageConf(conf.file, conf.context);
    for (const def of loaded.definitions) {
      const pool = loaded.pools.get(def.name)!;
      if (this.entries.has(def.name))
        throw new StoragePoolException(
          `${conf.file}:${def.line}: pool ${def.name} is also defined in ${this.ctx.stateFile}; keep it in one place`,
        );
      const { name: _n, driver, ...opts } = pool.config();
      const options = Object.fromEntries(Object.entries(opts).map(([k, v]) => [k, optionText(v)]));
      // storage.conf pools were never "added": checked and set up here, as an
      // add would (setup is idempotent). One whose places conflict with a pool
      // before it (or the state's), or that cannot be set up, stays listed,
      // unavailable, with the reason.
      let usable: Pool = pool;
      try {
        await this.checkPoolPlaces(pool);
        await pool.setup();
      } catch (e) {
        const reason = `${conf.file}:${def.line}: ${e instanceof Error ? e.message : String(e)}`;
        usable = new UnavailablePool(def.name, String(driver), options, reason, await pool.places().catch(() => undefined));
      }
      this.entries.set(def.name, { pool: usable, record: { name: def.name, driver: String(driver), options }, origin: 'storage.conf' });
    }
  }

  /**
   * At open, under the state lock: removes what crashed processes left in
   * the pools (temporary copies, imports, exports). No other process can be
   * working in them, so none of it is in flight. A pool that cannot be swept
   * now (unreadable, read-only) is swept before its next operation, which
   * then reports the problem.
   */
  async sweepLeftovers(): Promise<void> {
    await Promise.all(this.list().map((p) => p.sweepLeftovers().catch(() => undefined)));
  }

  // ---- changing ------------------------------------------------------------------------

  /**
   * Adds a pool: makes it from its driver and raw options, checks its places
   * (nothing on disk is made or changed until here), runs its setup, saves.
   * A taken name is QubesPoolInUseError; places that conflict with another
   * pool's or the state's are a QubesValueError naming both. Adds run one at
   * a time, so two pools cannot move into one place together. A failed setup
   * or save leaves no directory the setup made.
   */
  async add(driver: string, name: string, options: Record<string, OptionValue>): Promise<Pool> {
    const { saves } = this.ctx;
    saves.checkOpen();
    checkPoolName(name);
    if (this.entries.has(name) || this.pending.has(name)) throw new QubesPoolInUseError(`pool ${name} already exists`);
    this.pending.add(name);
    try {
      return await this.addLock.run('add', async () => {
        const pool = await this.ctx.factory.createPool(driver, name, { ...options });
        if (pool.ephemeral_volatile) await requireDmCrypt(`pool ${name}: cannot add it with ephemeral_volatile=True`);
        await this.checkPoolPlaces(pool);
        saves.checkOpen();
        await pool.setup();
        const record: PoolRecord = {
          name,
          driver,
          options: { ...Object.fromEntries(Object.entries(options).map(([k, v]) => [k, optionText(v)])), ...pool.addedOptions() },
        };
        try {
          await saves.commit(() => {
            this.entries.set(name, { pool, record, origin: 'state' });
            return () => this.entries.delete(name);
          }, NO_DOMAINS);
        } catch (e) {
          await pool.undoSetup().catch(() => undefined);
          await pool.destroy().catch(() => undefined);
          throw e;
        }
        this.ctx.events.emit('', 'pool-add', { pool: name });
        return pool;
      });
    } finally {
      this.pending.delete(name);
    }
  }

  /**
   * Refuses a pool whose places (their extents: a file pool's class folders)
   * are, hold or lie inside another pool's; that holds the state file's
   * directory or the base directory, or is one of them without being
   * confined to its class folders, or reaches what they keep (qubes.xml,
   * its journal, lock and backups...); and an own directory already holding
   * what is not a pool's (storage/places.ts has the rule). Compared as real
   * paths, filesystems and inodes. Reads only.
   */
  private async checkPoolPlaces(pool: Pool): Promise<void> {
    const where = `pool ${pool.name}`;
    const mounts = await readMounts();
    const mine = { pool: pool.name, places: await resolvePlaces(await pool.places(), where, mounts) };
    if (!mine.places.length) return;
    // The state's directories are homes: pools may be in them (or at them, when
    // confined to their class folders), never around them or in what they keep.
    const { stateFile, stateOwnNames: stateKeeps, baseDir, baseKeeps } = this.ctx;
    const homes: [string, string, readonly string[]][] = [
      [path.dirname(path.resolve(stateFile)), `the directory of the state file ${stateFile}`, stateKeeps],
    ];
    if (baseDir !== undefined) homes.push([path.resolve(baseDir), 'the base directory', [...stateKeeps, ...baseKeeps]]);
    for (const [dir, what, keeps] of homes) {
      const places = await resolvePlaces([{ kind: 'directory', path: dir, access: 'home', option: 'directory', keeps }], what, mounts, true);
      checkPlacesAgainst(mine, { pool: null, what, places });
    }
    for (const e of this.entries.values()) {
      if (e.pool === pool) continue;
      const places = await resolvePlaces(await e.pool.places(), `pool ${e.pool.name}`, mounts, true);
      checkPlacesAgainst(mine, { pool: e.pool.name, what: `pool ${e.pool.name}`, places });
    }
    await checkPlaceContents(pool.name, mine.places);
  }

  /** Removes a pool from the state (its data is left alone); refused while anything uses it. */
  async remove(name: string): Promise<void> {
    this.ctx.saves.checkOpen();
    const entry = this.entries.get(name);
    if (!entry) throw new QubesValueError(`no such pool '${printable(name)}'`);
    if (this.removing.has(name)) throw new QubesPoolInUseError(`pool ${name} is already being removed`);
    const users = this.users(name);
    if (users.length) throw new QubesPoolInUseError(`pool ${name} is in use by: ${users.join(', ')}`);
    this.removing.add(name);
    try {
      if (entry.origin === 'storage.conf') await removePoolFromStorageConf(this.ctx.storageConf!.file, name);
      await this.ctx.saves.commit(() => {
        this.entries.delete(name);
        return () => this.entries.set(name, entry);
      }, NO_DOMAINS);
    } finally {
      this.removing.delete(name);
    }
    await entry.pool.destroy().catch(() => undefined);
    this.ctx.events.emit('', 'pool-delete', { pool: name });
  }

  /** admin.pool.Set.*: revisions_to_keep (integer >= -1) or ephemeral_volatile (bool). */
  async setOption(name: string, key: string, value: OptionValue): Promise<void> {
    this.ctx.saves.checkOpen();
    const entry = this.entries.get(name);
    if (!entry) throw new QubesValueError(`no such pool '${printable(name)}'`);
    let v: OptionValue;
    if (key === 'revisions_to_keep') {
      v = typeof value === 'number' ? value : parseInt10(String(value).trim(), `pool ${name}: revisions_to_keep`);
      if (!Number.isSafeInteger(v) || v < -1) throw new QubesValueError(`pool ${name}: revisions_to_keep must be an integer >= -1`);
    } else if (key === 'ephemeral_volatile') {
      v = typeof value === 'boolean' ? value : parseBool(String(value), `pool ${name}: ephemeral_volatile`);
    } else {
      throw new QubesValueError(`Setting option ${printable(key)} is not supported for pool ${name}`);
    }
    if (entry.origin === 'storage.conf')
      throw new QubesValueError(`pool ${name} is defined in ${this.ctx.storageConf!.file}; change it there`);
    // Every volatile volume of the pool would be ephemeral: refused where this host cannot encrypt them.
    if (key === 'ephemeral_volatile' && v === true) await requireDmCrypt(`pool ${name}: cannot set ephemeral_volatile=True`);
    const declared = this.driverOptions(entry.pool.driver);
    if (declared) {
      // The driver's own limits (e.g. the file driver keeps at most one revision).
      const { name: _n, driver: _d, ...current } = entry.pool.config();
      checkOptionChange(declared, current, { [key]: v }, `pool ${name}`);
    }
    await this.ctx.saves.commit(() => {
      const oldValue = entry.pool.config()[key];
      const hadText = Object.prototype.hasOwnProperty.call(entry.record.options, key);
      const oldText = entry.record.options[key];
      entry.pool.setOption(key, v);
      entry.record.options[key] = optionText(v);
      return () => {
        if (oldValue !== undefined) entry.pool.setOption(key, oldValue);
        if (hadText) entry.record.options[key] = oldText!;
        else delete entry.record.options[key];
      };
    }, 'all'); // volumes may take the pool's value
    this.ctx.events.emit('', `pool-set:${key}`, { pool: name, value: optionText(v) });
  }
}

function optionText(v: OptionValue): string {
  return typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
}
