/**
 * An rbd volume. Images of volume VID (N = prefix + VID with '/' as '='):
 *
 *   N             origin volumes: the data. While the domain runs it writes N
 *                 itself (in place, as a hypervisor attaches an RBD image).
 *   N@qs-start    snapshot taken at start: the committed (pre-start) data,
 *                 what export reads and snapshots of this volume clone
 *   N@qs-rev-ID-YYYYMMDDTHHMMSSZ   revision ID, committed at that UTC time
 *   N@qs-base-RAND  a snapshot of the committed data a running snapshot
 *                 volume of another domain is cloned from
 *   N@qs-import-old / qs-import-done   an import in progress / finished
 *   N@qs-pre-revert-TIME   a revert begun: the current data, which becomes
 *                 the newest revision once the target is marked
 *   N@qs-reverting-ID-TIME   a revert in progress (the target revision)
 *   N@qs-export-RAND   an export being read
 *   N~snap        snapshot volumes, while running: a layered clone (clone v2)
 *                 of the source's qs-start or qs-base-* snapshot
 *   N~volatile    volatile volumes, while running: an empty image
 *
 * Image metadata `qubes.generation` of N counts its commits; a running clone
 * records the generation it was cloned from in `qubes.source-generation`:
 * is_outdated compares the two.
 *
 * A running volume's image (N, N~snap, N~volatile) holds the RBD advisory
 * exclusive lock `qubes:HOST` (HOST = the pool's host_id): another host is
 * refused with the holder's name; a lock of this host found at start is what
 * a crash left (the domain's data is kept). A lock of another host is broken
 * only when the pool's `break_stale_locks` names that host, or through
 * `breakLock()` (both explicit: that host must be known dead).
 *
 * Images are made with the `layering` feature only: the RBD exclusive-lock
 * feature takes the same header lock as the advisory lock held for the whole
 * run, and would make every write of the running domain fail.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { declareFailpoint, failpoint } from '../../files/failpoint.js';
import { StoragePoolException, storageErrnoError } from '../../storage/errors.js';
import { ExportFiles } from '../../storage/export-files.js';
import type { ExportSink } from '../../storage/export-sink.js';
import { forEachDataRun } from '../../files/sparse-writer.js';
import type { ImportWriter } from '../../storage/import-writer.js';
import { Volume, type DomainRef, type Revision, type VolumeSpec } from '../../storage/volume.js';
import { EBUSY, EEXIST, ENOENT, ENOTEMPTY, IO_CHUNK, RbdError, isErrno, type ImageHeader, type Locker, type RbdClient, type RbdImage, type SnapInfo } from './librbd.js';
import type { RbdPool } from './pool.js';

/** Crash points (QUBES_STORAGE_FAILPOINTS): test/drivers/rbd/crash.ts kills a process at each. */
export const RBD_FAILPOINTS = {
  startAfterLock: declareFailpoint('rbd.start.after-lock'),
  startAfterBaseSnapshot: declareFailpoint('rbd.start.after-base-snapshot'),
  stopAfterRename: declareFailpoint('rbd.stop.after-rename'),
  importAfterOldSnapshot: declareFailpoint('rbd.import.after-old-snapshot'),
  importAfterDiff: declareFailpoint('rbd.import.after-diff'),
  revertAfterBackup: declareFailpoint('rbd.revert.after-backup'),
  revertAfterRename: declareFailpoint('rbd.revert.after-rename'),
};
const FP = RBD_FAILPOINTS;
const REV_RE = /^qs-rev-([1-9][0-9]{0,15})-(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
const REVERTING_RE = /^qs-reverting-/;
const PRE_REVERT_RE = /^qs-pre-revert-/;
const REVERTING_ID_RE = /^qs-reverting-([1-9][0-9]{0,15})-/;
const GEN_KEY = 'qubes.generation';
const SRC_GEN_KEY = 'qubes.source-generation';
const LOCK_PREFIX = 'qubes:';

type Snap = SnapInfo;
type Lock = Locker;
/** What takes and breaks advisory locks: an open image, or its header object (no open). */
type Lockable = Pick<RbdImage, 'lockers' | 'lockExclusive' | 'lockBreak'>;
interface ImageInfo {
  size: number;
  parent: { pool: string; image: string; snapshot: string } | null;
}
/** Zero detection granularity of imports and exports (the sparse unit of the copies). */
const BLOCK = 64 * 1024;
/** Reads or writes in flight during an import or export (koffi runs them on its worker threads). */
const IN_FLIGHT = 4;

function utcStamp(d = new Date()): { compact: string; iso: string } {
  const iso = d.toISOString().replace(/\.\d+Z$/, 'Z');
  return { iso, compact: iso.replace(/[-:]/g, '') };
}

function rand(): string {
  return randomBytes(6).toString('hex');
}

export class RbdVolume extends Volume {
  declare readonly pool: RbdPool;
  /** The image of an origin's data (and the name other images of this volume derive from). */
  readonly image: string;
  /** Export files handed out by this object. */
  private readonly exports = new ExportFiles();
  private importFile: string | null = null;
  /** An import streamed into N through importWriter, until importDataEnd: recover() leaves its marker alone. */
  private importStream: { fresh: boolean } | null = null;

  constructor(pool: RbdPool, domain: DomainRef | null, vid: string, spec: VolumeSpec) {
    super(pool, domain, vid, spec);
    this.image = pool.imageOf(vid);
  }

  private get rbd(): RbdClient {
    return this.pool.rbd;
  }
  private get lockId(): string {
    return LOCK_PREFIX + this.pool.hostId;
  }

  /** The image the domain uses while running. */
  get runImage(): string {
    if (this.snap_on_start) return `${this.image}~snap`;
    if (this.kind === 'volatile') return `${this.image}~volatile`;
    return this.image;
  }
  /** origin_snapshot: where the committed data waits while the stop puts the new data in its place. */
  private get asideImage(): string {
    return `${this.image}~old`;
  }

  private what(action: string): string {
    return `${this.where}: ${action}`;
  }

  private async guarded<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      // Out of space or quota, EIO, read-only: in the Ceph cluster (librbd's errno) or in tmp_dir.
      const mapped = storageErrnoError(this.what(action), e);
      if (mapped) throw mapped;
      if (e instanceof RbdError) throw new StoragePoolException(this.what(`${action}: ${e.message}`), { cause: e });
      if (e instanceof StoragePoolException) throw e;
      throw new StoragePoolException(this.what(`${action}: ${String(e)}`), { cause: e });
    }
  }

  // ---- small calls -------------------------------------------------------

  // Looks that change nothing open read-only (no watch) outside an operation's session.
  private async imageInfo(image: string): Promise<ImageInfo | null> {
    return this.rbd.withImageIfAny(image, async (i) => ({ size: await i.size(), parent: await i.parent() }), true);
  }

  private async snaps(image: string): Promise<Snap[]> {
    return (await this.rbd.withImageIfAny(image, (i) => i.snaps(), true)) ?? [];
  }

  private async locks(image: string): Promise<Lock[]> {
    return (await this.rbd.withImageIfAny(image, (i) => i.lockers(), true)) ?? [];
  }

  private async snapRm(image: string, snap: string): Promise<void> {
    try {
      await this.rbd.withImage(image, (i) => i.snapRemove(snap));
    } catch (e) {
      if (!isErrno(e, ENOENT)) throw e;
    }
  }

  private async snapCreate(image: string, snap: string): Promise<void> {
    await this.rbd.withImage(image, (i) => i.snapCreate(snap));
  }
  private async snapRename(image: string, from: string, to: string): Promise<void> {
    await this.rbd.withImage(image, (i) => i.snapRename(from, to));
  }
  private async snapRollback(image: string, snap: string): Promise<void> {
    await this.rbd.withImage(image, (i) => i.snapRollback(snap));
  }
  private async removeImage(image: string): Promise<void> {
    try {
      await this.rbd.remove(image);
    } catch (e) {
      if (!isErrno(e, ENOENT)) throw e;
    }
  }

  private async getMeta(image: string, key: string): Promise<string | null> {
    return this.rbd.withImageIfAny(image, (i) => i.metaGet(key), true);
  }

  /** The commit generation of this (origin) volume's data. */
  async generation(): Promise<string> {
    return (await this.getMeta(this.image, GEN_KEY)) ?? '0';
  }

  private async bumpGeneration(): Promise<void> {
    await this.rbd.withImage(this.image, async (i) => {
      const next = String(Number((await i.metaGet(GEN_KEY)) || '0') + 1);
      await i.metaSet(GEN_KEY, next);
    });
  }

  /** "host B (lock qubes:B, client.4123 at 127.0.0.1:0/123)" */
  private static holder(l: Lock): string {
    const host = l.id.startsWith(LOCK_PREFIX) ? `host ${l.id.slice(LOCK_PREFIX.length)}` : `a non-Qubes client`;
    return `${host} (lock ${l.id}, ${l.locker} at ${l.address})`;
  }

  /**
   * Takes this host's lock on `image`. Resolves 'new' when taken now, 'ours'
   * when this host already held it (a crash while running). Another host's
   * lock is broken only when break_stale_locks names that host.
   */
  private async lock(image: string): Promise<'new' | 'ours'> {
    // On the header object: no open (a round trip) and no close.
    return this.lockOn(await this.rbd.header(image));
  }

  private async lockOn(i: Lockable): Promise<'new' | 'ours'> {
    {
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await i.lockExclusive(this.lockId);
          return 'new';
        } catch (e) {
          if (!isErrno(e, EBUSY) && !isErrno(e, EEXIST)) throw e;
        }
        const held = await i.lockers();
        if (held.length === 0) continue; // released meanwhile
        if (held.some((l) => l.id === this.lockId)) return 'ours';
        await this.breakStaleOrRefuse(i, held[0]!);
      }
      throw new StoragePoolException(this.what('could not take the lock (it keeps changing hands)'));
    }
  }

  private async unlock(image: string): Promise<void> {
    await this.rbd.withImageIfAny(image, async (i) => {
      // Our own lock (taken by this or an earlier connection of this host): no fencing.
      for (const l of await i.lockers()) if (l.id === this.lockId) await i.lockBreak(l, false);
    });
  }

  /** Refuses when another host holds `image`. */
  private async checkNotForeign(image: string, action: string): Promise<Lock[]> {
    const held = await this.locks(image);
    const other = held.find((l) => l.id !== this.lockId);
    if (other) throw new StoragePoolException(this.what(`cannot ${action}: in use by ${RbdVolume.holder(other)}`));
    return held;
  }

  /** Before a start: like checkNotForeign, but breaks the lock of the host named by break_stale_locks. */
  private async checkStartable(image: string): Promise<void> {
    await this.rbd.withImageIfAny(image, async (i) => {
      for (const l of await i.lockers()) if (l.id !== this.lockId) await this.breakStaleOrRefuse(i, l);
    });
  }

  /** Another host's lock: broken (its client fenced) when break_stale_locks names that host, else the volume is in use. */
  private async breakStaleOrRefuse(i: Lockable, l: Lock): Promise<void> {
    const host = l.id.startsWith(LOCK_PREFIX) ? l.id.slice(LOCK_PREFIX.length) : null;
    if (host === null || host !== this.pool.breakLocksOf)
      throw new StoragePoolException(
        this.what(
          `in use by ${RbdVolume.holder(l)}; if that host is dead, break its lock explicitly ` +
            `(pool option break_stale_locks=${host ?? l.id}, or RbdVolume.breakLock)`,
        ),
      );
    await i.lockBreak(l, true);
  }

  /**
   * The explicit forced operation for a host that died while running this
   * volume: breaks every lock of another host on this volume's running image
   * (and blocklists the client that took it). Returns the holders broken.
   */
  async breakLock(): Promise<string[]> {
    return this.locked(() =>
      this.guarded('breaking the lock failed', async () => {
        const broken: string[] = [];
        await this.rbd.withImageIfAny(this.runImage, async (i) => {
          for (const l of await i.lockers()) {
            if (l.id === this.lockId) continue;
            await i.lockBreak(l, true);
            broken.push(RbdVolume.holder(l));
          }
        });
        return broken;
      }),
    );
  }

  /** Who holds the running image's lock, or null. */
  async lockHolder(): Promise<string | null> {
    const l = (await this.locks(this.runImage))[0];
    return l ? RbdVolume.holder(l) : null;
  }

  /**
   * Names of this host's base snapshots (see baseSnapName): only this daemon
   * makes and removes them. Group 1: the generation the base holds (names
   * made before bases were reused carry none).
   */
  private ownBaseRe(): RegExp {
    const host = this.pool.hostId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return new RegExp(`^qs-base-${host}-(?:g([0-9]{1,16})-)?[0-9a-f]{12}$`);
  }
  /**
   * A new base snapshot name: this host's id in it, so a leftover is known as
   * ours, and the generation of the data it holds, so it is known as current.
   */
  private baseSnapName(gen: string): string {
    return `qs-base-${this.pool.hostId}-g${gen}-${rand()}`;
  }

  /**
   * This host's base snapshot that still holds this (origin) image's
   * committed data, or null. A base is kept after the clones made from it
   * stop, and reused by the next clone while it is current:
   * - it names the image's current generation (every commit counts one:
   *   stop, import, revert, shrink, each before the image is unlocked or its
   *   markers removed), and
   * - the image is not running (unlocked: a running source's committed data
   *   is its qs-start), and
   * - it has the image's size (a grown source: a clone of it has the new
   *   size, as one made from the source now would), and
   * - no snapshot was taken after it (ids only grow) other than bases and
   *   exports, which change nothing: a start, an import, a revert or a shrink
   *   of any host takes one before it changes the data, so even a change
   *   whose count a crash cut off is seen.
   * This host's own changes of the image remove its bases anyway (recover()).
   */
  private currentBase(s: Snap[], gen: string, locked: boolean, size: number): Snap | null {
    if (locked) return null;
    const re = this.ownBaseRe();
    const own = s.filter((x) => re.exec(x.name)?.[1] === gen).sort((a, b) => b.id - a.id)[0];
    if (!own || own.size !== size) return null;
    const later = s.some((x) => x.id > own.id && !x.name.startsWith('qs-base-') && !x.name.startsWith('qs-export-'));
    return later ? null : own;
  }

  /**
   * Removes this host's base snapshots on this (origin) image. One a running
   * clone uses goes to the RBD trash (clone v2) and disappears with its last
   * clone; one that none uses is what a crash between the snapshot and the
   * clone left. Called under this volume's lock of this process, so no start
   * of ours is between its snapshot and its clone.
   */
  private async dropOwnBases(s: Snap[]): Promise<boolean> {
    const re = this.ownBaseRe();
    const own = s.filter((x) => re.test(x.name));
    if (own.length === 0) return false;
    await this.rbd.withImage(this.image, async (i) => {
      for (const x of own)
        await i.snapRemove(x.name).catch((e: unknown) => {
          if (!isErrno(e, ENOENT) && !isErrno(e, EBUSY)) throw e; // EBUSY: protected for a v1 clone
        });
    });
    return true;
  }

  // ---- recovery ------------------------------------------------------------

  /**
   * Finishes or undoes what an interrupted operation left on N:
   * - qs-import-done present: the import completed; finish the commit;
   * - qs-import-old alone: the import did not complete; roll back to it;
   * - qs-pre-revert-* alone: a revert cut off before it marked its target:
   *   the data is unchanged, drop it (as a revision it would have counted
   *   in the prune and cost the oldest revision);
   * - qs-pre-revert-* with qs-reverting-*: it becomes the newest revision;
   * - qs-reverting-*: roll back to it (again) and drop it;
   * - qs-base-HOST-*: this host's base snapshots (a start cut off between the
   *   snapshot and the clone leaves one);
   * - origin_snapshot: N~old (a stop cut off while putting the new data in place).
   * Also prunes revisions past revisions_to_keep.
   */
  private async recover(snaps?: Snap[]): Promise<Snap[]> {
    if (this.kind === 'origin_snapshot') {
      await this.finishSetAside();
      return [];
    }
    if (this.kind !== 'origin') return [];
    let s = snaps ?? (await this.snaps(this.image));
    if (this.importFile === null && this.importStream === null) {
      const done = s.some((x) => x.name === 'qs-import-done');
      const old = s.some((x) => x.name === 'qs-import-old');
      if (done) await this.finishImport(s);
      else if (old) await this.undoImport();
      if (done || old) s = await this.snaps(this.image);
    }
    const reverting = s.find((x) => REVERTING_RE.test(x.name));
    const preRevert = s.find((x) => PRE_REVERT_RE.test(x.name));
    if (preRevert) {
      if (reverting) await this.rbd.withImage(this.image, (i) => i.snapRename(preRevert.name, this.nextRevisionName(s)));
      else await this.snapRm(this.image, preRevert.name);
      s = await this.snaps(this.image);
    }
    if (reverting) {
      await this.snapRollback(this.image, reverting.name);
      await this.snapRm(this.image, reverting.name);
      await this.bumpGeneration();
      s = await this.snaps(this.image);
    }
    if (await this.dropOwnBases(s)) s = await this.snaps(this.image);
    await this.prune(s);
    return s;
  }

  private revisionSnaps(s: Snap[]): { snap: Snap; id: number; time: string }[] {
    const out: { snap: Snap; id: number; time: string }[] = [];
    for (const x of s) {
      const m = REV_RE.exec(x.name);
      if (m) out.push({ snap: x, id: Number(m[1]), time: `${m[2]}-${m[3]}-${m[4]}T${m[5]}:${m[6]}:${m[7]}Z` });
    }
    return out.sort((a, b) => a.id - b.id);
  }

  private nextRevisionName(s: Snap[]): string {
    let last = this.revisionSnaps(s).at(-1)?.id ?? 0;
    // A revert's target, while marked, still holds its id: never given again.
    for (const x of s) {
      const m = REVERTING_ID_RE.exec(x.name);
      if (m) last = Math.max(last, Number(m[1]));
    }
    return `qs-rev-${last + 1}-${utcStamp().compact}`;
  }

  /** Removes the oldest revisions past revisions_to_keep (a revision a clone uses goes to the RBD trash until the clone is gone). */
  private async prune(s: Snap[]): Promise<void> {
    const keep = Math.max(this.revisions_to_keep, 0);
    const revs = this.revisionSnaps(s);
    if (revs.length <= keep) return;
    await this.rbd.withImage(this.image, async (i) => {
      while (revs.length > keep)
        await i.snapRemove(revs.shift()!.snap.name).catch((e: unknown) => {
          if (!isErrno(e, ENOENT)) throw e;
        });
    });
  }

  /**
   * Prunes in the background, after the operation returned (a snapshot
   * removal is a monitor round trip: off the stop's path). The job takes this
   * volume's lock, so it never runs beside a start, revert, import or remove
   * of this process, and lists the snapshots afresh under it: it removes only
   * what is past revisions_to_keep then. A crash before it ran leaves one
   * revision too many, which the next operation (recover) or the next stop's
   * job removes. Volume.revisions() waits for it.
   */
  private pruneLater(): void {
    this.pool.queuePrune(this.vid, (started) =>
      this.locked(async () => {
        started();
        // One writable open for the list and the removals (the job is queued only when something is past the limit).
        await this.guarded('pruning revisions failed', () => this.rbd.session(async () => this.prune(await this.snaps(this.image))));
      }),
    );
  }

  /** The revisions, once a prune queued by a stop has run (see pruneLater). */
  override async revisions(): Promise<Revision[]> {
    await this.pool.pruneOf(this.vid);
    return super.revisions();
  }

  // ---- the contract --------------------------------------------------------

  override async path(): Promise<string> {
    return this.blockPath(this.runImage);
  }

  /**
   * What a hypervisor attaches: QEMU's rbd: syntax (its rbd driver, Debian's
   * qemu-block-extra, opens the image itself: no local map),
   * rbd:POOL/[NAMESPACE/]IMAGE[:id=..][:conf=..][:keyring=..]. QEMU splits
   * the name at `:` and `@` and takes `\` as an escape: each part is escaped.
   */
  blockPath(image: string): string {
    const t = this.rbd.target;
    const esc = (s: string): string => s.replace(/[\\:@]/g, (c) => `\\${c}`);
    let p = `rbd:${esc(this.rbd.spec(image))}`;
    if (t.clientId) p += `:id=${esc(t.clientId)}`;
    if (t.conf) p += `:conf=${esc(t.conf)}`;
    if (t.keyring) p += `:keyring=${esc(t.keyring)}`;
    return p;
  }

  protected async doCreate(): Promise<void> {
    if (this.kind !== 'origin') return; // made at start (origin_snapshot: its data at the first stop)
    await this.guarded('create failed', async () => {
      try {
        await this.rbd.create(this.image, this.size);
      } catch (e) {
        if (isErrno(e, EEXIST)) throw new StoragePoolException(this.what(`already exists (image ${this.image})`));
        throw e;
      }
    });
  }

  /** Removes an image with its snapshots (clone v2: a snapshot with clones goes to the trash). */
  private async removeWithSnaps(image: string): Promise<void> {
    await this.rbd.withImageIfAny(image, async (i) => {
      for (const x of await i.snaps())
        await i.snapRemove(x.name).catch((e: unknown) => {
          if (!isErrno(e, ENOENT)) throw e;
        });
    });
    try {
      await this.removeImage(image);
    } catch (e) {
      if (!isErrno(e, ENOTEMPTY)) throw e;
      // Snapshots left in the trash namespace: clones of them still in the RBD trash
      // (stopped volumes whose objects are being deleted): finish those, then again.
      await this.rbd.settled();
      await this.pool.purgeHelperTrash();
      await this.removeImage(image);
    }
  }

  protected async doRemove(): Promise<void> {
    await this.guarded('remove failed', async () => {
      if (this.runImage !== this.image) await this.dropRunImage();
      if (this.kind === 'origin_snapshot') {
        await this.checkNotForeign(this.image, 'remove');
        await this.removeWithSnaps(this.asideImage);
        await this.removeWithSnaps(this.image);
        return;
      }
      if (this.kind !== 'origin') return;
      await this.checkNotForeign(this.image, 'remove');
      await this.unlock(this.image);
      await this.removeWithSnaps(this.image);
    });
  }

  /**
   * Removes the running image of a snapshot or volatile volume. The source's
   * base snapshot it was cloned from stays: while current, the next start
   * reuses it (see currentBase); otherwise the next start of a snapshot of
   * that source, or the source's next operation, removes it.
   */
  private async dropRunImage(later = false): Promise<boolean> {
    const img = this.runImage;
    // No open: the header object's locks (refuse another host's, release ours), and the id for the removal.
    let h: ImageHeader;
    try {
      h = await this.rbd.header(img);
    } catch (e) {
      if (!isErrno(e, ENOENT)) throw e;
      return false;
    }
    const held = await h.lockers();
    const other = held.find((l) => l.id !== this.lockId);
    if (other) throw new StoragePoolException(this.what(`cannot stop: in use by ${RbdVolume.holder(other)}`));
    for (const l of held) await h.lockBreak(l, false);
    const id = h.id;
    // Out of the names (at once, or just after the stop returned: `later`), its objects deleted in the
    // background (pool.sweepLeftovers finishes a cut-off one).
    await this.rbd.discard(img, id, later).catch((e: unknown) => {
      if (!isErrno(e, ENOENT)) throw e;
    });
    return true;
  }

  /** The qs-base snapshot a clone was made from, once the clone is gone or committed (other clones may still use it: then it goes to the trash). */
  private async dropBaseOf(info: ImageInfo): Promise<void> {
    const parent = info.parent;
    if (parent && parent.snapshot.startsWith('qs-base-') && this.source) {
      const src = this.source as RbdVolume;
      await src.snapRm(src.image, parent.snapshot).catch(() => undefined);
    }
  }

  // Start and stop each open an image once, however many steps look at it (RbdClient.session).
  override start(): Promise<void> {
    return this.rbd.session(() => super.start());
  }
  override stop(): Promise<void> {
    return this.rbd.session(() => super.stop());
  }

  protected async doStart(): Promise<void> {
    await this.guarded('start failed', async () => {
      if (this.snap_on_start) return this.startSnapshot();
      if (this.kind === 'volatile') return this.startVolatile();
      return this.startOrigin();
    });
  }

  private async startOrigin(): Promise<void> {
    const s = await this.recover();
    const opened = await this.rbd.withImageIfAny(this.image, async (i) => {
      const how = await this.lockOn(i);
      failpoint(FP.startAfterLock);
      if (this.revisions_to_keep === -1) return true; // written in place, no snapshot
      if (how === 'ours' && s.some((x) => x.name === 'qs-start')) return true; // uncommitted data from before a crash: keep it
      if (!s.some((x) => x.name === 'qs-start')) {
        try {
          await i.snapCreate('qs-start');
        } catch (e) {
          if (how === 'new') for (const l of await i.lockers().catch(() => [])) if (l.id === this.lockId) await i.lockBreak(l, false).catch(() => undefined); // a failed start starts nothing
          throw e;
        }
      }
      return true;
    });
    if (!opened) throw new StoragePoolException(this.what(`missing image ${this.image} (volume not created?)`));
  }

  private async startVolatile(): Promise<void> {
    const img = this.runImage;
    try {
      await this.rbd.create(img, this.size); // no look first: an image there is the rare case
    } catch (e) {
      if (!isErrno(e, EEXIST)) throw e;
      await this.checkStartable(img); // another host's: refused
      await this.dropRunImage(); // ours, from before a crash: start afresh
      await this.rbd.create(img, this.size);
    }
    await this.lock(img);
  }

  private async startSnapshot(): Promise<void> {
    const src = this.source as RbdVolume;
    const img = this.runImage;
    if (this.kind === 'origin_snapshot') await this.recover();
    // No look for the clone first: one there (EEXIST) is the rare case, a crash's or another host's.
    try {
      await this.cloneSource(src, img);
    } catch (e) {
      if (!isErrno(e, EEXIST)) throw e;
      await this.checkStartable(img);
      // origin_snapshot: uncommitted data from before a crash: keep it (as an origin does).
      if (this.kind === 'origin_snapshot') {
        await this.lock(img);
        return;
      }
      await this.dropRunImage(); // ours, from before a crash: a snapshot starts afresh
      await this.cloneSource(src, img);
    }
  }

  /** Clones the source's committed data into `img`, locked, with the source generation recorded. */
  private async cloneSource(src: RbdVolume, img: string): Promise<void> {
    // Under the source's lock (this process), so it does not commit between our reads.
    await this.pool.locks.run(src.vid, async () => {
      // A read-only look at the source (no watch): its state, and a current base snapshot to reuse.
      const look = await src.rbd.withImageIfAny(
        src.image,
        async (si) => {
          const [srcSnaps, lockers, g, srcSize] = await together(si.snaps(), si.lockers(), si.metaGet(GEN_KEY), si.size());
          const gen = g ?? '0';
          const srcLocked = lockers.length > 0;
          if (srcLocked && src.revisions_to_keep !== -1 && srcSnaps.some((x) => x.name === 'qs-start'))
            return { base: 'qs-start', gen, stale: [], baseSize: sizeOf(srcSnaps, 'qs-start') }; // the source runs: its committed data is its start snapshot
          if (importing(srcSnaps)) return { base: 'qs-import-old', gen, stale: [], baseSize: sizeOf(srcSnaps, 'qs-import-old') }; // an import streams into the source: its committed data is set aside
          const current = src.currentBase(srcSnaps, gen, srcLocked, srcSize);
          const re = src.ownBaseRe();
          const stale = srcSnaps.filter((x) => re.test(x.name) && x !== current).map((x) => x.name);
          return { base: current?.name ?? null, gen, stale, baseSize: current?.size ?? null };
        },
        'look',
      );
      if (!look) throw new StoragePoolException(this.what(`source volume ${src.vid} has no data yet`));
      const gen = look.gen;
      let base = look.base;
      if (base === null || look.stale.length > 0) {
        // A writable open: this host's bases that are no longer current go (what a crash or an older
        // version left too; one a running clone uses goes to the trash), and a new one is made if needed.
        base = await src.rbd.withImage(src.image, async (si) => {
          for (const x of look.stale)
            await si.snapRemove(x).catch((e: unknown) => {
              if (!isErrno(e, ENOENT) && !isErrno(e, EBUSY)) throw e; // EBUSY: protected for a v1 clone
            });
          if (look.base !== null) return look.base;
          const made = src.baseSnapName(gen);
          await si.snapCreate(made);
          failpoint(FP.startAfterBaseSnapshot);
          return made;
        });
      }
      // A base made here stays after a failed clone: it is current, the next start reuses it.
      await this.rbd.clone(src.image, base, img);
      try {
        // A snapshot that existed at the look (a kept base, qs-start, qs-import-old) has the size the
        // look saw, the clone's: when that is enough, the clone needs only its lock and the source
        // generation, both written on its header object (no open, no watch, no close).
        const known = base === look.base ? look.baseSize : null;
        if (known !== null && known >= this.size) {
          const h = await this.rbd.header(img);
          await together(this.lockOn(h), h.metaSet(SRC_GEN_KEY, gen));
        } else
          await this.rbd.withImage(img, async (i) => {
            // Independent header updates of a new clone, sent together (a failure removes the clone).
            const [, , size] = await together(this.lockOn(i), i.metaSet(SRC_GEN_KEY, gen), i.size());
            if (size < this.size) await i.resize(this.size);
          });
      } catch (e) {
        await this.dropRunImage().catch(() => undefined);
        throw e;
      }
    });
  }

  protected async doStop(): Promise<void> {
    await this.guarded('stop failed', async () => {
      if (this.kind === 'origin_snapshot') return this.stopOriginSnapshot();
      if (this.kind !== 'origin') {
        // Unlocked now; the move to the trash (a few metadata round trips) after the stop returns:
        // until it is done every call naming the image waits for it (RbdClient.freed). A crash before
        // it leaves the unlocked image, as a crash between the unlock and the move always could: the
        // next start finds it (EEXIST) and replaces it, a remove removes it.
        await this.dropRunImage(true);
        return;
      }
      // One open of the image for the whole commit.
      await this.rbd.withImageIfAny(this.image, async (i) => {
        // The locks, the snapshots and the generation, read together.
        const [held, s, g] = await together(i.lockers(), i.snaps(), i.metaGet(GEN_KEY));
        const other = held.find((l) => l.id !== this.lockId);
        if (other) throw new StoragePoolException(this.what(`cannot stop: in use by ${RbdVolume.holder(other)}`));
        if (!held.some((l) => l.id === this.lockId)) return; // not started: nothing to do
        // The snapshots after the commit, known without listing them again (the image is ours: locked).
        let now = s;
        const commit = async (): Promise<void> => {
          if (!s.some((x) => x.name === 'qs-start')) return;
          if (Math.max(this.revisions_to_keep, 0) > 0) {
            const rev = this.nextRevisionName(s);
            await i.snapRename('qs-start', rev);
            failpoint(FP.stopAfterRename);
            now = s.map((x) => (x.name === 'qs-start' ? { ...x, name: rev } : x));
          } else {
            await i.snapRemove('qs-start');
            now = s.filter((x) => x.name !== 'qs-start');
          }
        };
        // The commit is the rename; the count goes with it (two independent header updates, sent
        // together), both before the unlock: an unlocked image's generation names its data (see
        // currentBase). A crash between the two may count a commit that did not happen (the image
        // stays locked with its qs-start: the next start keeps it); that costs a new base snapshot
        // at the next clone, and never leaves a change uncounted.
        await together(commit(), i.metaSet(GEN_KEY, String(Number(g || '0') + 1)));
        for (const l of held) if (l.id === this.lockId) await i.lockBreak(l, false);
        // The oldest revisions past the limit go after the stop returns (pruneLater); the stop
        // records nothing for it: the list itself says what is past the limit.
        if (this.revisionSnaps(now).length > Math.max(this.revisions_to_keep, 0)) this.pruneLater();
      });
    });
  }

  /**
   * origin_snapshot: the running clone N~snap becomes the committed data N.
   * The old N is set aside as N~old first, then N~snap renamed to N, then
   * N~old removed: a crash anywhere leaves either the old data in N (N~snap
   * still there: the next stop commits it) or the new (N~old removed by the
   * next operation). No revision is kept (see the README).
   */
  private async stopOriginSnapshot(): Promise<void> {
    const run = this.runImage;
    const info = await this.imageInfo(run);
    if (!info) return; // not started: nothing to do
    await this.checkNotForeign(run, 'stop');
    await this.finishSetAside();
    if (await this.imageInfo(this.image)) {
      await this.checkNotForeign(this.image, 'stop');
      await this.rbd.rename(this.image, this.asideImage);
    }
    await this.rbd.rename(run, this.image);
    await this.dropBaseOf(info); // N uses it now: it goes to the RBD trash and disappears with N
    await this.finishSetAside();
    await this.unlock(this.image);
    await this.rbd.withImage(this.image, async (i) => {
      const next = String(Number((await i.metaGet(GEN_KEY)) || '0') + 1);
      await i.metaSet(GEN_KEY, next);
    });
  }

  /** origin_snapshot: a stop cut off after setting the old data aside: put the new in place (when running data waits), then drop the old. */
  private async finishSetAside(): Promise<void> {
    const aside = await this.imageInfo(this.asideImage);
    if (!aside) return;
    if (!(await this.imageInfo(this.image))) {
      if (await this.imageInfo(this.runImage)) {
        await this.rbd.rename(this.runImage, this.image);
        await this.unlock(this.image);
      } else {
        await this.rbd.rename(this.asideImage, this.image); // nothing to commit: the old data stays
        return;
      }
    }
    await this.removeWithSnaps(this.asideImage);
    await this.dropBaseOf(aside);
  }

  /**
   * Whether `image` exists: one OSD read (RbdClient.idObjectExists) instead
   * of an open, which is several (the verify before every start); a "no" is
   * confirmed by an open, so an image without the id object counts too.
   */
  private async exists(image: string): Promise<boolean> {
    return (await this.rbd.idObjectExists(image)) || (await this.imageInfo(image)) !== null;
  }

  protected async doVerify(): Promise<boolean> {
    return this.guarded('verify failed', async () => {
      if (this.snap_on_start) {
        const src = this.source as RbdVolume;
        if (!(await this.exists(src.image))) throw new StoragePoolException(this.what(`source volume ${src.vid} has no image`));
      } else if (this.save_on_stop && !(await this.exists(this.image))) {
        throw new StoragePoolException(this.what(`missing image ${this.image}`));
      }
      return true;
    });
  }

  protected async doResize(size: number): Promise<void> {
    await this.guarded('resize failed', async () => {
      const images = this.kind === 'origin' ? [this.image] : this.kind === 'origin_snapshot' ? [this.image, this.runImage] : [this.runImage];
      for (const img of images) await this.rbd.withImageIfAny(img, (i) => i.resize(size));
    });
  }

  /**
   * Keeping a revision: a snapshot named as the next revision, then a
   * resize allowed to shrink (a rollback to that snapshot restores its size
   * too). A crash between the two leaves the old data with one more revision
   * of it.
   */
  protected override async doShrink(size: number, keepRevision: boolean): Promise<void> {
    if (this.kind !== 'origin') return this.doResize(size); // a volatile keeps nothing: its next start takes the size
    await this.guarded('shrink failed', async () => {
      await this.checkNotForeign(this.image, 'shrink');
      const s = await this.recover();
      if (!(await this.imageInfo(this.image))) throw new StoragePoolException(this.what(`missing image ${this.image} (volume not created?)`));
      await this.rbd.withImage(this.image, async (i) => {
        if (keepRevision) await i.snapCreate(this.nextRevisionName(s));
        await i.resize(size);
      });
      await this.bumpGeneration();
      await this.prune(await this.snaps(this.image));
    });
  }

  protected async doRevisions(): Promise<Revision[]> {
    if (this.kind !== 'origin') return [];
    return this.guarded('listing revisions failed', async () =>
      this.revisionSnaps(await this.snaps(this.image)).map((r) => ({ id: String(r.id), time: r.time })),
    );
  }

  protected async doRevert(revision: string): Promise<void> {
    await this.guarded('revert failed', async () => {
      const s = await this.recover();
      const target = this.revisionSnaps(s).find((r) => String(r.id) === revision);
      if (!target) throw new StoragePoolException(this.what(`revision ${revision} vanished`));
      await this.rbd.withImage(this.image, async (i) => {
        // The current data, kept aside under a name no prune counts: a crash
        // before the target is marked leaves the revisions as they were
        // (recover() drops it), not one too many.
        const stamp = utcStamp().compact;
        const backup = `qs-pre-revert-${stamp}`;
        await i.snapCreate(backup);
        failpoint(FP.revertAfterBackup);
        // Marked as in progress: a crash from here is finished by recover().
        const marker = `qs-reverting-${target.id}-${stamp}`;
        await i.snapRename(target.snap.name, marker);
        failpoint(FP.revertAfterRename);
        // The current data becomes the newest revision, so the revert can be undone.
        await i.snapRename(backup, this.nextRevisionName(s));
        await i.snapRollback(marker);
        await i.snapRemove(marker);
      });
      await this.bumpGeneration();
      await this.prune(await this.snaps(this.image));
    });
  }

  /** The image and snapshot holding this volume's committed data (for export and copies). */
  private async committedSpec(): Promise<{ image: RbdVolume; snap: string | null }> {
    if (this.kind === 'snapshot') return (this.source as RbdVolume).committedSpec();
    if (this.kind === 'origin_snapshot') return { image: this, snap: null }; // N is not written while running
    const [held, s] = (await this.rbd.withImageIfAny(this.image, (i) => together(i.lockers(), i.snaps()), true)) ?? [[], []];
    if (held.length > 0 && s.some((x) => x.name === 'qs-start')) return { image: this, snap: 'qs-start' };
    // An import streaming into N (importWriter): the committed data is what it keeps aside.
    if (importing(s)) return { image: this, snap: 'qs-import-old' };
    return { image: this, snap: null };
  }

  /**
   * Runs `read` on the committed data, opened at a snapshot that cannot
   * change while it is read (another host may start the volume): qs-start
   * while running, else a `qs-export-*` snapshot of its own, removed after.
   * `size`: the export's size when it differs from the image's (see below).
   */
  private committedRead<T>(what: string, read: (i: RbdImage, size: number | null) => Promise<T>): Promise<T> {
    return this.guarded(what, async () => {
      if (this.kind === 'volatile') throw new StoragePoolException(this.what('nothing to export (a volatile volume keeps no data)'));
      await this.recover();
      const c = await this.committedSpec();
      if (!(await c.image.imageInfo(c.image.image))) throw new StoragePoolException(this.what('nothing to export (no committed data)'));
      let snap = c.snap;
      let temp: string | null = null;
      if (snap === null) {
        temp = `qs-export-${rand()}`;
        await c.image.snapCreate(c.image.image, temp);
        snap = temp;
      }
      try {
        // The pre-start snapshot keeps the size it had; a resize since then applies to the
        // committed data too (the stop commits the resized image), as on every driver.
        const size = snap === 'qs-start' ? c.image.size : null;
        return await this.rbd.withImage(c.image.image, (i) => read(i, size), snap);
      } finally {
        if (temp) await c.image.snapRm(c.image.image, temp).catch(() => undefined);
      }
    });
  }

  protected async doExport(): Promise<string> {
    return this.committedRead('export failed', async (i, size) => {
      await this.pool.sweepTmpOnce();
      return this.exports.make(this.pool.tmpFile('export'), (file) => readIntoFile(i, file, size));
    });
  }

  override get readsExportsItself(): boolean {
    return true;
  }

  /** The image read straight into the sink: no file in tmp_dir. The sink's own failures (its reader went away) pass through unworded. */
  protected override async doExportInto(sink: ExportSink, signal?: AbortSignal): Promise<void> {
    let sinkFailure: { error: unknown } | null = null;
    const bySink = <T>(p: Promise<T>): Promise<T> =>
      p.catch((error: unknown) => {
        sinkFailure ??= { error };
        throw error;
      });
    try {
      await this.committedRead('export failed', async (i, size) => {
        const imageSize = await i.size();
        const total = size ?? imageSize;
        await bySink(sink.begin(total));
        await readInOrder(i, Math.min(total, imageSize), (at, bytes) => bySink(sink.data(at, bytes)), signal);
        // Complete: the reader finishes while the export's snapshot is removed (a round trip to the cluster).
        await bySink(sink.end());
      });
    } catch (e) {
      if (sinkFailure) throw (sinkFailure as { error: unknown }).error;
      throw e;
    }
  }

  protected doExportEnd(p: string): Promise<void> {
    return this.exports.end(p, this.where, (f) => this.guarded('ending the export failed', () => fs.rm(f, { force: true })));
  }

  protected async doImportData(size: number): Promise<string> {
    return this.guarded('import failed', async () => {
      await this.checkNotForeign(this.image, 'import');
      await this.pool.sweepTmpOnce();
      const file = this.pool.tmpFile('import');
      const fh = await fs.open(file, 'wx', 0o600);
      try {
        await fh.truncate(size);
      } finally {
        await fh.close();
      }
      this.importFile = file;
      return file;
    });
  }

  protected async doImportDataEnd(success: boolean): Promise<void> {
    if (this.importStream) {
      // Streamed (doImportWriter): the data is in N already, the writer finished and closed.
      this.importStream = null;
      await this.guarded('import failed', () =>
        this.rbd.session(async () => {
          if (!success) return this.undoImport();
          await this.snapCreate(this.image, 'qs-import-done');
          failpoint(FP.importAfterDiff);
          await this.finishImport(await this.snaps(this.image));
        }),
      );
      return;
    }
    const file = this.importFile;
    try {
      if (success && file) {
        this.importFile = null;
        await this.guarded('import failed', async () => this.writeFromFile(file, (await fs.stat(file)).size));
      }
    } finally {
      this.importFile = null;
      if (file) await fs.rm(file, { force: true });
    }
  }

  /** An import is written into the image as it arrives (doImportWriter), never through a file. */
  override get writesImportsItself(): boolean {
    return true;
  }

  /**
   * The admin import's writer: the payload goes straight into N, several
   * 4 MiB writes in flight, no temporary file. As writeFromFile does, the
   * old data is kept in qs-import-old first (while it exists without
   * qs-import-done, it is the committed data: exports and clones read it);
   * an image made for this import reads as zeros, so only data is written,
   * as `rbd import` does; otherwise the ranges the payload leaves as zeros
   * are zeroed as the writes pass them, and the rest at finish(). Then
   * importDataEnd(true) marks qs-import-done and commits;
   * importDataEnd(false) rolls N back; a crash in between is rolled back by
   * the next operation (recover()).
   */
  protected override async doImportWriter(size: number): Promise<ImportWriter> {
    return this.guarded('import failed', async () => {
      const fresh = await this.keepOldForImport(size);
      this.importStream = { fresh };
      try {
        const held = await this.rbd.hold(this.image);
        try {
          if ((await held.image.size()) !== size) await held.image.resize(size);
        } catch (e) {
          await held.close();
          throw e;
        }
        return rbdImportWriter(held, size, fresh, this.what(`image ${this.image}`));
      } catch (e) {
        this.importStream = null;
        await this.undoImport().catch(() => undefined);
        throw e;
      }
    });
  }

  protected async doImportVolume(src: Volume, srcPath: string): Promise<void> {
    await this.guarded(`copy from ${src.vid} failed`, async () => {
      const size = (await fs.stat(srcPath)).size;
      await this.writeFromFile(srcPath, size);
    });
  }

  /**
   * Makes the file's content this volume's committed data: the old data is
   * kept in the snapshot qs-import-old, the file is written into N (data as
   * data, zeros as zeroed ranges, the image resized to the file's size), and
   * the snapshot qs-import-done marks that all of it arrived; only then does
   * qs-import-old become a revision. On failure N is rolled back to it.
   */
  private writeFromFile(file: string, size: number): Promise<void> {
    // One open of the image for the whole import (RbdClient.session), as for a start or a stop.
    return this.rbd.session(() => this.writeFromFileOnce(file, size));
  }

  /**
   * The start of every import: the image made if missing, its old data kept
   * in qs-import-old. True for a new image, which reads as zeros: only the
   * data is written then (as `rbd import` does).
   */
  private async keepOldForImport(size: number): Promise<boolean> {
    await this.checkNotForeign(this.image, 'import');
    await this.recover();
    const fresh = !(await this.imageInfo(this.image));
    if (fresh) await this.rbd.create(this.image, size);
    await this.snapCreate(this.image, 'qs-import-old');
    failpoint(FP.importAfterOldSnapshot);
    return fresh;
  }

  private async writeFromFileOnce(file: string, size: number): Promise<void> {
    const fresh = await this.keepOldForImport(size);
    try {
      await this.rbd.withImage(this.image, async (i) => {
        if ((await i.size()) !== size) await i.resize(size);
        await writeFromFileInto(i, file, size, fresh);
        await i.flush();
        await i.snapCreate('qs-import-done');
      });
    } catch (e) {
      await this.undoImport().catch(() => undefined);
      throw e;
    }
    failpoint(FP.importAfterDiff);
    await this.finishImport(await this.snaps(this.image));
  }

  private async finishImport(s: Snap[]): Promise<void> {
    // Counted before the markers go: a crash between counts it twice (harmless), never not at all.
    await this.bumpGeneration();
    // The old data becomes a revision (or goes), the done marker goes: independent, sent together.
    const keep = Math.max(this.revisions_to_keep, 0);
    const kept = keep > 0 && this.kind === 'origin' && s.some((x) => x.name === 'qs-import-old');
    const old = !s.some((x) => x.name === 'qs-import-old')
      ? Promise.resolve()
      : kept
        ? this.snapRename(this.image, 'qs-import-old', this.nextRevisionName(s))
        : this.snapRm(this.image, 'qs-import-old');
    await together(old, this.snapRm(this.image, 'qs-import-done'));
    if (this.revisionSnaps(s).length + (kept ? 1 : 0) > keep) this.pruneLater(); // as after a stop: off the import's path
  }

  private async undoImport(): Promise<void> {
    await this.snapRm(this.image, 'qs-import-done');
    await this.snapRollback(this.image, 'qs-import-old');
    await this.snapRm(this.image, 'qs-import-old');
  }

  protected async doIsDirty(): Promise<boolean> {
    return this.guarded('reading the lock failed', async () => {
      if (this.kind === 'origin') return (await this.locks(this.image)).length > 0;
      return (await this.imageInfo(this.runImage)) !== null;
    });
  }

  protected async doIsOutdated(): Promise<boolean | null> {
    if (!this.snap_on_start) return false;
    return this.guarded('is_outdated failed', async () => {
      const had = await this.getMeta(this.runImage, SRC_GEN_KEY);
      if (had === null) return false; // not running: the next start takes the current source
      return had !== (await (this.source as RbdVolume).generation());
    });
  }

  /** An origin's image carries its size (see Volume.storedSize). */
  override async storedSize(): Promise<number | null> {
    if (this.kind !== 'origin') return null;
    return (await this.imageInfo(this.image).catch(() => null))?.size ?? null;
  }

  protected async doUsage(): Promise<number> {
    return this.guarded('usage failed', async () => {
      const img = this.kind === 'origin' ? this.image : this.runImage;
      return (await this.rbd.withImageIfAny(img, async (i) => i.allocated(await i.size()))) ?? 0;
    });
  }
}

