/**
 * An lvm_thin volume, named as Qubes' lvm_thin driver names it. Volume
 * `VG/vm-NAME-VOLUME` (LV = vm-NAME-VOLUME):
 *
 *   LV                 the committed data (origin, origin_snapshot); a
 *                      volatile volume's data while running
 *   LV-snap            the running copy (origin, snapshot, origin_snapshot):
 *                      a thin snapshot made at start, committed (renamed to
 *                      LV) or removed at stop
 *   LV-TIMESTAMP-back  a revision: the data committed before, TIMESTAMP its
 *                      UTC time in seconds since 1970 (revision id
 *                      `TIMESTAMP-back`, as Qubes lists it)
 *   LV-import          an import in progress
 *
 * A commit (stop, import, clone) renames LV to the next revision, then the
 * new data to LV, then removes the revisions past revisions_to_keep. When LV
 * is missing, the current data is the newest revision (as Qubes reads it):
 * a crash between the renames leaves the old data current and the new data
 * where it was (the running copy, or the import, which the next operation
 * puts in place).
 */
import * as fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { declareFailpoint, failpoint } from '../../files/failpoint.js';
import { StoragePoolException, storageErrnoError } from '../../storage/errors.js';
import { ExportFiles } from '../../storage/export-files.js';
import { regionsIntoSink, type ExportSink } from '../../storage/export-sink.js';
import { Volume, type DomainRef, type Revision, type VolumeInfo, type VolumeSpec } from '../../storage/volume.js';
import { deviceSize, type LvInfo } from './lvm.js';
import type { LvmThinPool } from './pool.js';

/** Crash points (QUBES_STORAGE_FAILPOINTS): the conformance crash tests kill a process at each. */
export const LVM_FAILPOINTS = {
  /** A stop's commit: LV renamed to a revision; the running copy not yet in its place. */
  stopAfterBackup: declareFailpoint('lvm.stop.after-backup'),
  stopAfterRename: declareFailpoint('lvm.stop.after-rename'),
  /** An import's (or a clone's) commit, the same two steps. */
  importAfterBackup: declareFailpoint('lvm.import.after-backup'),
  importAfterRename: declareFailpoint('lvm.import.after-rename'),
  /** A clone: LV-import made, its data not yet committed. */
  importAfterCreate: declareFailpoint('lvm.import.after-create'),
  revertAfterBackup: declareFailpoint('lvm.revert.after-backup'),
};
const FP = LVM_FAILPOINTS;

/** Zero detection and copy unit of exports and imports. */
const BLOCK = 64 * 1024;
const CHUNK = 4 * 1024 * 1024;

