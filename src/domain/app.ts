/**
 * The App: pools, domains, labels and global settings of one state file,
 * and the operations that change them. Every change is all-or-nothing and
 * durable before it returns:
 *
 * - state changes are applied and saved under one commit lock, one at a
 *   time; if the save fails the change is undone in memory (and the next
 *   save writes the state without it);
 * - createDomain / cloneDomain make the volumes first (DomainStorage is
 *   itself all-or-nothing), then commit; a failed commit removes the
 *   volumes again; removeDomain commits first, then removes the volumes;
 * - operations on one domain (start, shutdown, kill, remove, property
 *   changes, and the volume operations of the admin methods) hold it
 *   (holds.ts, `holdDomain`): one at a time, a change behind a streamed
 *   import refused at once; different domains proceed in parallel;
 * - a domain another one depends on (template, clone source, default_dispvm,
 *   netvm, a global default) or that an operation reads (`useDomain`: a
 *   clone's source) cannot be removed, and a removal in progress refuses
 *   new uses, so a concurrent create cannot slip in; the exports of its
 *   volumes are ended by its removal (a client may never end them).
 *
 * Power state lives in memory (Qubes asks the hypervisor; here the runner
 * is the hypervisor): after a load every domain is Halted, and a volume left
 * dirty by a crash is picked up by its next start (the storage contract).
 *
 * The work is done by the parts the App owns (README.md has the map):
 * StateStore (persistence: reading, saves, journal, backups), DomainTable
 * (the domains, holds and uses), Pools, DomainLifecycle (create, clone,
 * remove, start, stop), SettingChanges (properties, tags, features) and
 * loadState. The App wires them together and keeps the public API.
 */
import type { OptionValue } from '../storage/options.js';
import type { Pool } from '../storage/pool.js';
import { DEFAULT_PRIVATE_SIZE, DEFAULT_ROOT_SIZE } from '../storage/volume-sets.js';
import type { QubesAppOptions } from './app-options.js';
import { AdminVM, GlobalProperties, type Domain, type DomainHost } from './domain.js';
import { DomainLifecycle, type CloneDomainOptions, type CreateDomainOptions } from './domain-lifecycle.js';
import { DomainTable } from './domain-table.js';
import type { VolumeDefaults } from './domain-volumes.js';
import { AppEvents } from './events.js';
import type { HoldSpec } from './holds.js';
import { DEFAULT_LABELS, Labels } from './labels.js';
import { Pools } from './pools.js';
import type { PropValue } from './properties.js';
import { noopRunner, type DomainRunner } from './runner.js';
import { SettingChanges, type PropertyTarget } from './setting-changes.js';
import { StateFileError, type PendingChange, type PoolRecord, type StateModel } from './state-file.js';
import { loadState } from './state-loader.js';
import { StateLock } from './state-lock.js';
import { StateStore, type FoundState } from './state-store.js';

export type { QubesAppOptions } from './app-options.js';
export type { CloneDomainOptions, CreateDomainOptions } from './domain-lifecycle.js';
export { MAX_QID } from './domain-table.js';
export type { PoolChoice } from './domain-volumes.js';
export type { PropertyTarget } from './setting-changes.js';
export { JOURNAL_FROM_BYTES, stateWriteError } from './state-store.js';

export class QubesApp implements DomainHost, StateModel {
  readonly stateFile: string;
  readonly events = new AppEvents();
  readonly globals: GlobalProperties;
  readonly runner: DomainRunner;
  private _labels = new Labels(DEFAULT_LABELS);
  private readonly store: StateStore;
  private readonly domains: DomainTable;
  private readonly poolSet: Pools;
  private readonly lifecycle: DomainLifecycle;
  private readonly settings: SettingChanges;
  private readonly volumeDefaults: VolumeDefaults;
  /** The sweep of the pools' leftovers started at open; the lock is never released before it ends. */
  private leftovers: Promise<void> = Promise.resolve();
  private _madeNewState = false;

