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
 *   clone's source, an export) cannot be removed, and a removal in progress
 *   refuses new uses, so a concurrent create cannot slip in.
 *
 * Power state lives in memory (Qubes asks the hypervisor; here the runner
 * is the hypervisor): after a load every domain is Halted, and a volume left
 * dirty by a crash is picked up by its next start (the storage contract).
 */
import * as path from 'node:path';
import { sweepAtomicTemps, writeFileAtomic } from '../files/files.js';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { DomainStorage, realSource } from '../storage/domain-storage.js';
import { poolOptionSpecs } from '../storage/driver.js';
import {
  QubesException,
  QubesFeatureNotFoundError,
  QubesPoolInUseError,
  QubesPropertyValueError,
  QubesTagNotFoundError,
  QubesValueError,
  QubesVMInUseError,
  QubesVMNotFoundError,
  QubesVMNotHaltedError,
  QubesVMNotStartedError,
  StoragePoolException,
} from '../storage/errors.js';
import { KeyedMutex } from '../storage/lock.js';
import { DomainHolds, type HoldSpec } from './holds.js';
import { checkOptionChange, parseBool, parseInt10, type OptionSpec, type OptionValue } from '../storage/options.js';
import { checkPlaceContents, checkPlacesAgainst, readMounts, resolvePlaces } from '../storage/places.js';
import { checkPoolName, type Pool } from '../storage/pool.js';
import { DEFAULT_PRIVATE_SIZE, DEFAULT_ROOT_SIZE, defaultVolumeConfigs } from '../storage/volume-sets.js';
import { printable, type BlockDevice, type VolumeConfig } from '../storage/volume.js';
import {
  AdminVM,
  checkDomainName,
  Domain,
  GlobalProperties,
  isDomainClass,
  makeDomain,
  type DomainClass,
  type DomainHost,
} from './domain.js';
import { AppEvents } from './events.js';
import { DEFAULT_LABELS, Labels } from './labels.js';
import type { PoolFactory } from './pool-factory.js';
import { propertyText, type PropertyHolder, type PropValue } from './properties.js';
import { noopRunner, type DomainRunner } from './runner.js';
import {
  MAX_STATE_BYTES,
  readStateText,
  StateDocument,
  StateFileError,
  type DomainRecord,
  type PendingChange,
  type PoolRecord,
  type RawProperty,
  type SaveScope,
  type StateModel,
} from './state-file.js';
import { encodeRecord, journalPathFor, readJournal, StateJournal } from './state-journal.js';
import { StateLock } from './state-lock.js';
import { DEFAULT_STATE_BACKUPS, StateBackups } from './state-backups.js';
import { earlierStateTraces } from './state-dir.js';
import { UnavailablePool } from './unavailable.js';
import { loadStorageConf, removePoolFromStorageConf, type StorageConfContext } from '../registry/storage-conf.js';

export interface QubesAppOptions {
  /**
   * The state file (qubes.xml). Made if missing only where no state was
   * before: its directory (which must exist) holds nothing but what a fresh
   * start makes (state-dir.ts), or `init` is set. Otherwise, and when it
   * cannot be read, open() refuses with a StateFileError saying how to
   * restore it.
   */
  readonly stateFile: string;
  /**
   * Make a new state when the state file is missing even though its
   * directory holds traces of an earlier one (qubesd --init). An existing
   * state file is opened as usual, never replaced; a journal with records
   * and no state file is refused all the same.
   */
  readonly init?: boolean;
  /**
   * Configuration files that may lie beside the state file before its first
   * start without counting as traces of an earlier state (the policy
   * file); the storage.conf given below always is one.
   */
  readonly configFiles?: readonly string[];
  /** Backups of the state file to keep in `backup/` beside it (default DEFAULT_STATE_BACKUPS; 0: none). */
  readonly backups?: number;
  /** Gets each line for the user (a backup that could not be taken). */
  readonly notice?: (line: string) => void;
  /** Makes pools from driver names: the driver registry, or driversPoolFactory([...]). */
  readonly pools: PoolFactory;
  /** Starts and stops domains (default: does nothing). */
  readonly runner?: DomainRunner;
  /** Sizes of new root and private volumes (default 10 GiB and 2 GiB). */
  readonly sizes?: { readonly root?: number; readonly private?: number };
  /** Largest state file accepted (default 64 MiB). */
  readonly maxStateBytes?: number;
  /** Writes the state file (default writeFileAtomic); a seam for tests that make saving fail. */
  readonly writeFile?: (file: string, data: string) => Promise<void>;
  /**
   * From which size of the state file saves go to a journal instead of
   * rewriting the file (default JOURNAL_FROM_BYTES, or the environment's
   * QUBES_STORAGE_JOURNAL_FROM; 0: always, as the journal tests do).
   */
  readonly journalFromBytes?: number;
  /**
   * Pools defined in an R3.2 storage.conf, loaded beside the state file's.
   * They stay in storage.conf (removing one rewrites that file); pools added
   * later go to the state file. A name in both is an error at open.
   */
  readonly storageConf?: { readonly file: string; readonly context: StorageConfContext };
  /**
   * The base directory of the runtime (run state, the default pool's home):
   * as for the state file's directory, no pool may hold it, and only a pool
   * confined to its class folders may be at it (storage/places.ts).
   */
  readonly baseDir?: string;
  /**
   * Names in the base directory that are the runtime's (its socket, the
   * run state): no pool may be at, in or around them. The state file's own
   * (it, its journal, lock and backup/) are kept in any case.
   */
  readonly baseKeeps?: readonly string[];
}

/** pool=P for all volumes, or pool:VOLUME=P per volume (not both). */
export interface PoolChoice {
  readonly pool?: string;
  readonly pools?: Readonly<Record<string, string>>;
}

export interface CreateDomainOptions extends PoolChoice {
  readonly klass: DomainClass;
  readonly name: string;
  readonly label: string;
  /**
   * AppVM: its TemplateVM (default: default_template). DispVM: its
   * disposable template (default: default_dispvm). StandaloneVM and
   * TemplateVM: a domain whose volumes are copied into the new one.
   */
  readonly template?: string | null;
  /** More properties to set (qvm-create --property), by name. */
  readonly properties?: Readonly<Record<string, PropValue>>;
}

export interface CloneDomainOptions extends PoolChoice {}

export type PropertyTarget = Domain | GlobalProperties;

interface PoolEntry {
  pool: Pool;
  record: PoolRecord;
  /** Where the pool is defined: the state file, or storage.conf (R3.2), which keeps it. */
  origin: 'state' | 'storage.conf';
}

interface Reservation {
  readonly qid: number;
  storage: DomainStorage | null;
}

/**
 * Highest qid handed out. Qubes stops at 254 (its network addressing); storage
 * has no such limit, and hosts of thousands of domains are a goal here.
 */
export const MAX_QID = 65535;

/** A save that looks at no domain (pools, labels, global properties only). */
const NO_DOMAINS: SaveScope = new Set();

/** State files smaller than this are rewritten whole at each save; bigger ones get a journal (state-journal.ts). */
export const JOURNAL_FROM_BYTES = 1024 * 1024;