function isoOfSeconds(s: number): string {
  return new Date(s * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
}

export class LvmThinVolume extends Volume {
  declare readonly pool: LvmThinPool;
  /** The LV of the committed data: vm-NAME-VOLUME. */
  readonly lv: string;
  readonly snapLv: string;
  readonly importLv: string;
  /** Export files handed out by this object. */
  private readonly exports = new ExportFiles();

  constructor(pool: LvmThinPool, domain: DomainRef | null, vid: string, spec: VolumeSpec) {
    super(pool, domain, vid, spec);
    this.lv = vid.split('/')[1]!;
    this.snapLv = `${this.lv}-snap`;
    this.importLv = `${this.lv}-import`;
  }

  private what(action: string): string {
    return `${this.where}: ${action}`;
  }

  private async guarded<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      const mapped = storageErrnoError(this.what(action), e);
      if (mapped) throw mapped;
      if (e instanceof StoragePoolException && e.message.startsWith(this.where)) throw e;
      if (e instanceof StoragePoolException) throw new StoragePoolException(this.what(`${action}: ${e.message.replace(/^pool [^:]*: /, '')}`), { cause: e });
      throw new StoragePoolException(this.what(`${action}: ${e instanceof Error ? e.message : String(e)}`), { cause: e });
    }
  }

  // ---- names ---------------------------------------------------------------------------

  /** Revisions of this volume in `lvs`, oldest first: LV-TIMESTAMP-back. */
  private revisionLvs(lvs: Map<string, LvInfo>): { lv: string; id: string; seconds: number }[] {
    const prefix = `${this.lv}-`;
    const out: { lv: string; id: string; seconds: number }[] = [];
    for (const name of lvs.keys()) {
      if (!name.startsWith(prefix)) continue;
      const m = /^([0-9]{1,15})-back$/.exec(name.slice(prefix.length));
      if (m) out.push({ lv: name, id: `${m[1]}-back`, seconds: Number(m[1]) });
    }
    return out.sort((a, b) => a.seconds - b.seconds);
  }

  /** The LV of the committed data: LV, else (a commit cut off after its first rename) the newest revision. */
  private currentLv(lvs: Map<string, LvInfo>): string | null {
    if (lvs.has(this.lv)) return this.lv;
    return this.revisionLvs(lvs).at(-1)?.lv ?? null;
  }

  /** The name of a new revision: now, or one second after the newest (names must differ). */
  private nextRevisionLv(lvs: Map<string, LvInfo>): string {
    const now = Math.floor(Date.now() / 1000);
    const newest = this.revisionLvs(lvs).at(-1)?.seconds ?? 0;
    return `${this.lv}-${Math.max(now, newest + 1)}-back`;
  }

  private get keep(): number {
    return Math.max(this.revisions_to_keep, 0);
  }

  /** The LV a running domain uses. */
  private get runLv(): string {
    return this.kind === 'volatile' ? this.lv : this.snapLv;
  }

  // ---- recovery and commits ---------------------------------------------------------------

  /**
   * Finishes what an interrupted operation left, at the start of every
   * operation that changes something: an import whose commit had begun (LV
   * renamed away, LV-import there) is put in place; one that had not (LV
   * there) is dropped, unless an import of this process is writing it
   * (pool.importing); revisions past the limit go.
   */
  private async recover(): Promise<Map<string, LvInfo>> {
    let lvs = await this.pool.lvs();
    if (this.save_on_stop && lvs.has(this.importLv) && !this.pool.importing.has(this.lv)) {
      if (!lvs.has(this.lv) && this.revisionLvs(lvs).length > 0) await this.commitFrom(this.importLv, lvs);
      else await this.pool.remove([this.importLv], this.what('dropping an unfinished import'));
      lvs = await this.pool.lvs();
    }
    if (this.save_on_stop) await this.prune(lvs);
    return this.pool.lvs();
  }

  /**
   * Removes the oldest revisions past revisions_to_keep (one lvremove).
   * When LV is missing (a commit or revert cut between its two renames),
   * the newest revision is the current data: it is not counted among the
   * revisions, or a revert cut there would lose the oldest revision (seen
   * in the power-cut test, seed 29596 cut 2).
   */
  private async prune(lvs: Map<string, LvInfo>): Promise<void> {
    const current = this.currentLv(lvs);
    const revs = this.revisionLvs(lvs).filter((r) => r.lv !== current);
    const drop = revs.slice(0, Math.max(revs.length - this.keep, 0)).map((r) => r.lv);
    await this.pool.remove(drop, this.what('removing old revisions'));
  }

  /**
   * Makes `from` (the running copy, or an import) the committed data: LV
   * becomes the newest revision (when LV is the current data), `from` is
   * renamed LV, the revisions past the limit go.
   */
  private async commitFrom(from: string, lvs: Map<string, LvInfo>): Promise<void> {
    const what = this.what('commit');
    const isStop = from === this.snapLv;
    if (lvs.has(this.lv)) {
      await this.pool.rename(this.lv, this.nextRevisionLv(lvs), what);
      failpoint(isStop ? FP.stopAfterBackup : FP.importAfterBackup);
    }
    await this.pool.rename(from, this.lv, what);
    failpoint(isStop ? FP.stopAfterRename : FP.importAfterRename);
    await this.prune(await this.pool.lvs());
  }

  // ---- the contract -----------------------------------------------------------------------

  /** The running copy while started, else the committed data (a volatile: its LV). */
  override async path(): Promise<string> {
    return this.pool.devPath(this.pathLv(await this.pool.lvs()));
  }

  private pathLv(lvs: Map<string, LvInfo>): string {
    if (this.kind === 'volatile') return this.lv;
    if (lvs.has(this.snapLv)) return this.snapLv;
    if (this.kind === 'snapshot') return (this.source as LvmThinVolume).currentLv(lvs) ?? (this.source as LvmThinVolume).lv;
    return this.currentLv(lvs) ?? this.lv;
  }

  /** One `lvs` (or none) for the three live fields. */
  protected override async liveInfo(): Promise<Pick<VolumeInfo, 'usage' | 'path' | 'is_outdated'>> {
    return this.guarded('reading its state failed', async () => {
      const lvs = await this.pool.scan();
      const p = this.pathLv(lvs);
      return { usage: this.usageIn(lvs), path: this.pool.devPath(p), is_outdated: this.outdatedIn(lvs) };
    });
  }

  protected async doCreate(): Promise<void> {
    await this.guarded('create failed', async () => {
      if (!this.save_on_stop) return; // volatile and snapshot volumes are made at start
      const lvs = await this.pool.lvs();
      if (lvs.has(this.lv)) throw new StoragePoolException(this.what(`already exists (LV ${this.pool.vg}/${this.lv})`));
      if (this.source) {
        // origin_snapshot: starts as its source's committed data (Qubes clones it).
        const src = (this.source as LvmThinVolume).currentLv(lvs);
        if (!src) throw new StoragePoolException(this.what(`source volume ${this.source.vid} is missing`));
        await this.pool.snapshot(src, this.lv, this.what('create'));
        if (this.size > (lvs.get(src)?.size ?? 0)) await this.pool.extend(this.lv, this.size, this.what('create'));
      } else {
        await this.pool.createThin(this.lv, this.size, this.what('create'));
      }
    });
  }

  protected async doRemove(): Promise<void> {
    await this.guarded('remove failed', async () => {
      const lvs = await this.pool.lvs();
      const mine = [this.snapLv, this.importLv, ...this.revisionLvs(lvs).map((r) => r.lv)];
      if (this.save_on_stop || this.kind === 'volatile') mine.push(this.lv);
      await this.pool.remove(mine.filter((lv) => lvs.has(lv)), this.what('remove'));
      this.pool.importing.delete(this.lv);
    });
  }

  protected async doStart(): Promise<void> {
    await this.guarded('start failed', async () => {
      if (this.kind === 'volatile') return this.startVolatile();
      const lvs = await this.recover();
      if (this.save_on_stop && lvs.has(this.snapLv)) return; // dirty: the running copy from before a crash is kept
      if (lvs.has(this.importLv)) throw new StoragePoolException(this.what('an import is in progress'));
      const from = this.source ? (this.source as LvmThinVolume).currentLv(lvs) : this.currentLv(lvs);
      if (!from) throw new StoragePoolException(this.what(this.source ? `source volume ${this.source.vid} is missing` : `missing LV ${this.pool.vg}/${this.lv} (volume not created?)`));
      // A snapshot's copy from before a crash is dropped: it starts afresh.
      if (lvs.has(this.snapLv)) await this.pool.remove([this.snapLv], this.what('start'));
      await this.pool.snapshot(from, this.snapLv, this.what('start'));
      // A volume recorded larger than the data it starts from (a snapshot grown): its copy grows.
      if (this.size > (lvs.get(from)?.size ?? 0)) await this.pool.extend(this.snapLv, this.size, this.what('start'));
    });
  }

  private async startVolatile(): Promise<void> {
    const lvs = await this.pool.lvs();
    // What a crash left running is dropped: a volatile volume starts empty.
    if (lvs.has(this.lv)) await this.pool.remove([this.lv], this.what('start'));
    await this.pool.createThin(this.lv, this.size, this.what('start'));
  }

  protected async doStop(): Promise<void> {
    await this.guarded('stop failed', async () => {
      const lvs = await this.pool.lvs();
      if (this.kind === 'volatile') return this.pool.remove(lvs.has(this.lv) ? [this.lv] : [], this.what('stop'));
      if (!lvs.has(this.snapLv)) return; // not started: nothing to do
      if (!this.save_on_stop) return this.pool.remove([this.snapLv], this.what('stop'));
      await this.commitFrom(this.snapLv, lvs);
    });
  }

  protected async doVerify(): Promise<boolean> {
    return this.guarded('verify failed', async () => {
      if (this.kind === 'volatile') return true;
      const lvs = await this.pool.lvs();
      const owner = this.source && !this.save_on_stop ? (this.source as LvmThinVolume) : this;
      const cur = owner.currentLv(lvs) ?? (this.source && this.save_on_stop ? (this.source as LvmThinVolume).currentLv(lvs) : null);
      if (!cur) throw new StoragePoolException(this.what(`volume ${owner.vid} missing`));
      const info = lvs.get(cur)!;
      if (info.attr[4] !== 'a') throw new StoragePoolException(this.what(`volume ${this.pool.vg}/${cur} not active`));
      return true;
    });
  }

  /** Grows what exists: the running copy while started, the import in progress, the committed data. */
  protected async doResize(size: number): Promise<void> {
    await this.guarded('resize failed', async () => {
      const lvs = await this.recover();
      const grow = async (lv: string | null): Promise<void> => {
        const info = lv ? lvs.get(lv) : undefined;
        if (lv && info && info.size < size) await this.pool.extend(lv, size, this.what('resize'));
      };
      if (this.kind === 'volatile') return grow(this.lv);
      await grow(lvs.has(this.snapLv) ? this.snapLv : null);
      if (this.save_on_stop) await grow(this.currentLv(lvs));
    });
  }

  protected async doRevisions(): Promise<Revision[]> {
    if (!this.save_on_stop) return [];
    return this.guarded('listing revisions failed', async () =>
      this.revisionLvs(await this.pool.lvs()).map((r) => ({ id: r.id, time: isoOfSeconds(r.seconds) })),
    );
  }

  /**
   * The current data becomes the newest revision (so the revert can be
   * undone), then the revision reverted to becomes LV.
   */
  protected async doRevert(revision: string): Promise<void> {
    await this.guarded('revert failed', async () => {
      const lvs = await this.recover();
      const target = this.revisionLvs(lvs).find((r) => r.id === revision);
      if (!target) throw new StoragePoolException(this.what(`revision ${revision} vanished`));
      if (lvs.has(this.lv)) {
        await this.pool.rename(this.lv, this.nextRevisionLv(lvs), this.what('revert'));
        failpoint(FP.revertAfterBackup);
      }
      await this.pool.rename(target.lv, this.lv, this.what('revert'));
      await this.prune(await this.pool.lvs());
    });
  }

  /** Where the committed data is: this volume's current LV, a snapshot's source's. */
  private committedLv(lvs: Map<string, LvInfo>): string | null {
    if (this.kind === 'snapshot') return (this.source as LvmThinVolume).currentLv(lvs);
    return this.currentLv(lvs);
  }

  /** A copy of the committed data in a sparse file (LV is not written while the domain runs: it writes LV-snap). */
  protected async doExport(): Promise<string> {
    return this.guarded('export failed', async () => {
      if (this.kind === 'volatile') throw new StoragePoolException(this.what('nothing to export (a volatile volume keeps no data)'));
      const lvs = await this.recover();
      const lv = this.committedLv(lvs);
      if (!lv) throw new StoragePoolException(this.what('nothing to export (no committed data)'));
      return this.exports.make(this.pool.tmpFile(), (file) => copyDeviceToFile(this.pool.devPath(lv), file));
    });
  }

  protected doExportEnd(p: string): Promise<void> {
    return this.exports.end(p, this.where, (f) => this.guarded('ending the export failed', () => fs.rm(f, { force: true })));
  }

  /** The LV is read straight into the sink (exportInto): no copy in the temp directory first. */
  override get readsExportsItself(): boolean {
    return true;
  }

  /**
   * The committed LV read in order, each run of non-zero 64 KiB blocks
   * handed to the sink as it is read. The volume's lock (exportInto) keeps a
   * stop from renaming LV-snap over LV meanwhile; the sink's own failures
   * pass through unworded.
   */
  protected override async doExportInto(sink: ExportSink, signal?: AbortSignal): Promise<void> {
    const dev = await this.guarded('export failed', async () => {
      if (this.kind === 'volatile') throw new StoragePoolException(this.what('nothing to export (a volatile volume keeps no data)'));
      const lv = this.committedLv(await this.recover());
      if (!lv) throw new StoragePoolException(this.what('nothing to export (no committed data)'));
      return this.pool.devPath(lv);
    });
    await readDeviceInto(dev, sink, signal, (what, fn) => this.guarded(what, fn));
  }

  /** LV-import of `size` bytes, whose device the caller writes (a new thin volume reads as zeros). */
  protected async doImportData(size: number): Promise<string> {
    return this.guarded('import failed', async () => {
      const lvs = await this.recover();
      if (lvs.has(this.importLv)) throw new StoragePoolException(this.what('an import is already in progress'));
      this.pool.importing.add(this.lv);
      try {
        await this.pool.createThin(this.importLv, size, this.what('import'));
      } catch (e) {
        this.pool.importing.delete(this.lv);
        throw e;
      }
      return this.pool.devPath(this.importLv);
    });
  }

  protected async doImportDataEnd(success: boolean): Promise<void> {
    await this.guarded('import failed', async () => {
      try {
        const lvs = await this.pool.lvs();
        if (!lvs.has(this.importLv)) throw new StoragePoolException(this.what('no import in progress'));
        const node = await deviceSize(this.pool.devPath(this.importLv));
        if (!success || node === null) {
          await this.pool.remove([this.importLv], this.what('dropping the import'));
          if (success) throw new StoragePoolException(this.what(`the imported data vanished (${this.pool.devPath(this.importLv)} is gone)`));
          return;
        }
        await this.commitFrom(this.importLv, lvs);
      } finally {
        this.pool.importing.delete(this.lv);
      }
    });
  }

  /**
   * A copy of `src`'s committed data: from the same thin pool, a thin
   * snapshot of its LV (no data copied, as Qubes does); from elsewhere, its
   * export written into a new LV-import. Then committed as an import.
   */
  protected async doImportVolume(src: Volume, srcPath: string): Promise<void> {
    await this.guarded(`copy from ${src.vid} failed`, async () => {
      const lvs = await this.recover();
      if (lvs.has(this.importLv)) throw new StoragePoolException(this.what('an import is in progress'));
      this.pool.importing.add(this.lv);
      try {
        const same = src instanceof LvmThinVolume && src.pool.vg === this.pool.vg && src.pool.thinPool === this.pool.thinPool;
        const from = same ? src.committedLv(lvs) : null;
        if (from) {
          await this.pool.snapshot(from, this.importLv, this.what('copy'));
          failpoint(FP.importAfterCreate);
        } else {
          const size = (await fs.stat(srcPath)).size;
          await this.pool.createThin(this.importLv, size, this.what('copy'));
          failpoint(FP.importAfterCreate);
          await copyFileToDevice(srcPath, this.pool.devPath(this.importLv), size);
        }
        await this.commitFrom(this.importLv, await this.pool.lvs());
      } catch (e) {
        await this.pool.remove((await this.pool.lvs().catch(() => new Map())).has(this.importLv) ? [this.importLv] : [], this.what('dropping the copy')).catch(() => undefined);
        throw e;
      } finally {
        this.pool.importing.delete(this.lv);
      }
    });
  }

  /** save_on_stop volumes started and not stopped: the running copy exists (Qubes: never for the other kinds). */
  protected async doIsDirty(): Promise<boolean> {
    return this.guarded('reading its state failed', async () => {
      const lvs = await this.pool.lvs();
      return this.kind === 'volatile' ? false : this.save_on_stop && lvs.has(this.snapLv);
    });
  }

  private outdatedIn(lvs: Map<string, LvInfo>): boolean {
    if (!this.snap_on_start) return false;
    const snap = lvs.get(this.snapLv);
    if (!snap) return false; // not running: the next start takes the current source
    // The running copy was taken of the source's LV; a commit of the source renamed that LV away (or removed it).
    return snap.origin !== (this.source as LvmThinVolume).currentLv(lvs);
  }

  protected async doIsOutdated(): Promise<boolean | null> {
    return this.guarded('reading its state failed', async () => this.outdatedIn(await this.pool.lvs()));
  }

  /** The committed data's LV carries its size (see Volume.storedSize). */
  override async storedSize(): Promise<number | null> {
    if (this.kind !== 'origin') return null;
    const lvs = await this.pool.lvs().catch(() => null);
    const cur = lvs ? this.currentLv(lvs) : null;
    return cur ? (lvs!.get(cur)?.size ?? null) : null;
  }

  private usageIn(lvs: Map<string, LvInfo>): number {
    const lv = lvs.has(this.runLv) ? this.runLv : this.save_on_stop ? this.currentLv(lvs) : null;
    return (lv ? lvs.get(lv)?.usage : 0) ?? 0;
  }

  /** Bytes of the thin pool the volume maps (lvs data_percent of its size), read now. */
  protected async doUsage(): Promise<number> {
    return this.guarded('reading its usage failed', async () => this.usageIn(await this.pool.scan()));
  }
}

function allZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

/** The device's data into a new sparse file of the device's size (all-zero 64 KiB blocks left as holes). */
async function copyDeviceToFile(dev: string, file: string): Promise<void> {
  const size = await deviceSize(dev);
  if (size === null) throw new StoragePoolException(`${dev} is not an active block device`);
  const src = await fs.open(await fs.realpath(dev), fsc.O_RDONLY);
  try {
    const out = await fs.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    try {
      await out.truncate(size);
      const buf = Buffer.alloc(CHUNK);
      for (let off = 0; off < size; off += CHUNK) {
        const len = Math.min(CHUNK, size - off);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await src.read(buf, got, len - got, off + got);
          if (bytesRead === 0) throw new StoragePoolException(`${dev}: short read at ${off + got} of ${size} bytes`);
          got += bytesRead;
        }
        for (let o = 0; o < len; o += BLOCK) {
          const e = Math.min(o + BLOCK, len);
          if (!allZero(buf, o, e)) await out.write(buf, o, e - o, off + o);
        }
      }
    } finally {
      await out.close();
    }
  } finally {
    await src.close();
  }
}

/**
 * The device's data handed to `sink` (ExportSink): its size, then each run
 * of non-zero 64 KiB blocks (regionsIntoSink: 4 MiB reads, one ahead), then
 * end. Errors of the device go through `device` (worded as the volume's);
 * the sink's pass through.
 */