/**
 * An import writer over an open image of `size` bytes (see doImportWriter):
 * each run of data is one write (4 MiB, 4 in flight, as the sparse writer
 * gathers them); unless `fresh`, the zeros between runs are written as they
 * are passed (rbd_write_zeroes: whole objects deallocated), and the rest by
 * finish(), which then flushes.
 */
function rbdImportWriter(held: { image: RbdImage; close(): Promise<void> }, size: number, fresh: boolean, target: string): ImportWriter {
  const i = held.image;
  /** Where the data handed over so far ends: what lies before it is the new data or zeroed. */
  let passed = 0;
  let finished: Promise<void> | null = null;
  const zeroTo = (end: number): Promise<void> => {
    const from = passed;
    passed = Math.max(passed, end);
    return fresh || end <= from ? Promise.resolve() : i.writeZeroes(from, end - from);
  };
  return {
    target,
    file: null,
    blockBytes: BLOCK,
    writeBytes: IO_CHUNK,
    // Twice the writes that run at once: the next ones wait queued, so no worker idles while the payload refills.
    pendingBytes: 2 * IN_FLIGHT * IO_CHUNK,
    syncEveryBytes: Infinity,
    async writev(bufs, at) {
      const buf = bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs);
      const gap = zeroTo(at);
      passed = at + buf.length;
      await together(gap, i.write(at, buf));
      return { bytesWritten: buf.length };
    },
    datasync: () => i.flush(),
    finish: () =>
      (finished ??= (async () => {
        await zeroTo(size);
        await i.flush();
      })()),
    close: () => held.close(),
  };
}

