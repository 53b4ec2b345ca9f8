/**
 * The volume contract. A volume is one virtual disk of a domain, living in
 * one pool. The rules users rely on (which property combinations are legal,
 * resize only grows unless forced, revert is refused while dirty, export of a
 * running volume gives its pre-start data, ...) and what the driver's
 * declaration rules out (pool.capabilities: kinds it does not serve, rw
 * volumes and changes of data in a read-only driver, a shrink in a driver
 * that cannot shrink, more revisions than it keeps) are enforced here, once,
 * for every driver, before the driver is called; a driver implements only
 * the mechanics (the `do*` methods).
 * Every public operation takes the pool's lock for this volume's vid, so
 * operations on one volume run one at a time and different volumes run in
 * parallel.
 */
import {
  QubesValueError,
  QubesVolumeRevisionNotFoundError,
  StoragePoolException,
  storageErrnoError,
} from './errors.js';
import { canShrink } from './driver.js';
import { checkCanStartEphemeral, closeEphemeral, ephemeralDevice, mappable, openEphemeral, requireDmCrypt } from './ephemeral.js';
import { fileImportWriter, type ImportWriter } from './import-writer.js';
import { fileIntoSink, type ExportSink } from './export-sink.js';
import { checkRevisionsLimit, type Pool } from './pool.js';

/** The four kinds that follow from snap_on_start and save_on_stop. */
export type VolumeKind = 'volatile' | 'snapshot' | 'origin' | 'origin_snapshot';

export function volumeKind(snap_on_start: boolean, save_on_stop: boolean): VolumeKind {
  if (snap_on_start) return save_on_stop ? 'origin_snapshot' : 'snapshot';
  return save_on_stop ? 'origin' : 'volatile';
}

/** A volume's configuration as persisted with its domain (qubes.xml volume-config). */
export interface VolumeConfig {
  name: string;
  pool: string;
  vid?: string;
  rw?: boolean;
  snap_on_start?: boolean;
  save_on_stop?: boolean;
  /** vid of the source volume (same pool); only with snap_on_start. */
  source?: string | null;
  /** Explicit value; absent means the pool's default. */
  revisions_to_keep?: number | null;
  size?: number;
  /** Explicit value; absent means the pool's ephemeral_volatile where legal. */
  ephemeral?: boolean | null;
}

/** What a pool needs to make a volume object: the config with its source resolved. */
export interface VolumeSpec extends Omit<VolumeConfig, 'source' | 'pool'> {
  source?: Volume | null;
}

/** The domain a volume belongs to, as far as storage cares. */
export interface DomainRef {
  readonly name: string;
  /** Directory of the domain's class under a pool: appvms, vm-templates, servicevms. */
  readonly dirPrefix: string;
}

/** A saved earlier state of a volume. */
export interface Revision {
  /** Increasing id, as a string (the admin API's revision token). */
  readonly id: string;
  /** ISO-8601 UTC time of the commit that made it, e.g. 2026-11-26T04:12:00Z. */
  readonly time: string;
}

/** What a hypervisor attaches. */
export interface BlockDevice {
  readonly path: string;
  readonly name: string;
  readonly devtype: 'disk';
  readonly rw: boolean;
  readonly domain: string | null;
}

/** The fields of admin.vm.volume.Info, in their order. */
export interface VolumeInfo {
  pool: string;
  vid: string;
  size: number;
  usage: number;
  rw: boolean;
  source: string | null;
  path: string;
  save_on_stop: boolean;
  snap_on_start: boolean;
  revisions_to_keep: number;
  ephemeral: boolean;
  is_outdated: boolean | null;
}

export interface ResizeOptions {
  /**
   * Allow shrinking (data past the new end is cut; kept as a revision when
   * the volume keeps revisions). The admin API has no such flag: the daemon
   * passes it, the client guards (as Qubes' qvm-volume does with -f).
   */
  force?: boolean;
}