  private constructor(
    private readonly opts: QubesAppOptions,
    private readonly lock: StateLock,
  ) {
    this.stateFile = opts.stateFile;
    this.runner = opts.runner ?? noopRunner;
    this.globals = new GlobalProperties(this);
    const store = new StateStore(
      {
        ...opts,
        configFiles: [...(opts.configFiles ?? []), ...(opts.storageConf ? [opts.storageConf.file] : [])],
        storageConfFile: opts.storageConf?.file,
      },
      this,
    );
    this.store = store;
    this.domains = new DomainTable(this.globals, () => store.checkOpen());
    this.poolSet = new Pools({
      factory: opts.pools,
      saves: store,
      events: this.events,
      domains: this.domains,
      globals: this.globals,
      stateFile: opts.stateFile,
      stateOwnNames: store.ownNames(),
      baseDir: opts.baseDir,
      baseKeeps: opts.baseKeeps ?? [],
      storageConf: opts.storageConf,
    });
    this.volumeDefaults = {
      globals: this.globals,
      sizes: { root: opts.sizes?.root ?? DEFAULT_ROOT_SIZE, private: opts.sizes?.private ?? DEFAULT_PRIVATE_SIZE },
      pool: (n) => this.poolSet.get(n),
    };
    const parts = { host: this, domains: this.domains, pools: this.poolSet, saves: store, events: this.events };
    this.lifecycle = new DomainLifecycle({ ...parts, runner: this.runner, volumeDefaults: this.volumeDefaults });
    this.settings = new SettingChanges(parts);
    // A domain that stops by itself (its guest powered off) stops its storage as a shutdown does.
    this.runner.watch?.((name) =>
      this.lifecycle.exited(name).catch((e: unknown) => this.opts.notice?.(`domain ${name} stopped by itself; stopping its storage failed: ${(e as Error).message}`)),
    );
  }

  /**
   * Takes the state file's lock, sweeps the temporaries a crash left, and
   * loads the state (or, where no state was before or with `init`, starts a
   * new one with dom0 and the eight labels, saved at once). A state that
   * loads is copied into a backup (state-backups.ts). Pools whose driver is
   * not available load as UnavailablePool, keeping their configuration.
   */
  static async open(opts: QubesAppOptions): Promise<QubesApp> {
    const lock = await StateLock.acquire(opts.stateFile);
    let app: QubesApp | undefined;
    try {
      app = new QubesApp(opts, lock);
      await app.store.sweepTemps();
      let found: FoundState;
      let marks = new Map<Domain, PendingChange>();
      try {
        found = await app.store.read();
        if (found.isNew) {
          app._madeNewState = true;
          app.domains.listed.set('dom0', new AdminVM(app));
          await app.poolSet.loadStorageConf();
        } else {
          marks = await app.load();
        }
      } catch (e) {
        // Never start over a state that cannot be read: say so, and how to get it back.
        if (e instanceof StateFileError) throw await app.store.refusal(e);
        throw e;
      }
      await app.store.settle(found);
      // In the background: a pool's operations wait for its sweep (reads need not), close() for all.
      app.leftovers = app.poolSet.sweepLeftovers();
      if (marks.size) await app.lifecycle.finishPending(marks);
      return app;
    } catch (e) {
      await app?.leftovers;
      await lock.release();
      throw e;
    }
  }

  /** Loads the model from the state document read (state-loader.ts); returns the write-ahead marks found. */
  private load(): Promise<Map<Domain, PendingChange>> {
    return loadState(this.store.doc, {
      host: this,
      setLabels: (labels) => (this._labels = labels),
      domains: this.domains,
      pools: this.poolSet,
      volumeDefaults: this.volumeDefaults,
      notice: this.opts.notice,
    });
  }

  /** Whether open started a new state (none was there, or `init`): what a first use sets up is due. */
  get madeNewState(): boolean {
    return this._madeNewState;
  }