/**
 * Awaits every promise, then throws the first failure: calls on one open image
 * must all have returned before the image may be closed (Promise.all would
 * reject while the others still use it).
 */
async function together<T extends unknown[]>(...ps: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const rs = await Promise.allSettled(ps);
  const failed = rs.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return rs.map((r) => (r as PromiseFulfilledResult<unknown>).value) as T;
}

/** The size of snapshot `name`, or null. */
function sizeOf(s: Snap[], name: string): number | null {
  return s.find((x) => x.name === name)?.size ?? null;
}

/** An import is writing N (or was cut off): the old data, still the committed one, is in qs-import-old. */
function importing(s: Snap[]): boolean {
  return s.some((x) => x.name === 'qs-import-old') && !s.some((x) => x.name === 'qs-import-done');
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let o = from; o < to; o += BLOCK) {
    const e = Math.min(o + BLOCK, to);
    if (buf.compare(ZERO, 0, e - o, o, e) !== 0) return false;
  }
  return true;
}
const ZERO = Buffer.alloc(BLOCK);

/** Runs `work(k)` for k = 0 .. count-1, at most IN_FLIGHT at once; the first failure rejects (after the others settle). */
async function inFlight(count: number, work: (k: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: Error | null = null;
  const lane = async (): Promise<void> => {
    while (next < count && failed === null) {
      const k = next++;
      try {
        await work(k);
      } catch (e) {
        failed ??= e instanceof Error ? e : new Error(String(e));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, count) }, lane));
  const f = failed as Error | null;
  if (f) throw f;
}