interface QueuedCommit {
  readonly apply: () => () => void;
  /** Which domains the change touched, asked after apply(). */
  readonly scope: () => SaveScope;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

const FP = {
  createAfterMark: declareFailpoint('app.create.after-mark'),
  createAfterVolumes: declareFailpoint('app.create.after-volumes'),
  removeAfterMark: declareFailpoint('app.remove.after-mark'),
  removeAfterVolumes: declareFailpoint('app.remove.after-volumes'),
  compactAfterWrite: declareFailpoint('app.compact.after-write'),
};
const TAG_RE = /^[A-Za-z0-9_-]{1,64}$/;
const FEATURE_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const VOLUME_NAMES = ['root', 'private', 'volatile', 'kernel'] as const;

export class QubesApp implements DomainHost, StateModel {
  readonly stateFile: string;
  readonly events = new AppEvents();
  readonly globals: GlobalProperties;
  readonly runner: DomainRunner;
  private _labels = new Labels(DEFAULT_LABELS);
  private readonly factory: PoolFactory;
  private readonly sizes: { root: number; private: number };
  private readonly writeFile: (file: string, data: string) => Promise<void>;
  private readonly storageConf: QubesAppOptions['storageConf'];
  private readonly backups: StateBackups;
  /** The state file may differ from the newest backup (written since, or never backed up): close() takes one. */
  private backupStale = true;
  private readonly notice: ((line: string) => void) | undefined;
  private readonly poolEntries = new Map<string, PoolEntry>();
  private readonly pendingPools = new Set<string>();
  /** Pool adds, one at a time: a pool's places are checked against every pool there (and being added). */
  private readonly poolLock = new KeyedMutex();
  private readonly baseDir: string | undefined;
  private readonly baseKeeps: readonly string[];
  private readonly removingPools = new Set<string>();
  private readonly domains = new Map<string, Domain>();
  private readonly reserved = new Map<string, Reservation>();
  private readonly removingDomains = new Set<Domain>();
  /** Write-ahead marks found at load, finished by open(). */
  private readonly loadedMarks = new Map<Domain, PendingChange>();
  /** Domains whose volumes are being made (saved with a 'create' mark, not listed yet). */
  private readonly creating = new Map<string, Domain>();
  /** Who holds or uses each domain, keyed by name (holds.ts). */
  private readonly holds = new DomainHolds();
  /** Saves, one at a time. */
  private readonly commitLock = new KeyedMutex();
  /** Changes waiting for the next save (see commit). */
  private queuedCommits: QueuedCommit[] = [];
  private doc!: StateDocument;
  private closed = false;
  private readonly journalFile: string;
  private readonly journalFrom: number;
  /** The journal, once a save used it (or one was found at open). */
  private journal: StateJournal | null = null;
  /** A journal file is on disk but not open (found at open, or dropped after an error): the next save must compact. */
  private journalOnDisk = false;
  /** Bytes of the state file as last written whole. */
  private baseBytes = 0;
  /** The next save looks at every domain and rewrites the whole file (after a failed save, or a replayed journal). */
  private needFull = false;
  /**
   * Domains whose storage ran outside a commit (start, stop: a volume may
   * have repaired a size a crash left stale): the next save looks at them too.
   */
  private readonly unsaved = new Set<Domain>();
  /** Tests set QUBES_STORAGE_CHECK_SAVES: every save limited to some domains is checked against a full one. */
  private readonly checkSaves = !!process.env['QUBES_STORAGE_CHECK_SAVES'];

  private constructor(
    opts: QubesAppOptions,
    private readonly lock: StateLock,
  ) {
    this.stateFile = opts.stateFile;
    this.factory = opts.pools;
    this.runner = opts.runner ?? noopRunner;
    this.sizes = { root: opts.sizes?.root ?? DEFAULT_ROOT_SIZE, private: opts.sizes?.private ?? DEFAULT_PRIVATE_SIZE };
    // 0600 from creation on: the state names every domain and pool.
    this.writeFile = opts.writeFile ?? ((f, d) => writeFileAtomic(f, d, 0o600));
    this.notice = opts.notice;
    this.backups = new StateBackups(opts.stateFile, opts.backups ?? DEFAULT_STATE_BACKUPS);
    this.storageConf = opts.storageConf;
    this.baseDir = opts.baseDir;
    this.baseKeeps = opts.baseKeeps ?? [];
    this.globals = new GlobalProperties(this);
    this.journalFile = journalPathFor(opts.stateFile);
    const fromEnv = process.env['QUBES_STORAGE_JOURNAL_FROM'];
    this.journalFrom = opts.journalFromBytes ?? (fromEnv !== undefined && /^[0-9]+$/.test(fromEnv) ? Number(fromEnv) : JOURNAL_FROM_BYTES);
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
      const maxBytes = opts.maxStateBytes ?? MAX_STATE_BYTES;
      app = new QubesApp(opts, lock);
      await app.sweepTemps();
      let text: string | null;
      let journal;
      try {
        text = await readStateText(opts.stateFile, maxBytes);
        journal = await readJournal(app.journalFile, maxBytes);
        if (text === null) {
          if (journal?.records.length)
            throw new StateFileError(`${app.journalFile}: a state journal without its state file ${opts.stateFile}`);
          const traces = opts.init ? [] : await earlierStateTraces(opts.stateFile, [...(opts.configFiles ?? []), ...(opts.storageConf ? [opts.storageConf.file] : [])]);
          if (traces.length)
            throw new StateFileError(
              `${opts.stateFile} is missing, but ${path.dirname(opts.stateFile)} holds ${traces.join(', ')}: a state was there before, ` +
                `and a new one would forget every domain it had`,
            );
          app.doc = StateDocument.empty(opts.stateFile);
          app.domains.set('dom0', new AdminVM(app));
          await app.loadStorageConf();
        } else {
          app.baseBytes = Buffer.byteLength(text);
          app.doc = StateDocument.parse(text, opts.stateFile);
          // Changes saved after the last rewrite, the last record possibly torn by a crash.
          if (journal) app.doc.applyJournal(journal.records, app.journalFile);
          await app.load();
        }
      } catch (e) {
        // Never start over a state that cannot be read: say so, and how to get it back.
        if (e instanceof StateFileError)
          throw new StateFileError(`${e.message}. Not starting. ${await app.backups.restoreAdvice(maxBytes, app.journalFile)}`, { cause: e });
        throw e;
      }
      if (journal || text === null) {
        // Fold the journal in now (or write the new state): it starts empty.
        app.journalOnDisk = journal !== null;
        app.needFull = true;
        await app.save();
      }
      if (text !== null) {
        // The state file now holds everything loaded (no journal): the last good state.
        const note = await app.backups.take();
        if (note) opts.notice?.(note);
        else app.backupStale = false;
      }
      // In the background: a pool's operations wait for its sweep (reads need not), close() for all.
      app.leftovers = app.sweepLeftovers();
      if (app.loadedMarks.size) await app.finishPending(app.loadedMarks);
      return app;
    } catch (e) {
      await app?.leftovers;
      await lock.release();
      throw e;
    }
  }

  /**
   * Removes what a crash left of earlier saves: temporaries of the state
   * file, of backups and of storage.conf, each written only under the state
   * lock, which this App holds.
   */
  private async sweepTemps(): Promise<void> {
    await sweepAtomicTemps(this.stateFile);
    await this.backups.sweepTemps();
    if (this.storageConf) await sweepAtomicTemps(this.storageConf.file);
  }


  /**
   * At open, under the state lock: removes what crashed processes left in
   * the pools (temporary copies, imports, exports). No other process can be
   * working in them, so none of it is in flight. A pool that cannot be swept
   * now (unreadable, read-only) is swept before its next operation, which
   * then reports the problem.
   */
  private async sweepLeftovers(): Promise<void> {
    await Promise.all(this.pools().map((p) => p.sweepLeftovers().catch(() => undefined)));
  }
  /** The sweep started at open; the lock is never released before it ends. */
  private leftovers: Promise<void> = Promise.resolve();

  /** Resolves once the sweep of leftovers started at open is done. */
  leftoversSwept(): Promise<void> {
    return this.leftovers;
  }