const VOLUME_NAME_RE = /^[A-Za-z][A-Za-z0-9_]{0,31}$/;
/** vids are relative paths of safe components: no '..', no empty parts, no NUL. */
const VID_PART_RE = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$/;

export function checkVolumeName(name: string): void {
  if (!VOLUME_NAME_RE.test(name))
    throw new QubesValueError(`invalid volume name '${printable(name)}': use a letter then letters, digits or '_' (at most 32)`);
}

export function checkVid(vid: string): void {
  const parts = vid.split('/');
  if (vid.length > 255 || parts.some((p) => !VID_PART_RE.test(p) || p === '.' || p === '..'))
    throw new QubesValueError(`invalid volume id '${printable(vid)}'`);
}

export function checkSize(size: unknown, what: string): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
    throw new QubesValueError(`${what}: size must be a whole number of bytes >= 0, got ${String(size)}`);
  return size;
}

const pyBool = (b: boolean): string => (b ? 'True' : 'False');

const CONTROL_CHAR = /[\x00-\x1f\x7f]/;
/** Makes untrusted text safe to put in a one-line message. */
export function printable(s: string): string {
  // Most names need nothing: no copy for them (every call's log line has four).
  if (s.length <= 80 && !CONTROL_CHAR.test(s)) return s;
  const cut = s.length > 80 ? s.slice(0, 80) + '...' : s;
  return cut.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/**
 * The property rules of the spec, checked on the effective values:
 * source only with and required by snap_on_start; revisions_to_keep >= -1,
 * -1 only for save_on_stop without snap_on_start; ephemeral only for rw
 * volumes with neither flag.
 */
export function checkVolumeProperties(
  /** For the message: built only when a rule is broken (40,000 volumes are checked at load). */
  where: string | (() => string),
  p: {
    rw: boolean;
    snap_on_start: boolean;
    save_on_stop: boolean;
    hasSource: boolean;
    revisions_to_keep: number;
    ephemeral: boolean;
  },
): void {
  const w = (): string => (typeof where === 'string' ? where : where());
  if (p.hasSource && !p.snap_on_start)
    throw new QubesValueError(`${w()}: source is only allowed with snap_on_start`);
  if (p.snap_on_start && !p.hasSource)
    throw new QubesValueError(`${w()}: snap_on_start requires a source volume`);
  if (!Number.isSafeInteger(p.revisions_to_keep) || p.revisions_to_keep < -1)
    throw new QubesValueError(`${w()}: revisions_to_keep must be an integer >= -1, got ${p.revisions_to_keep}`);
  if (p.revisions_to_keep === -1 && !(p.save_on_stop && !p.snap_on_start))
    throw new QubesValueError(`${w()}: revisions_to_keep=-1 is only allowed with save_on_stop and without snap_on_start`);
  if (p.ephemeral && !(p.rw && !p.snap_on_start && !p.save_on_stop))
    throw new QubesValueError(`${w()}: ephemeral is only allowed for rw volumes with neither snap_on_start nor save_on_stop`);
}

export abstract class Volume {
  readonly pool: Pool;
  readonly name: string;
  readonly vid: string;
  readonly domain: DomainRef | null;
  readonly snap_on_start: boolean;
  readonly save_on_stop: boolean;
  readonly source: Volume | null;
  private _rw: boolean;
  private _size: number;
  /** Explicit values; null = follow the pool. */
  private _revisions_to_keep: number | null;
  private _ephemeral: boolean | null;
  /** Size given to importData while an import is in progress. */
  private pendingImportSize: number | null = null;
  /** The writer importWriter handed out, until importDataEnd. */
  private pendingImportWriter: ImportWriter | null = null;

  constructor(pool: Pool, domain: DomainRef | null, vid: string, spec: VolumeSpec) {
    checkVolumeName(spec.name);
    if (vid !== '' || !this.takesEmptyVid()) checkVid(vid);
    this.pool = pool;
    this.domain = domain;
    this.name = spec.name;
    this.vid = vid;
    this.snap_on_start = spec.snap_on_start ?? false;
    this.save_on_stop = spec.save_on_stop ?? false;
    this.source = spec.source ?? null;
    this._rw = spec.rw ?? false;
    const size = spec.size ?? 0;
    // The message only when the size is bad: 40,000 volumes are made at load.
    this._size = Number.isSafeInteger(size) && size >= 0 ? size : checkSize(size, this.where);
    this._revisions_to_keep = spec.revisions_to_keep ?? null;
    this._ephemeral = spec.ephemeral ?? null;
    this.checkDeclared();
    if (this.source && this.source.pool !== pool)
      throw new QubesValueError(`${this.where}: source ${this.source.vid} is in pool ${this.source.pool.name}, not ${pool.name}`);
    this.checkProperties();
  }

  /**
   * Whether the empty vid is valid for this volume: only where a driver
   * gives it a meaning and touches no file for it (a linux-kernel volume of
   * a domain without a kernel). Called by the constructor.
   */
  protected takesEmptyVid(): boolean {
    return false;
  }

  /** "volume VID of pool POOL", for messages. */
  get where(): string {
    return `volume ${this.vid} of pool ${this.pool?.name}`;
  }

  get kind(): VolumeKind {
    return volumeKind(this.snap_on_start, this.save_on_stop);
  }
  get rw(): boolean {
    return this._rw;
  }
  get size(): number {
    return this._size;
  }
  /** Effective value: explicit, else the pool's (where the pool's -1 is illegal here: 0). */
  get revisions_to_keep(): number {
    if (this._revisions_to_keep !== null) return this._revisions_to_keep;
    const fromPool = this.pool.revisions_to_keep;
    return fromPool === -1 && !(this.save_on_stop && !this.snap_on_start) ? 0 : fromPool;
  }
  get ephemeral(): boolean {
    if (this._ephemeral !== null) return this._ephemeral;
    return this.kind === 'volatile' && this._rw && this.pool.ephemeral_volatile;
  }

  /** The persisted form (only explicit values of pool-defaulted properties). */
  config(): VolumeConfig {
    const c: VolumeConfig = {
      name: this.name,
      pool: this.pool.name,
      vid: this.vid,
      rw: this._rw,
      snap_on_start: this.snap_on_start,
      save_on_stop: this.save_on_stop,
      size: this._size,
    };
    if (this.source) c.source = this.source.vid;
    if (this._revisions_to_keep !== null) c.revisions_to_keep = this._revisions_to_keep;
    if (this._ephemeral !== null) c.ephemeral = this._ephemeral;
    return c;
  }

  /**
   * What the driver's declaration rules out for this volume object: a kind it
   * does not serve, rw in a read-only driver, an explicit revisions_to_keep
   * above what it keeps (QubesValueError). Runs when the object is made,
   * before the driver's volume constructor goes on.
   */
  private checkDeclared(): void {
    const caps = this.pool.capabilities;
    if (!caps.volumeKinds.includes(this.kind))
      throw new QubesValueError(
        `${this.where}: driver ${this.pool.declaredBy} does not serve ${this.kind} volumes ` +
          `(snap_on_start=${pyBool(this.snap_on_start)}, save_on_stop=${pyBool(this.save_on_stop)}); ` +
          `it serves ${caps.volumeKinds.join(', ') || 'none'}`,
      );
    if (this._rw && !caps.writable) throw this.readOnlyDriver('be writable', QubesValueError);
    if (this._revisions_to_keep !== null) checkRevisionsLimit(this.pool, this._revisions_to_keep, `${this.where}: revisions_to_keep`);
  }

  /** The refusal of `what` in a read-only driver (capabilities.writable false). */
  private readOnlyDriver(what: string, Err: typeof QubesValueError | typeof StoragePoolException): Error {
    return new Err(`${this.where}: cannot ${what}: driver ${this.pool.declaredBy} serves read-only volumes`);
  }

  /** Refuses an operation that changes data when the driver is read-only (StoragePoolException, as Qubes). */
  private checkWritableDriver(what: string): void {
    if (!this.pool.capabilities.writable) throw this.readOnlyDriver(what, StoragePoolException);
  }

  private checkProperties(over: { revisions_to_keep?: number; ephemeral?: boolean; rw?: boolean } = {}): void {
    checkVolumeProperties(() => this.where, {
      rw: over.rw ?? this._rw,
      snap_on_start: this.snap_on_start,
      save_on_stop: this.save_on_stop,
      hasSource: this.source !== null,
      revisions_to_keep: over.revisions_to_keep ?? this.revisions_to_keep,
      ephemeral: over.ephemeral ?? this.ephemeral,
    });
  }

  /**
   * Runs an operation under the volume's lock. Out of space, EIO or a
   * read-only filesystem met outside the driver's own wrapping (a check of
   * the image before the driver runs) is still said in words (storageError).
   */
  protected async locked<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await this.pool.locks.run(this.vid, fn);
    } catch (e) {
      throw storageErrnoError(this.where, e) ?? e;
    }
  }

  // ---- property changes -------------------------------------------------

  setRevisionsToKeep(n: number | null): void {
    if (n !== null) {
      checkRevisionsLimit(this.pool, n, `${this.where}: revisions_to_keep`);
      this.checkProperties({ revisions_to_keep: n });
    }
    this._revisions_to_keep = n;
  }
  setRw(rw: boolean): void {
    if (rw && !this.pool.capabilities.writable) throw this.readOnlyDriver('be writable', QubesValueError);
    this.checkProperties({ rw });
    this._rw = rw;
  }
  setEphemeral(e: boolean | null): void {
    if (e !== null) this.checkProperties({ ephemeral: e });
    this._ephemeral = e;
  }
  /**
   * Refuses what setEphemeral(e) would refuse, and ephemeral=True where this
   * host cannot encrypt volumes (QubesValueError naming the volume and the
   * reason): the admin API asks before it changes anything.
   */
  async checkEphemeral(e: boolean | null): Promise<void> {
    if (e === null) return;
    this.checkProperties({ ephemeral: e });
    if (e) await requireDmCrypt(`${this.where}: cannot make it ephemeral`);
  }

  /**
   * Whether this volume maps itself through dm-crypt when ephemeral
   * (ephemeral.ts). A volume that stands in front of another (callback)
   * answers false: the volume behind it, whose data it is, does it.
   */
  protected get mapsEphemeral(): boolean {
    return true;
  }

  // ---- the contract -----------------------------------------------------

  /** Makes the volume's storage (an origin gets an empty sparse image of `size`). */
  create(): Promise<void> {
    return this.locked(() => this.doCreate());
  }

  /** Removes everything the volume has on disk, revisions included (and a dm-crypt mapping a crash left). */
  remove(): Promise<void> {
    return this.locked(async () => {
      if (this.mapsEphemeral) await closeEphemeral(this);
      await this.doRemove();
    });
  }

  /**
   * Prepares the data for a running domain, per kind: a fresh snapshot of the
   * source, a working copy of its own data, or an empty volatile image. After
   * a crash, a dirty save_on_stop volume keeps its uncommitted data. An
   * ephemeral volume is then mapped through dm-crypt with a throw-away key
   * (ephemeral.ts), after a mapping a crash left is removed; where this host
   * cannot encrypt it, it does not start (StoragePoolException).
   */
  async start(): Promise<void> {
    if (this.snap_on_start) {
      const src = this.source!;
      if (src.revisions_to_keep === -1 && (await src.isDirty()))
        throw new StoragePoolException(
          `${this.where}: cannot snapshot ${src.vid} while it runs with snapshots disabled (revisions_to_keep=-1)`,
        );
    }
    await this.locked(async () => {
      const encrypt = this.mapsEphemeral && this.ephemeral;
      if (encrypt) await checkCanStartEphemeral(this);
      await this.adoptStoredSize();
      // Before the driver's start: it may replace the data a leftover mapping holds open.
      if (this.mapsEphemeral) await closeEphemeral(this, true);
      await this.doStart();
      if (!encrypt) return;
      try {
        await openEphemeral(this);
      } catch (e) {
        await this.doStop().catch(() => undefined);
        throw e;
      }
    });
  }

  /**
   * The size of the stored data, for drivers where the data carries it (an
   * image file); null when only the recorded size is known. A crash between
   * a resize (or an import) of the data and the save of the state leaves the
   * recorded size stale; the data's size wins, so a later resize never takes
   * the real image for smaller than it is and truncates what the domain wrote.
   */
  async storedSize(): Promise<number | null> {
    return null;
  }

  private async adoptStoredSize(): Promise<void> {
    const stored = await this.storedSize();
    if (stored !== null && stored !== this._size) this._size = stored;
  }

  /**
   * Commits (save_on_stop) or discards the domain's writes; an ephemeral
   * volume's dm-crypt mapping (and loop device) goes first, and its key with it.
   */
  stop(): Promise<void> {
    return this.locked(async () => {
      if (this.mapsEphemeral) await closeEphemeral(this);
      await this.doStop();
    });
  }

  /**
   * Removes the dm-crypt mapping a crashed process left for this volume
   * (its domain is not running); true if there was one.
   */
  removeEphemeralLeftover(): Promise<boolean> {
    return this.mapsEphemeral ? this.locked(() => closeEphemeral(this)) : Promise.resolve(false);
  }

  /**
   * Checks that the volume can start (its image, or its source's, exists;
   * an ephemeral one, that this host can encrypt it): a domain's start
   * verifies all its volumes before it starts any, so a refusal changes nothing.
   */
  verify(): Promise<boolean> {
    return this.locked(async () => {
      if (this.mapsEphemeral && this.ephemeral) await checkCanStartEphemeral(this);
      return this.doVerify();
    });
  }

  /**
   * Grows the volume (a running copy follows), or shrinks it with force. A
   * shrink is refused (StoragePoolException, nothing changed) unless the
   * driver declares `shrink`, the volume is not in use, and its data is its
   * own (not a snapshot of a source). A volume that keeps revisions keeps the
   * data before the cut as its newest revision, so a revert undoes the shrink.
   */
  async resize(size: number, opts: ResizeOptions = {}): Promise<void> {
    this.checkWritableDriver('resize');
    checkSize(size, this.where);
    if (!this._rw) throw new QubesValueError(`${this.where}: cannot resize a read-only volume`);
    await this.locked(async () => {
      await this.adoptStoredSize();
      if (size < this._size) {
        await this.checkShrink(size, opts);
        await this.doShrink(size, this.keepsRevisions);
      } else {
        // Even at the same size the driver runs: every operation repairs what a crash left.
        await this.doResize(size);
      }
      this._size = size;
    });
  }

  /** Commits make revisions: an origin with revisions_to_keep > 0. */
  private get keepsRevisions(): boolean {
    return this.save_on_stop && !this.snap_on_start && this.revisions_to_keep > 0;
  }

  /** The rules of a shrink (called with the lock held, the size adopted). */
  private async checkShrink(size: number, opts: ResizeOptions): Promise<void> {
    const cut = `cannot shrink from ${this._size} to ${size} bytes`;
    if (!canShrink(this.pool.capabilities))
      throw new StoragePoolException(`${this.where}: ${cut}: driver ${this.pool.declaredBy} cannot shrink volumes (it only grows them)`);
    if (!opts.force)
      throw new QubesValueError(`${this.where}: shrinking from ${this._size} to ${size} bytes would lose data; refused without force`);
    if (this.snap_on_start)
      throw new StoragePoolException(`${this.where}: ${cut}: a snapshot's data is its source's (${this.source!.vid}): shrink the source`);
    if (await this.doIsDirty())
      throw new StoragePoolException(`${this.where}: ${cut} while the volume is in use: stop its domain first`);
  }

  /** Revisions, oldest first. */
  revisions(): Promise<Revision[]> {
    return this.doRevisions();
  }

  /**
   * Makes `revision` (default: the newest) the current data. The current data
   * becomes a revision itself, so a revert can be undone. Refused while dirty.
   */
  async revert(revision?: string): Promise<void> {
    this.checkWritableDriver('revert');
    return this.locked(async () => {
      if (await this.doIsDirty())
        throw new StoragePoolException(`${this.where}: cannot revert while the volume is in use (dirty)`);
      const revs = await this.doRevisions();
      if (revs.length === 0)
        throw new QubesVolumeRevisionNotFoundError(`${this.where}: no revision to revert to`);
      const id = revision ?? revs[revs.length - 1]!.id;
      if (!revs.some((r) => r.id === id))
        throw new QubesVolumeRevisionNotFoundError(`${this.where}: no revision '${printable(id)}'`);
      await this.doRevert(id);
      await this.adoptStoredSize(); // the reverted-to data keeps its own size
    });
  }

  /**
   * A path to read the committed data from (also while running: the data as
   * it was before the domain started). Call exportEnd(path) when done.
   */
  export(): Promise<string> {
    return this.locked(async () => {
      if (this.revisions_to_keep === -1 && (await this.doIsDirty()))
        throw new StoragePoolException(
          `${this.where}: cannot export while running with snapshots disabled (revisions_to_keep=-1)`,
        );
      return this.doExport();
    });
  }
  exportEnd(path: string): Promise<void> {
    return this.doExportEnd(path);
  }

  /**
   * Whether the driver reads an export from its storage itself
   * (doExportInto overridden: rbd reads its image), so that the data is best
   * streamed from exportInto; false: export()'s path is a file of this host,
   * which a reader on this host may copy directly (by reflink where it can).
   * admin.vm.volume.ExportStream asks this.
   */
  get readsExportsItself(): boolean {
    return false;
  }

  /**
   * The committed data, as export() gives it, handed to `sink` piece by
   * piece (holes and, where the driver finds them, zero blocks left out).
   * Holds the volume for its whole duration, as export() holds it while
   * making its file: a sink that stops taking data keeps other operations
   * of this volume waiting (the admin API drops a reader that stalls).
   */
  exportInto(sink: ExportSink, signal?: AbortSignal): Promise<void> {
    return this.locked(async () => {
      if (this.revisions_to_keep === -1 && (await this.doIsDirty()))
        throw new StoragePoolException(
          `${this.where}: cannot export while running with snapshots disabled (revisions_to_keep=-1)`,
        );
      // The sink's calls in order whatever the driver does: end once, nothing after it.
      let ended = false;
      const checked: ExportSink = {
        begin: (size) => sink.begin(size),
        data: (offset, bytes) => {
          if (ended) throw new Error(`${this.where}: export data after its end`);
          return sink.data(offset, bytes);
        },
        end: async () => {
          if (ended) return;
          ended = true;
          await sink.end();
        },
      };
      await this.doExportInto(checked, signal);
      await checked.end();
    });
  }

  /**
   * A path to write `size` bytes of new data to; nothing changes until
   * importDataEnd(true), which also sets the volume's size to `size`.
   * Refused while the volume is in use, and for kinds that keep no data.
   */
  importData(size: number): Promise<string> {
    return this.beginImport(size, () => this.doImportData(size));
  }

  /**
   * Whether the driver writes an import into its storage itself
   * (doImportWriter overridden: rbd writes its image), so that the data is
   * best streamed into importWriter; false: the import is a file of this
   * host (importData's path), which a caller on this host may write
   * directly, without the data crossing a socket. The import service asks
   * this (internal.vm.volume.ImportMode).
   */
  get writesImportsItself(): boolean {
    return false;
  }

  /**
   * Like importData, but a writer to stream the data into
   * (src/storage/import-writer.ts) instead of a path: the driver's own
   * (doImportWriter: rbd writes its image) or one over the file
   * doImportData gives. Then importDataEnd(success): on success the writer
   * is finished first (the rest reads as zeros, all durable), in every case
   * closed before the driver switches to the new data or drops it.
   */
  importWriter(size: number): Promise<ImportWriter> {
    return this.beginImport(size, async () => {
      const w = await this.doImportWriter(size);
      this.pendingImportWriter = w;
      return w;
    });
  }

  private async beginImport<T>(size: number, begin: () => Promise<T>): Promise<T> {
    this.checkWritableDriver('import data');
    checkSize(size, this.where);
    this.checkKeepsData('import into');
    return this.locked(async () => {
      if (await this.doIsDirty())
        throw new StoragePoolException(`${this.where}: cannot import while the volume is in use`);
      if (this.pendingImportSize !== null)
        throw new StoragePoolException(`${this.where}: an import is already in progress`);
      const p = await begin();
      this.pendingImportSize = size;
      return p;
    });
  }
  /** Switches to the imported data on success; on failure drops it, keeping the old. */
  async importDataEnd(success: boolean): Promise<void> {
    this.checkWritableDriver('import data');
    return this.locked(async () => {
      const size = this.pendingImportSize;
      if (size === null) throw new StoragePoolException(`${this.where}: no import in progress`);
      const writer = this.pendingImportWriter;
      this.pendingImportWriter = null;
      let ok = success;
      let failure: { error: unknown } | null = null;
      try {
        if (writer) {
          try {
            if (ok) await writer.finish();
          } catch (e) {
            ok = false;
            failure = { error: e };
          }
          // Closed before the driver switches to the data or drops it.
          await writer.close().catch(() => undefined);
        }
        await this.doImportDataEnd(ok);
        if (failure) throw failure.error;
        if (ok) this._size = size;
      } finally {
        this.pendingImportSize = null;
      }
    });
  }

  /**
   * Replaces this volume's data with a copy of `src`'s committed data (from
   * any pool); the old data becomes a revision. The source is exported before
   * this volume's lock is taken, so two copies in opposite directions cannot
   * deadlock.
   */
  async importVolume(src: Volume): Promise<void> {
    this.checkWritableDriver('import a volume');
    this.checkKeepsData('import into');
    if (src === this || (src.pool === this.pool && src.vid === this.vid))
      throw new QubesValueError(`${this.where}: cannot import a volume into itself`);
    const srcPath = await src.export();
    try {
      await this.locked(async () => {
        if (await this.doIsDirty())
          throw new StoragePoolException(`${this.where}: cannot import while the volume is in use`);
        await this.doImportVolume(src, srcPath);
        this._size = (await this.storedSize()) ?? src.size; // the copy's size (src's record may be stale)
      });
    } finally {
      await src.exportEnd(srcPath);
    }
  }

  private checkKeepsData(what: string): void {
    if (!this.save_on_stop)
      throw new QubesValueError(
        `${this.where}: cannot ${what} a ${this.kind} volume: its data is not kept (import into its source instead)`,
      );
  }

  /** Started and not cleanly stopped. */
  isDirty(): Promise<boolean> {
    return this.doIsDirty();
  }

  /** The source changed since this snapshot was taken; null: cannot tell. */
  isOutdated(): Promise<boolean | null> {
    return this.doIsOutdated();
  }

  /** Bytes really allocated. */
  usage(): Promise<number> {
    return this.doUsage();
  }

  /**
   * Where a hypervisor finds the data (the working copy while started). The
   * driver's data: while an ephemeral volume runs, blockDevice() and Info's
   * path name its dm-crypt mapping instead.
   */
  abstract path(): Promise<string>;

  /** What the domain is given: the driver's path, or the dm-crypt mapping of a running ephemeral volume. */
  async blockDevice(): Promise<BlockDevice> {
    return {
      path: (await ephemeralDevice(this)) ?? (await this.path()),
      name: this.name,
      devtype: 'disk',
      rw: this._rw,
      domain: this.domain?.name ?? null,
    };
  }

  /** admin.vm.volume.Info fields. */
  async info(): Promise<VolumeInfo> {
    // Info is the most frequent call: no mapping lookup for the many volumes that are never mapped.
    const [{ usage, path: driverPath, is_outdated }, mapped] = mappable(this)
      ? await Promise.all([this.liveInfo(), ephemeralDevice(this)])
      : [await this.liveInfo(), null];
    const path = mapped ?? driverPath;
    return {
      pool: this.pool.name,
      vid: this.vid,
      size: this._size,
      usage,
      rw: this._rw,
      source: this.source?.vid ?? null,
      path,
      save_on_stop: this.save_on_stop,
      snap_on_start: this.snap_on_start,
      revisions_to_keep: this.revisions_to_keep,
      ephemeral: this.ephemeral,
      is_outdated,
    };
  }

  /**
   * The Info fields read from storage at each call (they change behind our
   * back: a domain writing its image changes usage). A driver may override
   * this to read them in one pass; the answer must equal the three calls'.
   */
  protected async liveInfo(): Promise<Pick<VolumeInfo, 'usage' | 'path' | 'is_outdated'>> {
    const [usage, path, is_outdated] = await Promise.all([this.usage(), this.path(), this.isOutdated()]);
    return { usage, path, is_outdated };
  }

  // ---- what a driver implements (called with the volume's lock held) ---

  protected abstract doCreate(): Promise<void>;
  protected abstract doRemove(): Promise<void>;
  protected abstract doStart(): Promise<void>;
  protected abstract doStop(): Promise<void>;
  protected abstract doVerify(): Promise<boolean>;
  /** Grows the data (and a running copy) to `size`; at the same size, repairs only. */
  protected abstract doResize(size: number): Promise<void>;
  /**
   * Cuts the data at `size` (smaller than the current size; the volume is
   * not in use and not a snapshot). `keepRevision`: the data before the cut
   * becomes the newest revision first, as a commit makes one (the oldest past
   * revisions_to_keep go), and the change is one crash-safe step, so a revert
   * brings back the old size and data. Only drivers declaring `shrink`
   * are called; the default refuses.
   */
  protected async doShrink(_size: number, _keepRevision: boolean): Promise<void> {
    throw new StoragePoolException(`${this.where}: driver ${this.pool.declaredBy} declares shrink but does not implement it`);
  }
  protected abstract doRevisions(): Promise<Revision[]>;
  protected abstract doRevert(revision: string): Promise<void>;
  protected abstract doExport(): Promise<string>;
  protected abstract doExportEnd(path: string): Promise<void>;
  /** For exportInto: by default the file doExport makes, read and handed over (export-sink.ts), then ended (the sink's end first). */
  protected async doExportInto(sink: ExportSink, signal?: AbortSignal): Promise<void> {
    const path = await this.doExport();
    try {
      await fileIntoSink(path, sink, signal);
      await sink.end();
    } finally {
      await this.doExportEnd(path);
    }
  }
  protected abstract doImportData(size: number): Promise<string>;
  protected abstract doImportDataEnd(success: boolean): Promise<void>;
  /** A writer for importWriter: by default one over the file doImportData makes (see import-writer.ts). */
  protected async doImportWriter(size: number): Promise<ImportWriter> {
    const file = await this.doImportData(size);
    try {
      return await fileImportWriter(file);
    } catch (e) {
      await this.doImportDataEnd(false).catch(() => undefined);
      throw e;
    }
  }
  /** `srcPath` is `src`'s export, valid for the whole call. */
  protected abstract doImportVolume(src: Volume, srcPath: string): Promise<void>;
  protected abstract doIsDirty(): Promise<boolean>;
  protected abstract doIsOutdated(): Promise<boolean | null>;
  protected abstract doUsage(): Promise<number>;
}