/** The runs of `buf` (at image offset `at`) that are not all-zero BLOCKs, as [from, to) offsets in it. */
function dataRuns(buf: Buffer, at: number): [number, number][] {
  const runs: [number, number][] = [];
  forEachDataRun(buf, 0, buf.length, at, BLOCK, (from, to) => runs.push([from, to]));
  return runs;
}

/**
 * Copies an (open) image into a new sparse file of `size` bytes (default:
 * the image's): 4 MiB reads, several in flight, all-zero 64 KiB blocks left
 * as holes; not synced (a temporary file, see below).
 */
async function readIntoFile(i: RbdImage, file: string, size: number | null): Promise<void> {
  const imageSize = await i.size();
  const total = size ?? imageSize;
  const fh = await fs.open(file, 'wx', 0o600);
  try {
    await fh.truncate(total);
    const readable = Math.min(total, imageSize);
    const chunks = Math.ceil(readable / IO_CHUNK);
    await inFlight(chunks, async (k) => {
      const off = k * IO_CHUNK;
      const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, readable - off));
      await i.read(off, buf);
      for (const [o, e] of dataRuns(buf, off)) await fh.write(buf, o, e - o, off + o);
    });
    // No fsync: the file is read by the caller and removed at export_end; after a crash it is debris
    // (sweepTmpOnce), never data anyone relies on. Forcing it to disk only competed with the OSDs.
  } finally {
    await fh.close();
  }
}