  /** Folds a journal in, keeps a backup of the state, releases the lock; the App must not be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.commitLock.run('state', async () => {
        if (this.closed) return;
        this.closed = true;
        // A stopped App leaves a complete state file and no journal, as Qubes leaves qubes.xml.
        if (this.journal || this.journalOnDisk) {
          if (this.journalOnDisk || this.needFull || this.journal!.recordBytes > 0) {
            this.doc.sync(this, 'all');
            await this.withRoom(() => this.writeFull());
          }
          await this.journal?.close(true);
          this.journal = null;
        }
        // The state as this App leaves it, complete: a backup (if it is not the newest already).
        if (this.backupStale) {
          const note = await this.backups.take();
          if (note) this.notice?.(note);
        }
      });
    } finally {
      await this.journal?.close(false).catch(() => undefined);
      await this.leftovers;
      await this.lock.release();
    }
  }

  get labels(): Labels {
    return this._labels;
  }

  // ---- loading -------------------------------------------------------------------

  private async load(): Promise<void> {
    const doc = this.doc;
    const labels = doc.readLabels();
    if (labels) this._labels = new Labels(labels);

    for (const rec of doc.readPools()) {
      if (this.poolEntries.has(rec.name)) throw doc.error(rec.el.line, `pool ${rec.name} is defined twice`);
      try {
        checkPoolName(rec.name);
      } catch (e) {
        throw doc.error(rec.el.line, (e as Error).message);
      }
      let pool: Pool;
      try {
        pool = await this.factory.createPool(rec.driver, rec.name, { ...rec.options });
      } catch (e) {
        pool = new UnavailablePool(rec.name, rec.driver, { ...rec.options }, e instanceof Error ? e.message : String(e));
      }
      this.poolEntries.set(rec.name, { pool, record: { name: rec.name, driver: rec.driver, options: { ...rec.options } }, origin: 'state' });
    }
    // Before the domains: their volumes may live in storage.conf's pools.
    await this.loadStorageConf();

    const records = doc.readDomains();
    const recordOf = new Map<Domain, DomainRecord>();
    /** qid -> domain loaded so far (a Map: searching the domains for each one is quadratic). */
    const byQid = new Map<number, Domain>();
    const lines = new Map<object, Map<string, number>>();
    for (const rec of records) {
      if (!isDomainClass(rec.klass)) throw doc.error(rec.line, `unknown domain class '${printable(rec.klass)}'`);
      let d: Domain;
      if (rec.klass === 'AdminVM') {
        if (this.domains.has('dom0')) throw doc.error(rec.line, 'a second AdminVM');
        d = new AdminVM(this);
      } else {
        const nameProp = rec.properties.find((p) => p.name === 'name');
        if (!nameProp) throw doc.error(rec.line, `${rec.klass} without a name property`);
        const qidProp = rec.properties.find((p) => p.name === 'qid');
        let qid = rec.idQid;
        if (qidProp) {
          try {
            qid = parseInt10(qidProp.raw.trim(), 'qid');
          } catch {
            throw doc.error(qidProp.line, `qid '${printable(qidProp.raw)}' is not a number`);
          }
        }
        if (qid === null || qid < 1) throw doc.error(rec.line, `domain ${nameProp.raw} has no valid qid`);
        try {
          checkDomainName(nameProp.raw);
        } catch (e) {
          throw doc.error(nameProp.line, (e as Error).message);
        }
        if (this.domains.has(nameProp.raw)) throw doc.error(rec.line, `domain ${nameProp.raw} is defined twice`);
        const sameQid = byQid.get(qid);
        if (sameQid) throw doc.error(rec.line, `domain ${nameProp.raw} has qid ${qid}, as ${sameQid.name} has`);
        d = makeDomain(rec.klass, this, { name: nameProp.raw, qid });
      }
      byQid.set(d.qid, d);
      lines.set(d, this.loadProperties(d, rec.properties));
      for (const f of rec.features) d.features.set(f.name, f.value);
      for (const t of rec.tags) d.tags.add(t);
      this.domains.set(d.name, d);
      recordOf.set(d, rec);
      if (rec.pending) this.loadedMarks.set(d, rec.pending);
      doc.bind(d, rec.el);
    }
    if (!this.domains.has('dom0')) this.domains.set('dom0', new AdminVM(this));
    lines.set(this.globals, this.loadProperties(this.globals, doc.readGlobalProperties()));

    // Cross-checks need every domain loaded.
    for (const [holder, byName] of lines) {
      for (const [name, line] of byName) {
        try {
          (holder as PropertyHolder).checkProperty(name, (holder as PropertyHolder).prop(name));
        } catch (e) {
          throw doc.error(line, (e as Error).message);
        }
      }
    }