async function readDeviceInto(
  dev: string,
  sink: ExportSink,
  signal: AbortSignal | undefined,
  device: <T>(what: string, fn: () => Promise<T>) => Promise<T>,
): Promise<void> {
  const { src, size } = await device('export failed', async () => {
    const size = await deviceSize(dev);
    if (size === null) throw new StoragePoolException(`${dev} is not an active block device`);
    return { src: await fs.open(await fs.realpath(dev), fsc.O_RDONLY), size };
  });
  try {
    const read = (from: number, to: number, into: Buffer): Promise<Buffer> =>
      device('export failed', async () => {
        const buf = into.subarray(0, to - from);
        for (let got = 0; got < buf.length; ) {
          const { bytesRead } = await src.read(buf, got, buf.length - got, from + got);
          if (bytesRead === 0) throw new StoragePoolException(`${dev}: short read at ${from + got} of ${size} bytes`);
          got += bytesRead;
        }
        return buf;
      });
    await sink.begin(size);
    await regionsIntoSink([[0, size]], read, sink, signal, BLOCK);
    await sink.end();
  } finally {
    await src.close();
  }
}

/** The file's first `size` bytes into a new thin volume (which reads as zeros: only data is written), synced. */
async function copyFileToDevice(file: string, dev: string, size: number): Promise<void> {
  const src = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const out = await fs.open(await fs.realpath(dev), fsc.O_WRONLY);
    try {
      const buf = Buffer.alloc(CHUNK);
      for (let off = 0; off < size; off += CHUNK) {
        const len = Math.min(CHUNK, size - off);
        buf.fill(0, 0, len);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await src.read(buf, got, len - got, off + got);
          if (bytesRead === 0) break; // past the file's end: zeros
          got += bytesRead;
        }
        for (let o = 0; o < len; o += BLOCK) {
          const e = Math.min(o + BLOCK, len);
          if (!allZero(buf, o, e)) await out.write(buf, o, e - o, off + o);
        }
      }
      await out.sync();
    } finally {
      await out.close();
    }
  } finally {
    await src.close();
  }
}