/**
 * Reads the first `length` bytes of an (open) image in order, handing each
 * run of non-zero 64 KiB blocks to `emit`: 4 MiB reads, IN_FLIGHT of them
 * running ahead while `emit` takes the oldest. Every read has returned
 * before this settles (the image may be closed then).
 *
 * The reads go into a ring of IN_FLIGHT + 1 buffers, made for this call:
 * fresh memory costs a page fault per page (in this project's VM, reading
 * 256 MiB into new buffers took 15-20% longer than into reused ones). A
 * buffer is read into again only after every `emit` of it resolved (the
 * sink is done with lent bytes then: ExportSink.data); after a rejection
 * nothing is read into a buffer again.
 */
async function readInOrder(
  i: RbdImage,
  length: number,
  emit: (offset: number, bytes: Buffer) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const chunks = Math.ceil(length / IO_CHUNK);
  // Read k goes into ring[k % ring.length]: while buffer k is emitted, reads k+1 .. k+IN_FLIGHT use the others.
  const ring = Array.from({ length: Math.min(IN_FLIGHT + 1, chunks) }, () => Buffer.allocUnsafe(Math.min(IO_CHUNK, length)));
  const ahead: Promise<Buffer>[] = [];
  let started = 0;
  const startNext = () => {
    const k = started++;
    const off = k * IO_CHUNK;
    const buf = ring[k % ring.length]!.subarray(0, Math.min(IO_CHUNK, length - off));
    const p = i.read(off, buf).then(() => buf);
    p.catch(() => undefined); // awaited in its turn; not an unhandled rejection before that
    ahead.push(p);
  };
  try {
    while (started < Math.min(IN_FLIGHT, chunks)) startNext();
    for (let k = 0; k < chunks; k++) {
      const buf = await ahead.shift()!;
      signal?.throwIfAborted();
      if (started < chunks) startNext();
      for (const [o, e] of dataRuns(buf, k * IO_CHUNK)) await emit(k * IO_CHUNK + o, buf.subarray(o, e));
    }
  } finally {
    await Promise.allSettled(ahead);
  }
}

