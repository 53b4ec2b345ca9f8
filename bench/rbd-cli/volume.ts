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
import { declareFailpoint, failpoint } from '../../src/files/failpoint.js';
import { StoragePoolException, storageErrnoError } from '../../src/storage/errors.js';
import { Volume, type DomainRef, type Revision, type VolumeSpec } from '../../src/storage/volume.js';
import { CephCommandError, EBUSY, EEXIST, ENOENT, isErrno } from './cli.js';
import { fileAsDiff } from './diff.js';
import type { RbdCliPool } from './pool.js';

const FEATURES = ['--image-feature', 'layering'];

/** Crash points (QUBES_STORAGE_FAILPOINTS): test/drivers/rbd/crash.ts kills a process at each. */
export const RBD_CLI_FAILPOINTS = {
  startAfterLock: declareFailpoint('rbdcli.start.after-lock'),
  stopAfterRename: declareFailpoint('rbdcli.stop.after-rename'),
  importAfterOldSnapshot: declareFailpoint('rbdcli.import.after-old-snapshot'),
  importAfterDiff: declareFailpoint('rbdcli.import.after-diff'),
  revertAfterRename: declareFailpoint('rbdcli.revert.after-rename'),
};
const FP = RBD_CLI_FAILPOINTS;
const REV_RE = /^qs-rev-([1-9][0-9]{0,15})-(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/;
const REVERTING_RE = /^qs-reverting-/;
const GEN_KEY = 'qubes.generation';
const SRC_GEN_KEY = 'qubes.source-generation';
const LOCK_PREFIX = 'qubes:';

interface Snap {
  id: number;
  name: string;
}
interface Lock {
  id: string;
  locker: string;
  address: string;
}
interface ImageInfo {
  size: number;
  parent?: { pool: string; pool_namespace?: string; image: string; snapshot: string };
}

function utcStamp(d = new Date()): { compact: string; iso: string } {
  const iso = d.toISOString().replace(/\.\d+Z$/, 'Z');
  return { iso, compact: iso.replace(/[-:]/g, '') };
}

function rand(): string {
  return randomBytes(6).toString('hex');
}

export class RbdCliVolume extends Volume {
  declare readonly pool: RbdCliPool;
  /** The image of an origin's data (and the name other images of this volume derive from). */
  readonly image: string;
  /** Export files handed out by this object. */
  private readonly exportsHeld = new Set<string>();
  private importFile: string | null = null;

  constructor(pool: RbdCliPool, domain: DomainRef | null, vid: string, spec: VolumeSpec) {
    super(pool, domain, vid, spec);
    this.image = pool.imageOf(vid);
  }

  private get cli() {
    return this.pool.cli;
  }
  private get lockId(): string {
    return LOCK_PREFIX + this.pool.hostId;
  }

  /** The image the domain uses while running. */
  get runImage(): string {
    if (this.kind === 'snapshot') return `${this.image}~snap`;
    if (this.kind === 'volatile') return `${this.image}~volatile`;
    return this.image;
  }

  private what(action: string): string {
    return `${this.where}: ${action}`;
  }

  private async guarded<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      // Out of space or quota, EIO, read-only: in the Ceph cluster (the command's exit status) or in tmp_dir.
      const mapped = storageErrnoError(this.what(action), e);
      if (mapped) throw mapped;
      if (e instanceof CephCommandError) throw new StoragePoolException(this.what(`${action}: ${e.message}`), { cause: e });
      if (e instanceof StoragePoolException) throw e;
      throw new StoragePoolException(this.what(`${action}: ${String(e)}`), { cause: e });
    }
  }

  // ---- small calls -------------------------------------------------------

  private async imageInfo(image: string): Promise<ImageInfo | null> {
    try {
      return await this.cli.rbdJson<ImageInfo>(['info', this.cli.spec(image)]);
    } catch (e) {
      if (isErrno(e, ENOENT)) return null;
      throw e;
    }
  }

  private async snaps(image: string): Promise<Snap[]> {
    try {
      return (await this.cli.rbdJson<Snap[] | null>(['snap', 'ls', this.cli.spec(image)])) ?? [];
    } catch (e) {
      if (isErrno(e, ENOENT)) return [];
      throw e;
    }
  }

  private async locks(image: string): Promise<Lock[]> {
    try {
      const out = await this.cli.rbdJson<Lock[] | Record<string, Omit<Lock, 'id'>> | null>(['lock', 'ls', this.cli.spec(image)]);
      if (!out) return [];
      return Array.isArray(out) ? out : Object.entries(out).map(([id, l]) => ({ id, ...l }));
    } catch (e) {
      if (isErrno(e, ENOENT)) return [];
      throw e;
    }
  }

  private async snapRm(image: string, snap: string): Promise<void> {
    try {
      await this.cli.rbd(['snap', 'rm', this.cli.spec(image, snap)]);
    } catch (e) {
      if (!isErrno(e, ENOENT)) throw e;
    }
  }

  private async getMeta(image: string, key: string): Promise<string | null> {
    try {
      return (await this.cli.rbd(['image-meta', 'get', this.cli.spec(image), key])).trim();
    } catch (e) {
      if (isErrno(e, ENOENT)) return null;
      throw e;
    }
  }

  /** The commit generation of this (origin) volume's data. */
  async generation(): Promise<string> {
    return (await this.getMeta(this.image, GEN_KEY)) ?? '0';
  }

  private async bumpGeneration(): Promise<void> {
    const next = String(Number((await this.generation()) || '0') + 1);
    await this.cli.rbd(['image-meta', 'set', this.cli.spec(this.image), GEN_KEY, next]);
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
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.cli.rbd(['lock', 'add', this.cli.spec(image), this.lockId]);
        return 'new';
      } catch (e) {
        if (!isErrno(e, EBUSY) && !isErrno(e, EEXIST)) throw e;
      }
      const held = await this.locks(image);
      if (held.length === 0) continue; // released meanwhile
      if (held.some((l) => l.id === this.lockId)) return 'ours';
      await this.breakStaleOrRefuse(image, held[0]!);
    }
    throw new StoragePoolException(this.what('could not take the lock (it keeps changing hands)'));
  }

  private async unlock(image: string): Promise<void> {
    for (const l of await this.locks(image)) {
      if (l.id !== this.lockId) continue;
      try {
        // Our own lock: no fencing (blocklisting the client that took it) needed.
        await this.cli.rbd(['lock', 'rm', this.cli.spec(image), l.id, l.locker, '--rbd_blocklist_on_break_lock=false']);
      } catch (e) {
        if (!isErrno(e, ENOENT)) throw e;
      }
    }
  }

  /** Refuses when another host holds `image`. */
  private async checkNotForeign(image: string, action: string): Promise<Lock[]> {
    const held = await this.locks(image);
    const other = held.find((l) => l.id !== this.lockId);
    if (other) throw new StoragePoolException(this.what(`cannot ${action}: in use by ${RbdCliVolume.holder(other)}`));
    return held;
  }

  /** Before a start: like checkNotForeign, but breaks the lock of the host named by break_stale_locks. */
  private async checkStartable(image: string): Promise<void> {
    for (const l of await this.locks(image)) if (l.id !== this.lockId) await this.breakStaleOrRefuse(image, l);
  }

  /** Another host's lock: broken when break_stale_locks names that host, else the volume is in use. */
  private async breakStaleOrRefuse(image: string, l: Lock): Promise<void> {
    const host = l.id.startsWith(LOCK_PREFIX) ? l.id.slice(LOCK_PREFIX.length) : null;
    if (host === null || host !== this.pool.breakLocksOf)
      throw new StoragePoolException(
        this.what(
          `in use by ${RbdCliVolume.holder(l)}; if that host is dead, break its lock explicitly ` +
            `(pool option break_stale_locks=${host ?? l.id}, or RbdCliVolume.breakLock)`,
        ),
      );
    await this.cli.rbd(['lock', 'rm', this.cli.spec(image), l.id, l.locker]);
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
        for (const l of await this.locks(this.runImage)) {
          if (l.id === this.lockId) continue;
          await this.cli.rbd(['lock', 'rm', this.cli.spec(this.runImage), l.id, l.locker]);
          broken.push(RbdCliVolume.holder(l));
        }
        return broken;
      }),
    );
  }

  /** Who holds the running image's lock, or null. */
  async lockHolder(): Promise<string | null> {
    const l = (await this.locks(this.runImage))[0];
    return l ? RbdCliVolume.holder(l) : null;
  }

  // ---- recovery ------------------------------------------------------------

  /**
   * Finishes or undoes what an interrupted import or revert left on N:
   * - qs-import-done present: the import completed; finish the commit;
   * - qs-import-old alone: the import did not complete; roll back to it;
   * - qs-reverting-*: roll back to it (again) and drop it.
   * Also prunes revisions past revisions_to_keep.
   */
  private async recover(snaps?: Snap[]): Promise<Snap[]> {
    if (!(this.save_on_stop && !this.snap_on_start)) return [];
    let s = snaps ?? (await this.snaps(this.image));
    if (this.importFile === null) {
      const done = s.some((x) => x.name === 'qs-import-done');
      const old = s.some((x) => x.name === 'qs-import-old');
      if (done) await this.finishImport(s);
      else if (old) await this.undoImport();
      if (done || old) s = await this.snaps(this.image);
    }
    const reverting = s.find((x) => REVERTING_RE.test(x.name));
    if (reverting) {
      await this.cli.rbd(['snap', 'rollback', this.cli.spec(this.image, reverting.name)], { timeoutMs: null });
      await this.snapRm(this.image, reverting.name);
      await this.bumpGeneration();
      s = await this.snaps(this.image);
    }
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
    const next = (this.revisionSnaps(s).at(-1)?.id ?? 0) + 1;
    return `qs-rev-${next}-${utcStamp().compact}`;
  }

  /** Removes the oldest revisions past revisions_to_keep (a revision a clone uses goes to the RBD trash until the clone is gone). */
  private async prune(s: Snap[]): Promise<void> {
    const keep = Math.max(this.revisions_to_keep, 0);
    const revs = this.revisionSnaps(s);
    while (revs.length > keep) await this.snapRm(this.image, revs.shift()!.snap.name);
  }

  // ---- the contract --------------------------------------------------------

  override async path(): Promise<string> {
    return this.blockPath(this.runImage);
  }

  /** What a hypervisor attaches (QEMU's rbd: syntax): rbd:POOL/[NAMESPACE/]IMAGE[:id=..][:conf=..] */
  blockPath(image: string): string {
    const t = this.cli.target;
    let p = `rbd:${this.cli.spec(image)}`;
    if (t.clientId) p += `:id=${t.clientId}`;
    if (t.conf) p += `:conf=${t.conf}`;
    return p;
  }

  protected async doCreate(): Promise<void> {
    if (!(this.save_on_stop && !this.snap_on_start)) return; // made at start
    await this.guarded('create failed', async () => {
      try {
        await this.cli.rbd(['create', ...FEATURES, '--size', `${this.size}B`, this.cli.spec(this.image)]);
      } catch (e) {
        if (isErrno(e, EEXIST)) throw new StoragePoolException(this.what(`already exists (image ${this.image})`));
        throw e;
      }
    });
  }

  protected async doRemove(): Promise<void> {
    await this.guarded('remove failed', async () => {
      if (this.runImage !== this.image) await this.dropRunImage();
      if (!(this.save_on_stop && !this.snap_on_start)) return;
      await this.checkNotForeign(this.image, 'remove');
      await this.unlock(this.image);
      const s = await this.snaps(this.image);
      for (const x of s) await this.snapRm(this.image, x.name); // clone v2: a snapshot with clones goes to the trash
      try {
        await this.cli.rbd(['rm', this.cli.spec(this.image)], { timeoutMs: null });
      } catch (e) {
        if (!isErrno(e, ENOENT)) throw e;
      }
    });
  }

  /** Removes the running image of a snapshot or volatile volume, and the source snapshot it was cloned from. */
  private async dropRunImage(): Promise<boolean> {
    const img = this.runImage;
    const info = await this.imageInfo(img);
    if (!info) return false;
    await this.checkNotForeign(img, 'stop');
    await this.unlock(img);
    try {
      await this.cli.rbd(['rm', this.cli.spec(img)], { timeoutMs: null });
    } catch (e) {
      if (!isErrno(e, ENOENT)) throw e;
    }
    const parent = info.parent;
    if (parent && parent.snapshot.startsWith('qs-base-') && this.source) {
      const src = this.source as RbdCliVolume;
      await src.snapRm(src.image, parent.snapshot).catch(() => undefined); // other clones may still use it
    }
    return true;
  }

  protected async doStart(): Promise<void> {
    await this.guarded('start failed', async () => {
      if (this.kind === 'snapshot') return this.startSnapshot();
      if (this.kind === 'volatile') return this.startVolatile();
      return this.startOrigin();
    });
  }

  private async startOrigin(): Promise<void> {
    const s = await this.recover();
    if (!(await this.imageInfo(this.image))) throw new StoragePoolException(this.what(`missing image ${this.image} (volume not created?)`));
    const how = await this.lock(this.image);
    failpoint(FP.startAfterLock);
    if (this.revisions_to_keep === -1) return; // written in place, no snapshot
    if (how === 'ours' && s.some((x) => x.name === 'qs-start')) return; // uncommitted data from before a crash: keep it
    if (!s.some((x) => x.name === 'qs-start')) {
      try {
        await this.cli.rbd(['snap', 'create', this.cli.spec(this.image, 'qs-start')]);
      } catch (e) {
        if (how === 'new') await this.unlock(this.image).catch(() => undefined); // a failed start starts nothing
        throw e;
      }
    }
  }

  private async startVolatile(): Promise<void> {
    const img = this.runImage;
    if (await this.imageInfo(img)) {
      await this.checkStartable(img);
      await this.dropRunImage(); // ours, from before a crash: start afresh
    }
    try {
      await this.cli.rbd(['create', ...FEATURES, '--size', `${this.size}B`, this.cli.spec(img)]);
    } catch (e) {
      if (isErrno(e, EEXIST)) await this.checkStartable(img); // another host was faster
      throw e;
    }
    await this.lock(img);
  }

  private async startSnapshot(): Promise<void> {
    const src = this.source as RbdCliVolume;
    const img = this.runImage;
    if (await this.imageInfo(img)) {
      await this.checkStartable(img);
      await this.dropRunImage(); // ours, from before a crash: a snapshot starts afresh
    }
    // Under the source's lock (this process), so it does not commit between our reads.
    await this.pool.locks.run(src.vid, async () => {
      if (!(await src.imageInfo(src.image))) throw new StoragePoolException(this.what(`source volume ${src.vid} has no data yet`));
      const srcSnaps = await src.snaps(src.image);
      const srcLocked = (await src.locks(src.image)).length > 0;
      const gen = await src.generation();
      let base: string;
      if (srcLocked && src.revisions_to_keep !== -1 && srcSnaps.some((x) => x.name === 'qs-start')) {
        base = 'qs-start'; // the source runs: its committed data is its start snapshot
      } else {
        base = `qs-base-${rand()}`;
        await src.cli.rbd(['snap', 'create', src.cli.spec(src.image, base)]);
      }
      try {
        await this.clone(src, base, img);
      } catch (e) {
        if (base !== 'qs-start') await src.snapRm(src.image, base).catch(() => undefined);
        if (isErrno(e, EEXIST)) await this.checkStartable(img);
        throw e;
      }
      try {
        await this.lock(img);
        await this.cli.rbd(['image-meta', 'set', this.cli.spec(img), SRC_GEN_KEY, gen]);
        const info = await this.imageInfo(img);
        if (info && info.size < this.size) await this.cli.rbd(['resize', '--size', `${this.size}B`, this.cli.spec(img)]);
      } catch (e) {
        await this.dropRunImage().catch(() => undefined);
        throw e;
      }
    });
  }

  /** A layered clone: clone v2 (no protection needed); with clients older than mimic, protect the snapshot (v1). */
  private async clone(src: RbdCliVolume, snap: string, img: string): Promise<void> {
    const args = ['clone', ...FEATURES, src.cli.spec(src.image, snap), this.cli.spec(img)];
    try {
      await this.cli.rbd([...args, '--rbd-default-clone-format', '2']);
    } catch (e) {
      if (!/protect|compat|clone format|v2/i.test(String(e))) throw e;
      await src.cli.rbd(['snap', 'protect', src.cli.spec(src.image, snap)]).catch(() => undefined);
      await this.cli.rbd([...args, '--rbd-default-clone-format', '1']);
    }
  }

  protected async doStop(): Promise<void> {
    await this.guarded('stop failed', async () => {
      if (this.kind !== 'origin') {
        await this.dropRunImage();
        return;
      }
      const held = await this.checkNotForeign(this.image, 'stop');
      if (!held.some((l) => l.id === this.lockId)) return; // not started: nothing to do
      const s = await this.snaps(this.image);
      if (s.some((x) => x.name === 'qs-start')) {
        if (Math.max(this.revisions_to_keep, 0) > 0) {
          const rev = this.nextRevisionName(s);
          await this.cli.rbd(['snap', 'rename', this.cli.spec(this.image, 'qs-start'), this.cli.spec(this.image, rev)]);
          failpoint(FP.stopAfterRename);
        } else {
          await this.snapRm(this.image, 'qs-start');
        }
      }
      await this.bumpGeneration();
      await this.prune(await this.snaps(this.image));
      await this.unlock(this.image);
    });
  }

  protected async doVerify(): Promise<boolean> {
    return this.guarded('verify failed', async () => {
      if (this.snap_on_start) {
        const src = this.source as RbdCliVolume;
        if (!(await this.imageInfo(src.image))) throw new StoragePoolException(this.what(`source volume ${src.vid} has no image`));
      } else if (this.save_on_stop && !(await this.imageInfo(this.image))) {
        throw new StoragePoolException(this.what(`missing image ${this.image}`));
      }
      return true;
    });
  }

  protected async doResize(size: number): Promise<void> {
    await this.guarded('resize failed', async () => {
      const images = this.kind === 'origin' ? [this.image] : [this.runImage];
      for (const img of images) {
        if (!(await this.imageInfo(img))) continue;
        await this.cli.rbd(['resize', '--allow-shrink', '--size', `${size}B`, this.cli.spec(img)], { timeoutMs: null });
      }
    });
  }

  /**
   * Keeping a revision: a snapshot named as the next revision, then `rbd
   * resize --allow-shrink` (a rollback to that snapshot restores its size
   * too). A crash between the two leaves the old data with one more revision
   * of it. Not run here: tested against a cluster only.
   */
  protected override async doShrink(size: number, keepRevision: boolean): Promise<void> {
    if (this.kind !== 'origin') return this.doResize(size); // a volatile keeps nothing: its next start takes the size
    await this.guarded('shrink failed', async () => {
      await this.checkNotForeign(this.image, 'shrink');
      const s = await this.recover();
      if (!(await this.imageInfo(this.image))) throw new StoragePoolException(this.what(`missing image ${this.image} (volume not created?)`));
      if (keepRevision) await this.cli.rbd(['snap', 'create', this.cli.spec(this.image, this.nextRevisionName(s))]);
      await this.cli.rbd(['resize', '--allow-shrink', '--size', `${size}B`, this.cli.spec(this.image)], { timeoutMs: null });
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
      // The current data becomes the newest revision, so the revert can be undone.
      await this.cli.rbd(['snap', 'create', this.cli.spec(this.image, this.nextRevisionName(s))]);
      // Marked as in progress: a crash from here is finished by recover().
      const marker = `qs-reverting-${target.id}-${utcStamp().compact}`;
      await this.cli.rbd(['snap', 'rename', this.cli.spec(this.image, target.snap.name), this.cli.spec(this.image, marker)]);
      failpoint(FP.revertAfterRename);
      await this.cli.rbd(['snap', 'rollback', this.cli.spec(this.image, marker)], { timeoutMs: null });
      await this.snapRm(this.image, marker);
      await this.bumpGeneration();
      await this.prune(await this.snaps(this.image));
    });
  }

  /** The image and snapshot holding this volume's committed data (for export and copies). */
  private async committedSpec(): Promise<{ image: RbdCliVolume; snap: string | null }> {
    if (this.kind === 'snapshot') return (this.source as RbdCliVolume).committedSpec();
    const locked = (await this.locks(this.image)).length > 0;
    if (locked) {
      const s = await this.snaps(this.image);
      if (s.some((x) => x.name === 'qs-start')) return { image: this, snap: 'qs-start' };
    }
    return { image: this, snap: null };
  }

  protected async doExport(): Promise<string> {
    return this.guarded('export failed', async () => {
      if (this.kind === 'volatile') throw new StoragePoolException(this.what('nothing to export (a volatile volume keeps no data)'));
      if (this.kind === 'origin') await this.recover();
      const c = await this.committedSpec();
      if (!(await c.image.imageInfo(c.image.image))) throw new StoragePoolException(this.what('nothing to export (no committed data)'));
      // A snapshot of its own: the data cannot change while it is read (another host may start the volume).
      let snap = c.snap;
      let temp: string | null = null;
      if (snap === null) {
        temp = `qs-export-${rand()}`;
        await c.image.cli.rbd(['snap', 'create', c.image.cli.spec(c.image.image, temp)]);
        snap = temp;
      }
      await this.pool.sweepTmpOnce();
      const file = this.pool.tmpFile('export');
      try {
        await this.cli.rbd(['export', c.image.cli.spec(c.image.image, snap), file], { timeoutMs: null });
        // The pre-start snapshot keeps the size it had; a resize since then applies to the
        // committed data too (the stop commits the resized image), as on every driver.
        if (snap === 'qs-start') await fs.truncate(file, c.image.size);
      } catch (e) {
        await fs.rm(file, { force: true });
        throw e;
      } finally {
        if (temp) await c.image.snapRm(c.image.image, temp).catch(() => undefined);
      }
      this.exportsHeld.add(file);
      return file;
    });
  }

  protected async doExportEnd(p: string): Promise<void> {
    if (!this.exportsHeld.has(p)) throw new StoragePoolException(this.what(`not an export in progress: ${p}`));
    try {
      await this.guarded('ending the export failed', () => fs.rm(p, { force: true }));
    } finally {
      this.exportsHeld.delete(p);
    }
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

  protected async doImportVolume(src: Volume, srcPath: string): Promise<void> {
    await this.guarded(`copy from ${src.vid} failed`, async () => {
      const size = (await fs.stat(srcPath)).size;
      await this.writeFromFile(srcPath, size);
    });
  }

  /**
   * Makes the file's content this volume's committed data: the old data is
   * kept in the snapshot qs-import-old, the file is written into N by
   * `rbd import-diff` whose last step makes qs-import-done; only then does
   * qs-import-old become a revision. On failure N is rolled back to it.
   */
  private async writeFromFile(file: string, size: number): Promise<void> {
    await this.checkNotForeign(this.image, 'import');
    await this.recover();
    if (!(await this.imageInfo(this.image))) await this.cli.rbd(['create', ...FEATURES, '--size', `${size}B`, this.cli.spec(this.image)]);
    await this.cli.rbd(['snap', 'create', this.cli.spec(this.image, 'qs-import-old')]);
    failpoint(FP.importAfterOldSnapshot);
    try {
      await this.cli.rbd(['import-diff', '-', this.cli.spec(this.image)], {
        input: fileAsDiff(file, size, 'qs-import-done'),
        timeoutMs: null,
      });
    } catch (e) {
      await this.undoImport().catch(() => undefined);
      throw e;
    }
    failpoint(FP.importAfterDiff);
    await this.finishImport(await this.snaps(this.image));
  }

  private async finishImport(s: Snap[]): Promise<void> {
    if (s.some((x) => x.name === 'qs-import-old')) {
      if (Math.max(this.revisions_to_keep, 0) > 0)
        await this.cli.rbd([
          'snap',
          'rename',
          this.cli.spec(this.image, 'qs-import-old'),
          this.cli.spec(this.image, this.nextRevisionName(s)),
        ]);
      else await this.snapRm(this.image, 'qs-import-old');
    }
    await this.snapRm(this.image, 'qs-import-done');
    await this.bumpGeneration();
    await this.prune(await this.snaps(this.image));
  }

  private async undoImport(): Promise<void> {
    await this.snapRm(this.image, 'qs-import-done');
    await this.cli.rbd(['snap', 'rollback', this.cli.spec(this.image, 'qs-import-old')], { timeoutMs: null });
    await this.snapRm(this.image, 'qs-import-old');
  }

  protected async doIsDirty(): Promise<boolean> {
    return this.guarded('reading the lock failed', async () => {
      if (this.kind === 'origin') return (await this.locks(this.image)).length > 0;
      return (await this.imageInfo(this.runImage)) !== null;
    });
  }

  protected async doIsOutdated(): Promise<boolean | null> {
    if (this.kind !== 'snapshot') return false;
    return this.guarded('is_outdated failed', async () => {
      const had = await this.getMeta(this.runImage, SRC_GEN_KEY);
      if (had === null) return false; // not running: the next start takes the current source
      return had !== (await (this.source as RbdCliVolume).generation());
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
      try {
        const du = await this.cli.rbdJson<{ images: { name: string; snapshot?: string; used_size: number }[] }>([
          'du',
          this.cli.spec(img),
        ]);
        return du.images.filter((i) => !i.snapshot).reduce((a, i) => a + i.used_size, 0);
      } catch (e) {
        if (isErrno(e, ENOENT)) return 0;
        throw e;
      }
    });
  }
}