  /** Resolves once the sweep of leftovers started at open is done. */
  leftoversSwept(): Promise<void> {
    return this.leftovers;
  }

  /** Folds a journal in, keeps a backup of the state, releases the lock; the App must not be used afterwards. */
  async close(): Promise<void> {
    if (this.store.isClosed) return;
    try {
      await this.store.close();
    } finally {
      await this.leftovers;
      for (const p of this.poolSet.list()) await p.close().catch(() => undefined);
      await this.lock.release();
    }
  }

  get labels(): Labels {
    return this._labels;
  }

  // ---- DomainHost / StateModel -----------------------------------------------------

  findDomain(name: string): Domain | undefined {
    return this.domains.listed.get(name);
  }

  /** Every domain, dom0 included, sorted by name. */
  domainList(): Domain[] {
    return this.domains.list();
  }

  /** A domain by name or `uuid:UUID`; QubesVMNotFoundError if none. */
  domain(spec: string): Domain {
    return this.domains.get(spec);
  }

  hasPool(name: string): boolean {
    return this.poolSet.has(name);
  }

  autoDefaultPool(): string {
    return this.poolSet.autoDefault();
  }

  autoKernelPool(): string {
    return this.poolSet.autoKernel();
  }

  creatingDomains(): Domain[] {
    return [...this.domains.creating.values()];
  }

  /** Whether d is one of the domains the state holds (listed, or being created). */
  isSaved(d: Domain): boolean {
    return this.domains.isSaved(d);
  }

  pendingOf(d: Domain): PendingChange | null {
    return this.domains.pendingOf(d);
  }

  /** Pools the state file holds (storage.conf's stay there). */
  poolRecords(): PoolRecord[] {
    return this.poolSet.records();
  }

  // ---- pools (pools.ts) ------------------------------------------------------------

  /** Where a pool is defined. */
  poolOrigin(name: string): 'state' | 'storage.conf' {
    return this.poolSet.origin(name);
  }

  /** Pool names, in state-file order. */
  poolNames(): string[] {
    return this.poolSet.names();
  }

  pools(): Pool[] {
    return this.poolSet.list();
  }

  /** A pool by name; QubesValueError if none. */
  pool(name: string): Pool {
    return this.poolSet.get(name);
  }

  /** Whether the pool's driver works here (false for pools loaded as unavailable). */
  isPoolAvailable(name: string): boolean {
    return this.poolSet.isAvailable(name);
  }

  /** Adds a pool: checks its places, runs its setup, saves (Pools.add). */
  addPool(driver: string, name: string, options: Record<string, OptionValue>): Promise<Pool> {
    return this.poolSet.add(driver, name, options);
  }

  /** Domains (and volumes) using a pool, and global settings naming it. */
  poolUsers(name: string): string[] {
    return this.poolSet.users(name);
  }

  /** What admin.pool.volume.List names: sorted vids, from the domains or from the pool as its driver declares (Pools.volumeList). */
  poolVolumeList(name: string): Promise<string[]> {
    return this.poolSet.volumeList(name);
  }

  /** Removes a pool from the state (its data is left alone); refused while anything uses it. */
  removePool(name: string): Promise<void> {
    return this.poolSet.remove(name);
  }

  /** admin.pool.Set.*: revisions_to_keep (integer >= -1) or ephemeral_volatile (bool). */
  setPoolOption(name: string, key: string, value: OptionValue): Promise<void> {
    return this.poolSet.setOption(name, key, value);
  }

  // ---- domains (domain-lifecycle.ts) -------------------------------------------------

  /** Creates a domain with its class's volume set, all or nothing. */
  createDomain(o: CreateDomainOptions): Promise<Domain> {
    return this.lifecycle.create(o);
  }