    // Storage, templates before the domains based on them.
    const depth = new Map([...this.domains.values()].map((d) => [d, d.templateChain().length]));
    const ordered = [...this.domains.values()].sort((a, b) => depth.get(a)! - depth.get(b)!);
    for (const d of ordered) {
      if (d.klass === 'AdminVM') continue;
      const rec = recordOf.get(d);
      const configs = rec && rec.volumes.length ? this.volumeConfigsFromRecord(d, rec) : this.newVolumeConfigs(d, {});
      try {
        d.storage = DomainStorage.init({ domain: d, volumes: configs, template: d.template?.storage ?? null }, (n) => this.poolOrThrow(n));
      } catch (e) {
        throw doc.error(rec?.line ?? 0, `domain ${d.name}: ${(e as Error).message}`);
      }
    }
  }

  private loadProperties(holder: PropertyHolder, props: RawProperty[]): Map<string, number> {
    const lines = new Map<string, number>();
    for (const p of props) {
      if (!holder.hasProperty(p.name)) continue; // unknown: stays in the file untouched
      const def = holder.propertyDef(p.name);
      if (def.computed) continue;
      try {
        const value = def.type === 'label' ? this._labels.get(p.raw).name : holder.parseProperty(p.name, p.raw);
        holder.storeProperty(p.name, value);
      } catch (e) {
        throw this.doc.error(p.line, `${holder.holderName}: ${(e as Error).message}`);
      }
      lines.set(p.name, p.line);
    }
    return lines;
  }

  private volumeConfigsFromRecord(d: Domain, rec: DomainRecord): VolumeConfig[] {
    return rec.volumes.map(({ attrs, line }) => {
      const fail = (why: string): never => {
        throw this.doc.error(line, `domain ${d.name}: volume ${attrs['name'] ?? '?'}: ${why}`);
      };
      const name = attrs['name'] ?? fail('no name');
      const pool = attrs['pool'] ?? fail('no pool');
      if (!this.poolEntries.has(pool)) fail(`no pool '${printable(pool)}'`);
      const num = (k: string): number | undefined => {
        const v = attrs[k];
        if (v === undefined) return undefined;
        try {
          return parseInt10(v.trim(), k);
        } catch {
          return fail(`${k}='${printable(v)}' is not an integer`);
        }
      };
      const bool = (k: string): boolean | undefined => {
        const v = attrs[k];
        if (v === undefined) return undefined;
        try {
          return parseBool(v, k);
        } catch {
          return fail(`${k}='${printable(v)}' is not True or False`);
        }
      };
      const c: VolumeConfig = {
        name,
        pool,
        size: num('size') ?? 0,
        rw: bool('rw') ?? false,
        snap_on_start: bool('snap_on_start') ?? false,
        save_on_stop: bool('save_on_stop') ?? false,
      };
      if (attrs['vid'] !== undefined) c.vid = attrs['vid'];
      const rtk = num('revisions_to_keep');
      if (rtk !== undefined) c.revisions_to_keep = rtk;
      const eph = bool('ephemeral');
      if (eph !== undefined) c.ephemeral = eph;
      return c;
    });
  }

  // ---- DomainHost / StateModel -----------------------------------------------------

  findDomain(name: string): Domain | undefined {
    return this.domains.get(name);
  }

  /** Every domain, dom0 included, sorted by name. */
  domainList(): Domain[] {
    return [...this.domains.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** A domain by name or `uuid:UUID`; QubesVMNotFoundError if none. */
  domain(spec: string): Domain {
    const d = spec.startsWith('uuid:')
      ? [...this.domains.values()].find((x) => x.uuid === spec.slice(5))
      : this.domains.get(spec);
    if (!d) throw new QubesVMNotFoundError(`no such domain: '${printable(spec)}'`);
    return d;
  }

  hasPool(name: string): boolean {
    return this.poolEntries.has(name);
  }

  autoDefaultPool(): string {
    const usable = [...this.poolEntries.values()].filter((e) => !(e.pool instanceof UnavailablePool));
    const def = usable.find((e) => e.pool.name === 'default');
    if (def) return def.pool.name;
    const fits = usable.find((e) => e.pool.capabilities.writable && e.pool.capabilities.volumeKinds.includes('origin'));
    return fits?.pool.name ?? '';
  }

  autoKernelPool(): string {
    const fits = [...this.poolEntries.values()].find((e) => !(e.pool instanceof UnavailablePool) && !e.pool.capabilities.writable);
    return fits?.pool.name ?? '';
  }

  private driverOptions(driver: string): readonly OptionSpec[] | null {
    try {
      const declared = this.factory.get?.(driver);
      return declared ? poolOptionSpecs(declared) : null;
    } catch {
      return null;
    }
  }

  creatingDomains(): Domain[] {
    return [...this.creating.values()];
  }

  /** Whether d is one of the domains the state holds (listed, or being created). */
  isSaved(d: Domain): boolean {
    return this.domains.get(d.name) === d || this.creating.get(d.name) === d;
  }

  pendingOf(d: Domain): PendingChange | null {
    if (this.creating.get(d.name) === d) return 'create';
    if (this.removingDomains.has(d)) return 'remove';
    return null;
  }

  /** Pools the state file holds (storage.conf's stay there). */
  poolRecords(): PoolRecord[] {
    return [...this.poolEntries.values()].filter((e) => e.origin === 'state').map((e) => e.record);
  }

  /** Where a pool is defined. */
  poolOrigin(name: string): 'state' | 'storage.conf' {
    const e = this.poolEntries.get(name);
    if (!e) throw new QubesValueError(`no such pool '${printable(name)}'`);
    return e.origin;
  }

  private async loadStorageConf(): Promise<void> {
    const conf = this.storageConf;
    if (!conf) return;
    const loaded = await loadStorageConf(conf.file, conf.context);
    for (const def of loaded.definitions) {
      const pool = loaded.pools.get(def.name)!;
      if (this.poolEntries.has(def.name))
        throw new StoragePoolException(
          `${conf.file}:${def.line}: pool ${def.name} is also defined in ${this.stateFile}; keep it in one place`,
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
      this.poolEntries.set(def.name, { pool: usable, record: { name: def.name, driver: String(driver), options }, origin: 'storage.conf' });
    }
  }

  // ---- pools -----------------------------------------------------------------------

  /** Pool names, in state-file order. */
  poolNames(): string[] {
    return [...this.poolEntries.keys()];
  }

  pools(): Pool[] {
    return [...this.poolEntries.values()].map((e) => e.pool);
  }

  /** A pool by name; QubesValueError if none. */
  pool(name: string): Pool {
    const e = this.poolEntries.get(name);
    if (!e) throw new QubesValueError(`no such pool '${printable(name)}'`);
    return e.pool;
  }

  /** Whether the pool's driver works here (false for pools loaded as unavailable). */
  isPoolAvailable(name: string): boolean {
    return !(this.pool(name) instanceof UnavailablePool);
  }

  private poolOrThrow(name: string): Pool {
    if (this.removingPools.has(name)) throw new QubesPoolInUseError(`pool ${name} is being removed`);
    return this.pool(name);
  }

  /**
   * Adds a pool: makes it from its driver and raw options, checks its places
   * (nothing on disk is made or changed until here), runs its setup, saves.
   * A taken name is QubesPoolInUseError; places that conflict with another
   * pool's or the state's are a QubesValueError naming both. Adds run one at
   * a time, so two pools cannot move into one place together. A failed setup
   * or save leaves no directory the setup made.
   */
  async addPool(driver: string, name: string, options: Record<string, OptionValue>): Promise<Pool> {
    this.checkOpen();
    checkPoolName(name);
    if (this.poolEntries.has(name) || this.pendingPools.has(name))
      throw new QubesPoolInUseError(`pool ${name} already exists`);
    this.pendingPools.add(name);
    try {
      return await this.poolLock.run('add', async () => {
        const pool = await this.factory.createPool(driver, name, { ...options });
        await this.checkPoolPlaces(pool);
        this.checkOpen();
        await pool.setup();
        const record: PoolRecord = {
          name,
          driver,
          options: Object.fromEntries(Object.entries(options).map(([k, v]) => [k, optionText(v)])),
        };
        try {
          await this.commit(() => {
            this.poolEntries.set(name, { pool, record, origin: 'state' });
            return () => this.poolEntries.delete(name);
          }, NO_DOMAINS);
        } catch (e) {
          await pool.undoSetup().catch(() => undefined);
          await pool.destroy().catch(() => undefined);
          throw e;
        }
        this.events.emit('', 'pool-add', { pool: name });
        return pool;
      });
    } finally {
      this.pendingPools.delete(name);
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
    const stateName = path.basename(this.stateFile);
    const stateKeeps = [stateName, path.basename(this.journalFile), `${stateName}.lock`, 'backup'];
    const homes: [string, string, readonly string[]][] = [
      [path.dirname(path.resolve(this.stateFile)), `the directory of the state file ${this.stateFile}`, stateKeeps],
    ];
    if (this.baseDir !== undefined) homes.push([path.resolve(this.baseDir), 'the base directory', [...stateKeeps, ...this.baseKeeps]]);
    for (const [dir, what, keeps] of homes) {
      const places = await resolvePlaces([{ kind: 'directory', path: dir, access: 'home', option: 'directory', keeps }], what, mounts, true);
      checkPlacesAgainst(mine, { pool: null, what, places });
    }
    for (const e of this.poolEntries.values()) {
      if (e.pool === pool) continue;
      const places = await resolvePlaces(await e.pool.places(), `pool ${e.pool.name}`, mounts, true);
      checkPlacesAgainst(mine, { pool: e.pool.name, what: `pool ${e.pool.name}`, places });
    }
    await checkPlaceContents(pool.name, mine.places);
  }

  /** Domains (and volumes) using a pool, and global settings naming it. */
  poolUsers(name: string): string[] {
    const users: string[] = [];
    const scan = (owner: string, storage: DomainStorage | null): void => {
      for (const v of storage?.volumes.values() ?? []) if (v.pool.name === name) users.push(`${owner}:${v.name}`);
    };
    for (const d of this.domainList()) scan(d.name, d.storage);
    for (const [n, r] of this.reserved) scan(`${n} (being created)`, r.storage);
    for (const p of this.globals.setPropertyNames())
      if (p.startsWith('default_pool') && this.globals.prop(p) === name) users.push(`global property ${p}`);
    return users;
  }

  /** Removes a pool from the state (its data is left alone); refused while anything uses it. */
  async removePool(name: string): Promise<void> {
    this.checkOpen();
    const entry = this.poolEntries.get(name);
    if (!entry) throw new QubesValueError(`no such pool '${printable(name)}'`);
    if (this.removingPools.has(name)) throw new QubesPoolInUseError(`pool ${name} is already being removed`);
    const users = this.poolUsers(name);
    if (users.length) throw new QubesPoolInUseError(`pool ${name} is in use by: ${users.join(', ')}`);
    this.removingPools.add(name);
    try {
      if (entry.origin === 'storage.conf') await removePoolFromStorageConf(this.storageConf!.file, name);
      await this.commit(() => {
        this.poolEntries.delete(name);
        return () => this.poolEntries.set(name, entry);
      }, NO_DOMAINS);
    } finally {
      this.removingPools.delete(name);
    }
    await entry.pool.destroy().catch(() => undefined);
    this.events.emit('', 'pool-delete', { pool: name });
  }

  /** admin.pool.Set.*: revisions_to_keep (integer >= -1) or ephemeral_volatile (bool). */
  async setPoolOption(name: string, key: string, value: OptionValue): Promise<void> {
    this.checkOpen();
    const entry = this.poolEntries.get(name);
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
      throw new QubesValueError(`pool ${name} is defined in ${this.storageConf!.file}; change it there`);
    const declared = this.driverOptions(entry.pool.driver);
    if (declared) {
      // The driver's own limits (e.g. the file driver keeps at most one revision).
      const { name: _n, driver: _d, ...current } = entry.pool.config();
      checkOptionChange(declared, current, { [key]: v }, `pool ${name}`);
    }
    await this.commit(() => {
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
    this.events.emit('', `pool-set:${key}`, { pool: name, value: optionText(v) });
  }

  // ---- creating, cloning, removing domains ---------------------------------------------

  /**
   * Creates a domain with its class's volume set. Nothing is left behind on
   * failure: volumes made are removed, the state is saved only after every
   * volume exists, and a failed save removes the volumes again.
   */
  async createDomain(o: CreateDomainOptions): Promise<Domain> {
    this.checkOpen();
    if (!isDomainClass(o.klass) || o.klass === 'AdminVM')
      throw new QubesValueError(`cannot create a domain of class '${printable(String(o.klass))}'`);
    this.checkNewName(o.name);
    const label = this._labels.get(o.label).name;
    checkPoolChoice(o);
    const rule = Domain.templateRule(o.klass);
    let template: Domain | null = null;
    let copyFrom: Domain | null = null;
    if (rule !== 'none') {
      const tName = o.template ?? (this.globals.prop(rule === 'TemplateVM' ? 'default_template' : 'default_dispvm') as string | null);
      if (!tName) throw new QubesValueError(`a ${o.klass} needs a template and no default is set`);
      template = this.usableDomain(tName);
    } else if (o.template) {
      copyFrom = this.usableDomain(o.template);
      if (copyFrom.klass === 'AdminVM') throw new QubesValueError('cannot copy the volumes of dom0');
    }
    const qid = this.nextQid();
    const d = makeDomain(o.klass, this, { name: o.name, qid });
    d.storeProperty('label', label);
    if (template) {
      d.checkProperty('template', template.name);
      d.storeProperty('template', template.name);
    }
    for (const [k, v] of Object.entries(o.properties ?? {})) {
      const def = d.propertyDef(k);
      if (def.writeOnce || def.computed || k === 'template') throw new QubesPropertyValueError(`property ${k} cannot be given here`);
      d.checkProperty(k, v);
      d.storeProperty(k, v);
    }
    let configs = this.newVolumeConfigs(d, o);
    if (copyFrom) configs = this.sizedLike(configs, copyFrom);
    const storage = DomainStorage.init({ domain: d, volumes: configs, template: template?.storage ?? null }, (n) => this.poolOrThrow(n));
    // Everything above is synchronous: the name, qid and the domains used are reserved atomically.
    const uses = [template?.name, copyFrom?.name].filter((x): x is string => !!x);
    const release = this.useDomains(uses, `${o.name} (being created from it)`);
    this.reserved.set(o.name, { qid, storage });
    try {
      d.storage = storage;
      await this.makeVolumes(d, () => (copyFrom ? storage.createAsClone(copyFrom.storage) : storage.create()));
    } finally {
      this.reserved.delete(o.name);
      release();
    }
    this.announceNewDomain(d);
    return d;
  }

  /**
   * Copies a domain: its properties (but name, qid, uuid), tags, features and
   * the data of its volumes, into a new domain of the same class, optionally
   * in other pools. All-or-nothing like createDomain.
   */
  async cloneDomain(srcName: string, dstName: string, o: CloneDomainOptions = {}): Promise<Domain> {
    this.checkOpen();
    const src = this.usableDomain(srcName);
    if (src.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be cloned');
    this.checkNewName(dstName);
    checkPoolChoice(o);
    const qid = this.nextQid();
    const d = makeDomain(src.klass, this, { name: dstName, qid });
    for (const p of src.setPropertyNames()) {
      const def = src.propertyDef(p);
      if (def.writeOnce || def.computed) continue;
      d.storeProperty(p, src.prop(p));
    }
    for (const t of src.tags) d.tags.add(t);
    for (const [k, v] of src.features) d.features.set(k, v);
    const template = d.template;
    const configs: VolumeConfig[] = [];
    for (const v of src.storage.volumes.values()) {
      const c = v.config();
      delete c.vid;
      delete c.source;
      const explicit = o.pools?.[v.name];
      if (explicit !== undefined) c.pool = explicit;
      else if (v.snap_on_start) c.pool = v.source ? realSource(v).pool.name : c.pool;
      else if (o.pool !== undefined && v.name !== 'kernel') c.pool = o.pool;
      if (v.name === 'kernel') c.vid = v.vid;
      configs.push(c);
    }
    this.checkPoolChoiceNames(o, configs);
    const storage = DomainStorage.init({ domain: d, volumes: configs, template: template?.storage ?? null }, (n) => this.poolOrThrow(n));
    const release = this.useDomains([src.name, ...(template ? [template.name] : [])], `${dstName} (being created from it)`);
    this.reserved.set(dstName, { qid, storage });
    try {
      d.storage = storage;
      await this.makeVolumes(d, () => storage.createAsClone(src.storage));
    } finally {
      this.reserved.delete(dstName);
      release();
    }
    this.announceNewDomain(d);
    return d;
  }

  /**
   * Makes a new domain's volumes between two saves: first the domain with a
   * 'create' mark (so a crash midway is rolled back at the next start, see
   * finishPending), then the domain itself. Any failure removes the volumes
   * and the mark.
   */
  private async makeVolumes(d: Domain, make: () => Promise<void>): Promise<void> {
    const only = new Set([d]);
    await this.commit(() => {
      this.creating.set(d.name, d);
      return () => this.creating.delete(d.name);
    }, only);
    failpoint(FP.createAfterMark);
    let made = false;
    try {
      await make(); // on failure it removes what it made, and nothing else
      made = true;
      failpoint(FP.createAfterVolumes);
      await this.commit(() => {
        this.creating.delete(d.name);
        this.domains.set(d.name, d);
        return () => {
          this.domains.delete(d.name);
          this.creating.set(d.name, d);
        };
      }, only);
    } catch (e) {
      if (made) await d.storage.remove().catch(() => undefined);
      await this.commit(() => {
        this.creating.delete(d.name);
        return () => this.creating.set(d.name, d);
      }, only).catch(() => undefined); // a mark left behind is rolled back at the next start
      this.creating.delete(d.name);
      throw e;
    }
  }

  /**
   * Finishes what a crash interrupted, from the write-ahead marks: a domain
   * marked 'create' or 'remove' has its volumes removed and leaves the state.
   * A domain whose volumes cannot be removed keeps its mark (tried again at
   * the next start) and stays out of use.
   */
  private async finishPending(marks: Map<Domain, PendingChange>): Promise<void> {
    for (const [d, change] of marks) {
      if (change === 'create') {
        this.domains.delete(d.name);
        this.creating.set(d.name, d);
      } else {
        this.removingDomains.add(d);
      }
    }
    for (const [d, change] of marks) {
      try {
        await d.storage.remove();
      } catch (e) {
        this.events.emit('dom0', 'domain-pending-unfinished', { vm: d.name, change, reason: (e as Error).message });
        continue;
      }
      await this.commit(() => {
        this.creating.delete(d.name);
        this.removingDomains.delete(d);
        this.domains.delete(d.name);
        return () => undefined;
      }, new Set([d]));
    }
  }

  private announceNewDomain(d: Domain): void {
    for (const v of d.storage.volumes.values())
      this.events.emit(d.name, 'domain-volume-created', { volume: v.name, pool: v.pool.name, vid: v.vid });
    this.events.emit('dom0', 'domain-add', { vm: d.name });
  }

  /** Who uses a domain: template of, clone source of, default of, netvm of; what reads it now (useDomain). */
  domainUsers(d: Domain): string[] {
    const users: string[] = [];
    const name = d.name;
    for (const other of this.domains.values()) {
      if (other === d) continue;
      for (const [p, v] of other.setValues()) {
        if (v === name && other.propertyDef(p).type === 'vm' && other.prop(p) === name) users.push(`${other.name} (${p})`);
      }
    }
    for (const p of this.globals.setPropertyNames()) {
      if (this.globals.propertyDef(p).type === 'vm' && this.globals.prop(p) === d.name) users.push(`global property ${p}`);
    }
    users.push(...this.holds.usesOf(d.name));
    return users;
  }

  /**
   * Removes a halted domain that nothing uses: the state is saved without it
   * first, then its volumes are removed (a failure there leaves the domain
   * removed and is reported as a `domain-remove-incomplete` event).
   */
  async removeDomain(name: string): Promise<void> {
    this.checkOpen();
    const d = this.domain(name);
    if (d.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be removed');
    await this.holdDomain(d, { what: 'removal', excludesUses: true }, async () => {
      if (d.isRunning) throw new QubesVMNotHaltedError(`domain ${name} is running; shut it down first`);
      const users = this.domainUsers(d);
      if (users.length) throw new QubesVMInUseError(`domain ${name} is in use by: ${users.join(', ')}`);
      // Saved with a 'remove' mark first: a crash while the volumes go is finished at the next start.
      await this.commit(() => {
        this.removingDomains.add(d);
        return () => this.removingDomains.delete(d);
      }, new Set([d]));
      failpoint(FP.removeAfterMark);
      let removed = true;
      try {
        await d.storage.remove();
        failpoint(FP.removeAfterVolumes);
        for (const v of d.storage.volumes.values())
          this.events.emit(name, 'domain-volume-removed', { volume: v.name, pool: v.pool.name, vid: v.vid });
      } catch (e) {
        removed = false;
        this.events.emit('dom0', 'domain-remove-incomplete', { vm: name, reason: (e as Error).message });
      }
      try {
        await this.commit(() => {
          this.domains.delete(name);
          this.removingDomains.delete(d);
          return () => {
            this.domains.set(name, d);
            this.removingDomains.add(d);
          };
        }, new Set([d]));
      } catch (e) {
        // The mark stays in the file: the next start finishes the removal.
        if (removed) throw e;
      }
    });
    this.events.emit('dom0', 'domain-delete', { vm: name });
  }

  private checkNewName(name: string): void {
    checkDomainName(name);
    if (this.domains.has(name) || this.reserved.has(name)) throw new QubesValueError(`domain ${name} already exists`);
  }

  /** A committed domain not being removed. */
  private usableDomain(name: string): Domain {
    const d = this.domain(name);
    if (this.removingDomains.has(d)) throw new QubesVMNotFoundError(`domain ${name} is being removed`);
    return d;
  }

  private nextQid(): number {
    const used = new Set<number>([...this.domains.values()].map((d) => d.qid));
    for (const r of this.reserved.values()) used.add(r.qid);
    for (let q = 1; q <= MAX_QID; q++) if (!used.has(q)) return q;
    throw new QubesException(`no free qid: at most ${MAX_QID} domains`);
  }

  /** The volume configs of a new domain: the class's set, pools per the choice and the defaults. */
  private newVolumeConfigs(d: Domain, choice: PoolChoice): VolumeConfig[] {
    const g = this.globals;
    const tpl = d.template;
    const pick = (vol: 'root' | 'private' | 'volatile'): string => {
      const p = choice.pools?.[vol] ?? choice.pool ?? String(g.prop(`default_pool_${vol}`) ?? '');
      if (!p) throw new QubesValueError(`no pool for volume ${vol} of ${d.name}: add a pool or set default_pool`);
      return p;
    };
    const kernelVersion = d.hasProperty('kernel') ? String(d.prop('kernel') ?? '') : '';
    const kernelPool = choice.pools?.['kernel'] ?? String(g.prop('default_pool_kernel') ?? '');
    const sizes = {
      root: tpl?.storage.volumes.get('root')?.size ?? this.sizes.root,
      private: d.klass === 'DispVM' ? (tpl?.storage.volumes.get('private')?.size ?? this.sizes.private) : this.sizes.private,
    };
    const configs = defaultVolumeConfigs(
      d.klass,
      { root: pick('root'), private: pick('private'), volatile: pick('volatile'), kernel: kernelVersion && kernelPool ? kernelPool : null },
      sizes,
    );
    for (const c of configs) {
      if (c.snap_on_start && choice.pools?.[c.name] === undefined) {
        const src = tpl?.storage.volumes.get(c.name);
        if (src) c.pool = realSource(src).pool.name;
      }
      if (c.name === 'kernel') c.vid = kernelVersion;
    }
    this.checkPoolChoiceNames(choice, configs);
    return configs;
  }

  private checkPoolChoiceNames(choice: PoolChoice, configs: VolumeConfig[]): void {
    for (const vol of Object.keys(choice.pools ?? {}))
      if (!configs.some((c) => c.name === vol))
        throw new QubesValueError(`pool:${printable(vol)}: the domain has no volume ${printable(vol)} (volumes: ${configs.map((c) => c.name).join(', ')})`);
    for (const c of configs) this.pool(c.pool);
  }

  /** Sizes of a copy follow its source's volumes. */
  private sizedLike(configs: VolumeConfig[], src: Domain): VolumeConfig[] {
    return configs.map((c) => {
      const v = src.storage.volumes.get(c.name);
      return v && c.save_on_stop ? { ...c, size: v.size } : c;
    });
  }

  // ---- power ---------------------------------------------------------------------------

  /**
   * Starts a domain: domain-pre-start (a handler may refuse), the storage
   * (snapshots taken of the templates' committed data, working copies,
   * volatile images), then the runner with the block devices; Running.
   * Starting a running domain does nothing (as in Qubes). A template need not
   * run: its domains see what it last committed.
   */
  async start(name: string): Promise<void> {
    this.checkOpen();
    const d = this.domain(name);
    if (d.klass === 'AdminVM') return;
    let started = false;
    await this.holdDomain(d, { what: 'start' }, async () => {
      if (d.isRunning) return;
      // Every template up the chain must still be there (it cannot be removed while d exists).
      d.templateChain();
      await this.events.fireVetoable(name, 'domain-pre-start');
      try {
        await d.storage.start();
      } finally {
        this.unsaved.add(d);
      }
      try {
        const disks = new Map<string, BlockDevice>();
        for (const [n, v] of d.storage.volumes) disks.set(n, await v.blockDevice());
        await this.runner.start(d, disks);
      } catch (e) {
        await d.storage.stop().catch(() => undefined);
        throw e;
      }
      d.powerState = 'Running';
      started = true;
    });
    if (started) this.events.emit(name, 'domain-start');
  }

  /** Shuts a running domain down, then stops its storage (save_on_stop volumes commit). */
  async shutdown(name: string): Promise<void> {
    await this.stopDomain(name, false);
  }

  /** Stops a running domain at once (no domain-pre-shutdown); storage stops as for shutdown. */
  async kill(name: string): Promise<void> {
    await this.stopDomain(name, true);
  }

  private async stopDomain(name: string, kill: boolean): Promise<void> {
    this.checkOpen();
    const d = this.domain(name);
    if (d.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be stopped');
    let storageError: unknown = null;
    await this.holdDomain(d, { what: kill ? 'kill' : 'shutdown' }, async () => {
      if (!d.isRunning) throw new QubesVMNotStartedError(`domain ${name} is not running`);
      if (!kill) await this.events.fireVetoable(name, 'domain-pre-shutdown');
      if (kill) await this.runner.kill(d);
      else await this.runner.shutdown(d);
      d.powerState = 'Halted';
      try {
        await d.storage.stop();
        for (const v of d.storage.volumes.values())
          if (v.save_on_stop) this.events.emit(name, 'domain-volume-committed', { volume: v.name, pool: v.pool.name, vid: v.vid });
      } catch (e) {
        storageError = e;
      } finally {
        this.unsaved.add(d);
      }
    });
    this.events.emit(name, 'domain-shutdown');
    if (storageError) throw storageError;
    if (d.klass === 'DispVM' && d.prop('auto_cleanup') === true) await this.removeDomain(name);
  }

  // ---- properties ------------------------------------------------------------------------

  /** Sets a property (typed value); checks, saves, emits property-set:NAME. */
  async setProperty(target: PropertyTarget, name: string, value: PropValue): Promise<void> {
    this.checkOpen();
    const def = target.propertyDef(name);
    if (def.computed || def.writeOnce)
      throw new QubesPropertyValueError(`${target.holderName}: property ${name} cannot be changed`);
    const refersTo = def.type === 'vm' && typeof value === 'string' ? value : null;
    await this.onTarget(target, name, refersTo, async () => {
      if (target instanceof Domain) this.checkHalted(target, name, def.haltedOnly ?? false);
      const before = propertyText(target.prop(name));
      target.checkProperty(name, value);
      await this.commit(() => {
        const old = target.storeProperty(name, value);
        try {
          const undoStorage = this.refreshStorage(target, name);
          return () => {
            undoStorage();
            target.restoreProperty(name, old);
          };
        } catch (e) {
          target.restoreProperty(name, old);
          throw e;
        }
      }, this.propertyScope(target, name));
      this.events.emit(this.subjectOf(target), `property-set:${name}`, { name, newvalue: propertyText(value), oldvalue: before });
    });
  }

  /** Sets a property from its wire text (True/False, digits, names; '' is None for vm properties). */
  async setPropertyFromText(target: PropertyTarget, name: string, raw: string): Promise<void> {
    const def = target.propertyDef(name);
    const value = def.type === 'label' ? this._labels.get(raw).name : target.parseProperty(name, raw);
    await this.setProperty(target, name, value);
  }

  /** Back to the default; emits property-reset:NAME. */
  async resetProperty(target: PropertyTarget, name: string): Promise<void> {
    this.checkOpen();
    const def = target.propertyDef(name);
    if (def.computed || def.writeOnce)
      throw new QubesPropertyValueError(`${target.holderName}: property ${name} cannot be reset`);
    const dfltRef = def.type === 'vm' ? target.propertyDefault(name) : null;
    await this.onTarget(target, name, typeof dfltRef === 'string' ? dfltRef : null, async () => {
      if (target instanceof Domain) this.checkHalted(target, name, def.haltedOnly ?? false);
      if (!target.isPropertySet(name)) return;
      const before = propertyText(target.prop(name));
      const old = target.clearProperty(name);
      try {
        const dflt = target.propertyDefault(name);
        if (dflt !== undefined && dflt !== null) target.checkProperty(name, dflt);
        else if (def.type === 'vm' && !def.allowNone) throw new QubesPropertyValueError(`${target.holderName}: property ${name} has no default`);
      } finally {
        target.restoreProperty(name, old);
      }
      await this.commit(() => {
        const prev = target.clearProperty(name);
        try {
          const undoStorage = this.refreshStorage(target, name);
          return () => {
            undoStorage();
            target.restoreProperty(name, prev);
          };
        } catch (e) {
          target.restoreProperty(name, prev);
          throw e;
        }
      }, this.propertyScope(target, name));
      this.events.emit(this.subjectOf(target), `property-reset:${name}`, { name, oldvalue: before });
    });
  }

  /**
   * Runs a property change: holding the domain (for template and kernel also
   * the domains based on it, whose volume objects are rebuilt), and using the
   * domain the new value refers to, so that it cannot be removed meanwhile.
   */
  private async onTarget<T>(target: PropertyTarget, name: string, refersTo: string | null, fn: () => Promise<T>): Promise<T> {
    const release = refersTo === null ? () => undefined : this.useDomains([refersTo], `${target.holderName} (setting ${name})`);
    try {
      if (!(target instanceof Domain)) return await fn();
      const also = name === 'template' || name === 'kernel' ? this.dependents(target) : [];
      return await this.holdDomain(target, { what: `change of property ${name}` }, fn, also);
    } finally {
      release();
    }
  }

  // ---- holding domains (holds.ts) -----------------------------------------------------------

  /**
   * Runs `fn` holding the domain `d` (and `also`) against every other change
   * of it (see holds.ts: waits behind short changes, refused at once behind a
   * long one). Inside, `d` is still the domain of its name and not being
   * removed (else QubesVMNotFoundError): a caller that waited finds it as it
   * now is (e.g. its volume objects, rebuilt by a template change).
   */
  async holdDomain<T>(d: Domain, spec: HoldSpec, fn: () => Promise<T>, also: readonly Domain[] = []): Promise<T> {
    this.checkOpen();
    return this.holds.run([d.name, ...also.map((x) => x.name)], spec, async () => {
      if (this.domains.get(d.name) !== d || this.removingDomains.has(d))
        throw new QubesVMNotFoundError(`no such domain: '${printable(d.name)}'`);
      return fn();
    });
  }

  /**
   * Records that `what` reads the domain `d` (without changing it) until the
   * returned function is called: it cannot be removed meanwhile (its removal
   * lists `what` among its users). Refused while it is being removed.
   */
  useDomain(d: Domain, what: string): () => void {
    this.checkOpen();
    if (this.domains.get(d.name) !== d || this.removingDomains.has(d))
      throw new QubesVMNotFoundError(`no such domain: '${printable(d.name)}'`);
    return this.holds.use(d.name, what);
  }

  /** Uses several domains by name (no check that they exist: the caller's checks follow); one release for all. */
  private useDomains(names: readonly string[], what: string): () => void {
    const releases: Array<() => void> = [];
    try {
      for (const n of names) releases.push(this.holds.use(n, what));
    } catch (e) {
      for (const r of releases) r();
      throw e;
    }
    return () => releases.forEach((r) => r());
  }

  /** The changes holding or waiting for domain `name`, the holder first (`import into volume private`). */
  holdersOf(name: string): Array<{ what: string; holding: boolean }> {
    return this.holds.holdersOf(name);
  }

  private subjectOf(target: PropertyTarget): string {
    return target instanceof Domain ? target.name : '';
  }

  private checkHalted(d: Domain, name: string, haltedOnly: boolean): void {
    if (!haltedOnly) return;
    const running = [d, ...this.dependents(d)].filter((x) => x.isRunning);
    if (running.length)
      throw new QubesVMNotHaltedError(`cannot change ${name} of ${d.name} while ${running.map((x) => x.name).join(', ')} running`);
  }

  /**
   * What a property change touches in the state file: a global one may
   * change what any domain saves; a domain's template or kernel also
   * rebuilds the volumes of the domains based on it (refreshStorage).
   */
  private propertyScope(target: PropertyTarget, name: string): () => SaveScope {
    if (!(target instanceof Domain)) return () => 'all';
    if (name !== 'template' && name !== 'kernel') return () => new Set([target]);
    return () => new Set([target, ...this.dependents(target)]);
  }

  /** Domains whose template chain contains d. */
  private dependents(d: Domain): Domain[] {
    return [...this.domains.values()].filter((x) => x !== d && x.templateChain().includes(d));
  }

  /**
   * After a change of `template` or `kernel`, rebuilds the volume objects of
   * the domain and of those based on it (sources and kernel versions follow);
   * returns the undo. Throws (changing nothing) when they cannot be built.
   */
  private refreshStorage(target: PropertyTarget, name: string): () => void {
    if (!(target instanceof Domain) || (name !== 'template' && name !== 'kernel')) return () => undefined;
    const affected = [target, ...this.dependents(target)].sort((a, b) => a.templateChain().length - b.templateChain().length);
    const old = new Map(affected.map((d) => [d, d.storage]));
    try {
      for (const d of affected) {
        const configs: VolumeConfig[] = [];
        for (const v of d.storage.volumes.values()) {
          const c = v.config();
          delete c.source;
          if (v.name === 'kernel') c.vid = String(d.prop('kernel') ?? '');
          if (v.name === 'kernel' && !c.vid) continue;
          configs.push(c);
        }
        const kernel = String(d.prop('kernel') ?? '');
        const kpool = String(this.globals.prop('default_pool_kernel') ?? '');
        if (kernel && kpool && !d.storage.volumes.has('kernel'))
          configs.push({ name: 'kernel', pool: kpool, vid: kernel, rw: false, snap_on_start: false, save_on_stop: false, size: 0 });
        d.storage = DomainStorage.init({ domain: d, volumes: configs, template: d.template?.storage ?? null }, (n) => this.poolOrThrow(n));
      }
    } catch (e) {
      for (const [d, s] of old) d.storage = s;
      throw e;
    }
    return () => {
      for (const [d, s] of old) d.storage = s;
    };
  }

  // ---- tags and features -------------------------------------------------------------------

  async addTag(d: Domain, tag: string): Promise<void> {
    this.checkOpen();
    if (!TAG_RE.test(tag)) throw new QubesValueError(`invalid tag '${printable(tag)}'`);
    if (d.tags.has(tag)) return;
    await this.commit(() => {
      d.tags.add(tag);
      return () => d.tags.delete(tag);
    }, new Set([d]));
    this.events.emit(d.name, `domain-tag-add:${tag}`, { tag });
  }

  async removeTag(d: Domain, tag: string): Promise<void> {
    this.checkOpen();
    if (!d.tags.has(tag)) throw new QubesTagNotFoundError(`domain ${d.name} has no tag '${printable(tag)}'`);
    await this.commit(() => {
      d.tags.delete(tag);
      return () => d.tags.add(tag);
    }, new Set([d]));
    this.events.emit(d.name, `domain-tag-delete:${tag}`, { tag });
  }

  async setFeature(d: Domain, feature: string, value: string): Promise<void> {
    this.checkOpen();
    if (!FEATURE_RE.test(feature)) throw new QubesValueError(`invalid feature name '${printable(feature)}'`);
    if (/[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(value) || value.length > 4096) throw new QubesValueError(`invalid value for feature ${feature}`);
    const old = d.features.get(feature);
    await this.commit(() => {
      d.features.set(feature, value);
      return () => (old === undefined ? d.features.delete(feature) : d.features.set(feature, old));
    }, new Set([d]));
    this.events.emit(d.name, `domain-feature-set:${feature}`, { feature, value, ...(old !== undefined ? { oldvalue: old } : {}) });
  }

  async removeFeature(d: Domain, feature: string): Promise<void> {
    this.checkOpen();
    const old = d.features.get(feature);
    if (old === undefined) throw new QubesFeatureNotFoundError(`domain ${d.name} has no feature '${printable(feature)}'`);
    await this.commit(() => {
      d.features.delete(feature);
      return () => d.features.set(feature, old);
    }, new Set([d]));
    this.events.emit(d.name, `domain-feature-delete:${feature}`, { feature });
  }

  // ---- saving ---------------------------------------------------------------------------------

  /**
   * Writes the state now, for changes made to volumes directly (resize,
   * revisions_to_keep...). Given a domain, only it and the domains based on
   * it are looked at (their volumes may follow its sizes).
   */
  async save(d?: Domain): Promise<void> {
    await this.commit(() => () => undefined, d ? () => new Set([d, ...this.dependents(d)]) : 'all');
  }

  /**
   * Applies a change and saves. Changes are applied one at a time, in call
   * order, each synchronously; changes arriving while a save is being
   * written are saved together by the next one (group commit: with many
   * clients at once, a save per change would rewrite the whole state file
   * for each). If that save fails, every change it held is undone (last
   * first, synchronously, before the next save) and each caller gets the
   * error. A change whose apply() throws is not applied and gets its error.
   * `scope` names the domains the change touches (asked after apply), so
   * that a save looks at those only.
   */
  private commit(apply: () => () => void, scope: SaveScope | (() => SaveScope)): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queuedCommits.push({ apply, scope: typeof scope === 'function' ? scope : () => scope, resolve, reject });
      // The first one queued schedules the save that takes the whole queue.
      if (this.queuedCommits.length === 1) void this.commitLock.run('state', () => this.saveQueued());
    });
  }

  private async saveQueued(): Promise<void> {
    const batch = this.queuedCommits;
    this.queuedCommits = [];
    const applied: { undo: () => void; c: QueuedCommit }[] = [];
    try {
      let scope: 'all' | Set<Domain> = this.needFull ? 'all' : new Set();
      for (const c of batch) {
        try {
          this.checkOpen();
          applied.push({ undo: c.apply(), c });
        } catch (e) {
          c.reject(e);
          continue;
        }
        if (scope === 'all') continue;
        const s = c.scope();
        if (s === 'all') scope = 'all';
        else for (const d of s) scope.add(d);
      }
      if (!applied.length) return;
      const unsaved = [...this.unsaved];
      if (scope !== 'all') for (const d of unsaved) scope.add(d);
      try {
        let tries = 0;
        // A retry (after a backup made room) rewrites the whole file: the document already holds the changes.
        await this.withRoom(() => this.writeChanges(tries++ === 0 ? scope : 'all'));
        for (const d of unsaved) this.unsaved.delete(d);
      } catch (e) {
        // The document now holds changes the model no longer has: the next save looks at everything.
        this.needFull = true;
        for (let i = applied.length - 1; i >= 0; i--) applied[i]!.undo();
        const err = e instanceof QubesException ? e : stateWriteError(this.stateFile, e);
        for (const a of applied) a.c.reject(err);
        return;
      }
      for (const a of applied) a.c.resolve();
    } catch (e) {
      // An undo that threw: nobody may be left waiting.
      for (const a of applied) a.c.reject(e);
    }
  }

  /**
   * Brings the document in line with the model and makes that durable: one
   * journal record when the state file is big and the journal has room,
   * else the whole file rewritten (which also empties the journal).
   */
  private async writeChanges(scope: SaveScope): Promise<void> {
    const full = this.needFull;
    const changes = this.doc.sync(this, scope);
    if (this.checkSaves && scope !== 'all') {
      const missed = this.doc.sync(this, 'all');
      if (missed.units.length || missed.unkeyed)
        throw new Error(`internal: a save limited to ${[...scope].map((d) => d.name).join(', ') || 'no domain'} missed changes: ${JSON.stringify(missed.units).slice(0, 300)}`);
    }
    if (!full && !changes.unkeyed && changes.units.length === 0) return; // nothing changed: nothing to write
    if (!full && !changes.unkeyed && this.journalFrom <= this.baseBytes) {
      const record = encodeRecord(changes.units);
      const room = Math.max(this.baseBytes, this.journalFrom) / 2 - (this.journal?.recordBytes ?? 0);
      if (record.length <= room) {
        try {
          // No journal open means the state file holds every earlier save (see writeFull).
          this.journal ??= await StateJournal.openEmpty(this.journalFile);
          await this.journal.append(record);
          this.backupStale = true;
          return;
        } catch (e) {
          await this.dropJournal();
          throw stateWriteError(this.journalFile, e);
        }
      }
    }
    await this.writeFull();
  }

  /** Rewrites the whole state file, then empties the journal (its changes are in the file now). */
  private async writeFull(): Promise<void> {
    const text = this.doc.serialize();
    try {
      await this.writeFile(this.stateFile, text);
    } catch (e) {
      throw stateWriteError(this.stateFile, e);
    }
    this.baseBytes = Buffer.byteLength(text);
    this.needFull = false;
    this.backupStale = true;
    if (!this.journal && !this.journalOnDisk) return;
    failpoint(FP.compactAfterWrite);
    try {
      if (this.journal) await this.journal.reset();
      else this.journal = await StateJournal.openEmpty(this.journalFile);
      this.journalOnDisk = false;
    } catch {
      // The file is saved; the journal's records are in it and replaying them changes nothing.
      // The next save tries again to empty it.
      await this.dropJournal();
    }
  }

  /**
   * Runs a write; while it fails for lack of space or quota and a backup of
   * the state is left, removes the oldest backup and runs it again: a backup
   * must never cost a save that would fit without it. `write` must be
   * repeatable (a retry after a failed save rewrites the whole file).
   */
  private async withRoom(write: () => Promise<void>): Promise<void> {
    for (;;) {
      try {
        return await write();
      } catch (e) {
        if (!outOfRoom(e) || !(await this.backups.dropOldest().catch(() => false))) throw e;
        this.needFull = true;
        this.notice?.(`note: removed the oldest backup of ${this.stateFile} to make room for a save`);
      }
    }
  }

  /** After a journal error: close it; the next save rewrites the state file and starts it afresh. */
  private async dropJournal(): Promise<void> {
    await this.journal?.close(false).catch(() => undefined);
    this.journal = null;
    this.journalOnDisk = true;
    this.needFull = true;
  }

  private checkOpen(): void {
    if (this.closed) throw new QubesException(`the state of ${this.stateFile} is closed`);
  }
}

/** The errno code of an error or of its cause (the state errors wrap the system's). */
function errnoOf(e: unknown): string | undefined {
  for (let x = e as { code?: unknown; cause?: unknown } | undefined, i = 0; x && i < 4; x = x.cause as typeof x, i++)
    if (typeof x.code === 'string') return x.code;
  return undefined;
}

function outOfRoom(e: unknown): boolean {
  const code = errnoOf(e);
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * A failed write of the state (`file`: the state file or its journal) as the
 * Qubes-named error the caller gets: what failed, where, and what ran out.
 */
export function stateWriteError(file: string, e: unknown): QubesException {
  if (e instanceof QubesException) return e;
  const dir = path.dirname(file);
  const code = errnoOf(e);
  const why =
    code === 'ENOSPC'
      ? `no space left on the filesystem of ${dir} (ENOSPC)`
      : code === 'EDQUOT'
        ? `the disk quota for ${dir} is used up (EDQUOT)`
        : code === 'EIO'
          ? `an I/O error on the device of ${dir} (EIO): the disk may be failing`
          : code === 'EROFS'
            ? `the filesystem of ${dir} is read-only (EROFS)`
            : (e as Error)?.message ?? String(e);
  return new StoragePoolException(`cannot save the state to ${file}: ${why}`, { cause: e });
}

function checkPoolChoice(o: PoolChoice): void {
  if (o.pool !== undefined && o.pools !== undefined && Object.keys(o.pools).length)
    throw new QubesValueError('pool= and pool:VOLUME= cannot be given together');
  if (o.pool !== undefined) checkPoolName(o.pool);
  for (const [vol, p] of Object.entries(o.pools ?? {})) {
    if (!(VOLUME_NAMES as readonly string[]).includes(vol) && !/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(vol))
      throw new QubesValueError(`invalid volume name '${printable(vol)}'`);
    checkPoolName(p);
  }
}

function optionText(v: OptionValue): string {
  return typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
}