/**
 * Writes the first `size` bytes of `file` (zeros past its end) over the
 * whole of an open image of that size: data as 4 MiB writes, several in
 * flight; all-zero ranges zeroed (whole objects deallocated), so the image
 * ends up holding exactly the file. `fresh` (an image made for this import,
 * all zeros): zero ranges are skipped.
 */
async function writeFromFileInto(i: RbdImage, file: string, size: number, fresh: boolean): Promise<void> {
  const fh = await fs.open(file, 'r');
  try {
    const chunks = Math.ceil(size / IO_CHUNK);
    await inFlight(chunks, async (k) => {
      const off = k * IO_CHUNK;
      const len = Math.min(IO_CHUNK, size - off);
      const buf = Buffer.alloc(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, off + got);
        if (bytesRead === 0) break; // past the file's end: zeros
        got += bytesRead;
      }
      if (isZero(buf, 0, len)) return fresh ? undefined : i.writeZeroes(off, len);
      for (let o = 0; o < len; ) {
        const zero = isZero(buf, o, Math.min(o + BLOCK, len));
        let e = Math.min(o + BLOCK, len);
        while (e < len && isZero(buf, e, Math.min(e + BLOCK, len)) === zero) e = Math.min(e + BLOCK, len);
        if (zero) {
          if (!fresh) await i.writeZeroes(off + o, e - o);
        }
        else await i.write(off + o, o === 0 && e === len ? buf : buf.subarray(o, e));
        o = e;
      }
    });
  } finally {
    await fh.close();
  }
}