  /** Copies a domain (properties, tags, features, volume data) into a new one, all or nothing. */
  cloneDomain(srcName: string, dstName: string, o: CloneDomainOptions = {}): Promise<Domain> {
    return this.lifecycle.clone(srcName, dstName, o);
  }

  /** Who uses a domain: template of, clone source of, default of, netvm of; what reads it now (useDomain). */
  domainUsers(d: Domain): string[] {
    return this.domains.usersOf(d);
  }

  /** Removes a halted domain that nothing uses (saved without it first, then its volumes go). */
  removeDomain(name: string): Promise<void> {
    return this.lifecycle.remove(name);
  }

  /** Starts a domain: domain-pre-start, its storage, the runner; nothing if it runs. */
  start(name: string): Promise<void> {
    return this.lifecycle.start(name);
  }

  /** Shuts a running domain down, then stops its storage (save_on_stop volumes commit). */
  async shutdown(name: string): Promise<void> {
    await this.lifecycle.stop(name, false);
  }

  /** Stops a running domain at once (no domain-pre-shutdown); storage stops as for shutdown. */
  async kill(name: string): Promise<void> {
    await this.lifecycle.stop(name, true);
  }

  // ---- properties, tags, features (setting-changes.ts) -------------------------------

  /** Sets a property (typed value); checks, saves, emits property-set:NAME. */
  setProperty(target: PropertyTarget, name: string, value: PropValue): Promise<void> {
    return this.settings.setProperty(target, name, value);
  }

  /** Sets a property from its wire text (True/False, digits, names; '' is None for vm properties). */
  setPropertyFromText(target: PropertyTarget, name: string, raw: string): Promise<void> {
    return this.settings.setPropertyFromText(target, name, raw);
  }

  /** Back to the default; emits property-reset:NAME. */
  resetProperty(target: PropertyTarget, name: string): Promise<void> {
    return this.settings.resetProperty(target, name);
  }

  addTag(d: Domain, tag: string): Promise<void> {
    return this.settings.addTag(d, tag);
  }

  removeTag(d: Domain, tag: string): Promise<void> {
    return this.settings.removeTag(d, tag);
  }

  setFeature(d: Domain, feature: string, value: string): Promise<void> {
    return this.settings.setFeature(d, feature, value);
  }

  removeFeature(d: Domain, feature: string): Promise<void> {
    return this.settings.removeFeature(d, feature);
  }

  // ---- holding domains (domain-table.ts, holds.ts) -----------------------------------

  /**
   * Runs `fn` holding the domain `d` (and `also`) against every other change
   * of it (waits behind short changes, refused at once behind a long one).
   * Inside, `d` is still the domain of its name and not being removed (else
   * QubesVMNotFoundError).
   */
  holdDomain<T>(d: Domain, spec: HoldSpec, fn: () => Promise<T>, also: readonly Domain[] = []): Promise<T> {
    return this.domains.hold(d, spec, fn, also);
  }

  /**
   * Records that `what` reads the domain `d` (without changing it) until the
   * returned function is called: it cannot be removed meanwhile. Refused
   * while it is being removed. With `end` (an export: its client may never
   * end it), the removal of `d` calls `end` and goes on instead.
   */
  useDomain(d: Domain, what: string, end?: () => Promise<void>): () => void {
    return this.domains.use(d, what, end);
  }

  /** The changes holding or waiting for domain `name`, the holder first (`import into volume private`). */
  holdersOf(name: string): Array<{ what: string; holding: boolean }> {
    return this.domains.holdersOf(name);
  }

  // ---- saving (state-store.ts) ---------------------------------------------------------

  /**
   * Writes the state now, for changes made to volumes directly (resize,
   * revisions_to_keep...). Given a domain, only it and the domains based on
   * it are looked at (their volumes may follow its sizes).
   */
  async save(d?: Domain): Promise<void> {
    await this.store.commit(() => () => undefined, d ? () => new Set([d, ...this.domains.dependents(d)]) : 'all');
  }
}
