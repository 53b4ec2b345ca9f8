/**
 * A file-reflink volume: image files in a directory (see layout.ts), where
 * every start, commit and revision is a reflink copy, a hard link or a rename.
 *
 * Crash safety without a journal: each state change is a sequence of atomic
 * steps (link, rename, unlink) ordered so that a crash after any of them
 * leaves a state `recover()` can turn into the old or the new one:
 * - copies are made under a temporary name, fsynced, then renamed in place;
 * - a commit first hard-links the current image as the new revision, then
 *   renames the new data over it; a revision sharing its inode with the
 *   committed image can only be an interrupted commit or revert, and is
 *   dropped (the old state);
 * - temporary, import and export files not held by this process are debris.
 * `recover()` runs under the volume's lock at the start of every operation
 * that changes state.
 */
import * as fs from 'node:fs/promises';
import type { Stats } from 'node:fs';
import {
  createSparse,
  fsyncDir,
  fsyncFile,
  lstatOrNull,
  randomSuffix,
  unlinkIfExists,
  allocatedBytes,
} from '../../files/files.js';
import { declareFailpoint, failpoint } from '../../files/failpoint.js';
import { lstatEachInBatch, lstatInBatch } from '../../files/lstat-batch.js';
import { StoragePoolException, storageError } from '../../storage/errors.js';
import { Volume, type Revision, type VolumeInfo } from '../../storage/volume.js';
import { classify, utcNow, volumeFiles, type ClassifiedFile, type VolumeFiles } from './layout.js';
import type { FileReflinkPool } from './pool.js';

const FP = {
  createBeforeRename: declareFailpoint('reflink.create.before-rename'),
  startAfterBaseLink: declareFailpoint('reflink.start.after-base-link'),
  startAfterCopy: declareFailpoint('reflink.start.after-copy'),
  startAfterRename: declareFailpoint('reflink.start.after-rename'),
  stopAfterUnlinkDirty: declareFailpoint('reflink.stop.after-unlink-dirty'),
  commitAfterFsync: declareFailpoint('reflink.commit.after-fsync'),
  commitAfterRevisionLink: declareFailpoint('reflink.commit.after-revision-link'),
  commitAfterRename: declareFailpoint('reflink.commit.after-rename'),
  commitAfterPrune: declareFailpoint('reflink.commit.after-prune'),
  revertAfterRevisionLink: declareFailpoint('reflink.revert.after-revision-link'),
  revertAfterRename: declareFailpoint('reflink.revert.after-rename'),
  resizeAfterCopy: declareFailpoint('reflink.resize.after-copy'),
  resizeAfterTruncate: declareFailpoint('reflink.resize.after-truncate'),
  shrinkAfterCopy: declareFailpoint('reflink.shrink.after-copy'),
  importAfterCreate: declareFailpoint('reflink.import.after-create'),
  importVolumeAfterCopy: declareFailpoint('reflink.import-volume.after-copy'),
  removeMidway: declareFailpoint('reflink.remove.midway'),
};

interface Scan {
  clean: Stats | null;
  dirty: Stats | null;
  base: Stats | null;
  revisions: ClassifiedFile[];
  debris: ClassifiedFile[];
}

export class FileReflinkVolume extends Volume {
  declare readonly pool: FileReflinkPool;
  private _files: VolumeFiles | undefined;
  /** Where its files are; worked out when first asked (a daemon loads 40,000 volumes and touches few). */
  get files(): VolumeFiles {
    return (this._files ??= volumeFiles(this.pool.dirPath, this.vid, this.pool.flavor.naming, this.kind === 'volatile'));
  }

  private what(action: string): string {
    return `${this.where}: ${action}`;
  }

  /**
   * Runs a state change, turning OS errors (ENOSPC, EIO...) into
   * StoragePoolException (an error without a path names the volume's directory).
   */
  private async guarded<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      await this.pool.sweepOnce();
      return await fn();
    } catch (e) {
      throw storageError(this.what(action), e, this.files.dir);
    }
  }

  // ---- reading the directory -------------------------------------------

  /**
   * This volume's entries of its directory. Anything of ours that is not a
   * regular file (a symlink planted to make us read or write elsewhere, a
   * directory) is refused, never followed.
   */
  private async entries(): Promise<ClassifiedFile[]> {
    let dirents: import('node:fs').Dirent[];
    try {
      dirents = await fs.readdir(this.files.dir, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: ClassifiedFile[] = [];
    for (const d of dirents) {
      const c = classify(this.files, d.name);
      if (!c) continue;
      if (!d.isFile()) throw new StoragePoolException(this.what(`${c.file} is not a regular file (a symlink?); refusing to use it`));
      out.push(c);
    }
    return out;
  }

  /** A hard link made to another file is refused unless that file is a regular file (not a planted symlink). */
  private async checkRegular(file: string, what: string): Promise<void> {
    const st = await fs.lstat(file);
    if (!st.isFile()) throw new StoragePoolException(this.what(`${what} is not a regular file (a symlink?); refusing to use it`));
  }

  private async scan(): Promise<Scan> {
    const entries = await this.entries();
    const [clean, dirty, base] = await Promise.all([
      lstatOrNull(this.files.clean),
      lstatOrNull(this.files.dirty),
      lstatOrNull(this.files.base),
    ]);
    const revisions = entries.filter((e) => e.role === 'revision').sort((a, b) => a.id! - b.id!);
    const debris = entries.filter((e) => ['tmp', 'import', 'export'].includes(e.role));
    return { clean, dirty, base, revisions, debris };
  }

  /**
   * Turns whatever a crash left into the old or new state (see the header):
   * drops debris not held by this process, a base without a working copy,
   * revisions sharing the committed image's inode, and revisions past
   * revisions_to_keep.
   */
  private async recover(): Promise<Scan> {
    const s = await this.scan();
    let changed = false;
    for (const d of s.debris) {
      if (this.pool.isHeld(d.file)) continue;
      changed = (await unlinkIfExists(d.file)) || changed;
    }
    s.debris = s.debris.filter((d) => this.pool.isHeld(d.file));
    if (s.base && !s.dirty) {
      await unlinkIfExists(this.files.base);
      s.base = null;
      changed = true;
    }
    if (s.clean) {
      const ino = s.clean.ino;
      const kept: ClassifiedFile[] = [];
      for (const r of s.revisions) {
        const st = await lstatOrNull(r.file);
        if (st && st.ino === ino && st.dev === s.clean.dev) {
          await unlinkIfExists(r.file);
          changed = true;
        } else kept.push(r);
      }
      s.revisions = kept;
    }
    if (await this.prune(s)) changed = true;
    if (changed) await fsyncDir(this.files.dir);
    return s;
  }

  /** Removes the oldest revisions past revisions_to_keep; true if any went. */
  private async prune(s: Scan): Promise<boolean> {
    const keep = Math.max(this.revisions_to_keep, 0);
    let removed = false;
    while (s.revisions.length > keep) {
      const oldest = s.revisions.shift()!;
      await unlinkIfExists(oldest.file);
      removed = true;
    }
    return removed;
  }

  // ---- the contract ------------------------------------------------------

  override async path(): Promise<string> {
    return (await lstatOrNull(this.files.dirty)) ? this.files.dirty : this.files.clean;
  }

  /** The committed image other volumes snapshot or copy. */
  get committedImage(): string {
    return this.files.clean;
  }

  protected async doCreate(): Promise<void> {
    await this.guarded('create failed', async () => {
      await this.pool.ensureVolumeDir(this.files.dir);
      await this.recover();
      if (!(this.save_on_stop && !this.snap_on_start)) return; // made at start
      if (await lstatOrNull(this.files.clean))
        throw new StoragePoolException(this.what('already exists'));
      const tmp = this.files.tmp(randomSuffix());
      try {
        await createSparse(tmp, this.size);
        failpoint(FP.createBeforeRename);
        await fs.rename(tmp, this.files.clean);
      } catch (e) {
        await unlinkIfExists(tmp);
        throw e;
      }
      await fsyncDir(this.files.dir);
    });
  }

  protected async doRemove(): Promise<void> {
    await this.guarded('remove failed', async () => {
      const s = await this.recover();
      // Working files first, revisions oldest first, committed image last: a
      // crash midway leaves a valid volume with fewer revisions.
      await unlinkIfExists(this.files.dirty);
      await unlinkIfExists(this.files.base);
      for (const r of s.revisions) {
        await unlinkIfExists(r.file);
        failpoint(FP.removeMidway);
      }
      await unlinkIfExists(this.files.clean);
      await fsyncDir(this.files.dir).catch(ignoreMissing);
      await fs.rmdir(this.files.dir).catch(() => undefined); // only when empty
    });
  }

  protected async doStart(): Promise<void> {
    await this.guarded('start failed', async () => {
      await this.pool.ensureVolumeDir(this.files.dir);
      const s = await this.recover();
      if (s.dirty && this.save_on_stop) return; // uncommitted data from before a crash: keep it
      if (s.dirty || s.base) {
        // a stale snapshot or volatile image: start afresh
        await unlinkIfExists(this.files.dirty);
        await unlinkIfExists(this.files.base);
      }
      if (this.snap_on_start) return this.startSnapshot();
      if (this.save_on_stop) return this.startOrigin(s);
      return this.startVolatile();
    });
  }

  private async startSnapshot(): Promise<void> {
    const src = this.source as FileReflinkVolume;
    try {
      await fs.link(src.committedImage, this.files.base);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT')
        throw new StoragePoolException(this.what(`source volume ${src.vid} has no data yet`));
      throw e;
    }
    failpoint(FP.startAfterBaseLink);
    try {
      await this.checkRegular(this.files.base, `source ${src.vid}`);
      await this.installCopy(this.files.base, this.files.dirty, true, false);
    } catch (e) {
      await unlinkIfExists(this.files.base); // a failed start leaves nothing behind
      throw e;
    }
  }

  private async startOrigin(s: Scan): Promise<void> {
    if (!s.clean) throw new StoragePoolException(this.what('missing image file (volume not created?)'));
    if (this.revisions_to_keep === -1) {
      // Snapshots disabled: the domain writes the committed image in place.
      await fs.link(this.files.clean, this.files.dirty);
      await fsyncDir(this.files.dir);
      failpoint(FP.startAfterRename);
      return;
    }
    await this.installCopy(this.files.clean, this.files.dirty, false, true);
  }

  /** An empty image; nothing to make durable, a crash throws it away anyway. */
  private async startVolatile(): Promise<void> {
    const tmp = this.files.tmp(randomSuffix());
    try {
      await createSparse(tmp, this.size, false);
      await fs.rename(tmp, this.files.dirty);
    } catch (e) {
      await unlinkIfExists(tmp);
      throw e;
    }
    failpoint(FP.startAfterRename);
  }

  /**
   * Copies `from` to a temporary name, grows it to size if asked, renames it
   * to `to`. `durable`: fsync the copy and the directory; a working copy of
   * an origin must survive a crash, a snapshot's is thrown away after one.
   */
  private async installCopy(from: string, to: string, growToSize: boolean, durable: boolean): Promise<void> {
    const tmp = this.files.tmp(randomSuffix());
    try {
      await this.pool.copy(from, tmp, undefined, durable);
      if (growToSize) {
        const st = await fs.stat(tmp);
        if (st.size < this.size) await fs.truncate(tmp, this.size);
      }
      failpoint(FP.startAfterCopy);
      await fs.rename(tmp, to);
    } catch (e) {
      await unlinkIfExists(tmp);
      throw e;
    }
    if (durable) await fsyncDir(this.files.dir);
    failpoint(FP.startAfterRename);
  }

  protected async doStop(): Promise<void> {
    await this.guarded('stop failed', async () => {
      const s = await this.recover();
      if (!s.dirty) return; // not started: nothing to do
      if (!this.save_on_stop) {
        // No directory fsync: if a crash brings these back, the next start discards them.
        await unlinkIfExists(this.files.dirty);
        failpoint(FP.stopAfterUnlinkDirty);
        await unlinkIfExists(this.files.base);
        return;
      }
      await unlinkIfExists(this.files.base);
      if (s.clean && s.clean.ino === s.dirty.ino && s.clean.dev === s.dirty.dev) {
        // Written in place (revisions_to_keep=-1): make it durable, drop the second name.
        await fsyncFile(this.files.dirty);
        await unlinkIfExists(this.files.dirty);
        await fsyncDir(this.files.dir);
        return;
      }
      await this.commit(this.files.dirty, s);
    });
  }

  /**
   * Makes `newData` the committed image: the current one becomes the newest
   * revision (when revisions are kept), the oldest past the limit are pruned.
   */
  private async commit(newData: string, s: Scan): Promise<void> {
    await fsyncFile(newData);
    failpoint(FP.commitAfterFsync);
    const keep = Math.max(this.revisions_to_keep, 0);
    if (s.clean && keep > 0) {
      const next = (s.revisions.at(-1)?.id ?? 0) + 1;
      const time = utcNow();
      const file = this.files.revision(next, time);
      await fs.link(this.files.clean, file);
      await fsyncDir(this.files.dir);
      failpoint(FP.commitAfterRevisionLink);
      s.revisions.push({ role: 'revision', file, id: next, time });
    }
    await fs.rename(newData, this.files.clean);
    await fsyncDir(this.files.dir);
    failpoint(FP.commitAfterRename);
    await this.prune(s); // not fsynced: a revision a crash brings back is pruned again
    failpoint(FP.commitAfterPrune);
  }

  protected async doVerify(): Promise<boolean> {
    if (this.snap_on_start) {
      const src = this.source as FileReflinkVolume;
      if (!(await lstatOrNull(src.committedImage)))
        throw new StoragePoolException(this.what(`source volume ${src.vid} has no image`));
    } else if (this.save_on_stop && !(await lstatOrNull(this.files.clean))) {
      throw new StoragePoolException(this.what(`missing image file ${this.files.clean}`));
    }
    return true;
  }

  protected async doResize(size: number): Promise<void> {
    await this.guarded('resize failed', async () => {
      const s = await this.recover();
      const inPlacePair =
        s.clean && s.dirty && s.clean.ino === s.dirty.ino && s.clean.dev === s.dirty.dev;
      if (inPlacePair) {
        // revisions_to_keep=-1 while running: one inode, resized in place for both names.
        await this.truncateDurably(this.files.clean, size);
        return;
      }
      for (const [file, st] of [
        [this.files.dirty, s.dirty],
        [this.files.clean, s.clean],
      ] as const) {
        if (!st) continue;
        if (st.nlink === 1) {
          // Nobody else holds this inode: truncate is atomic and changes only us.
          await this.truncateDurably(file, size);
        } else {
          // Shared (an export or a running snapshot holds it): resize a copy.
          const tmp = this.files.tmp(randomSuffix());
          try {
            await this.pool.copy(file, tmp);
            await fs.truncate(tmp, size);
            await fsyncFile(tmp);
            failpoint(FP.resizeAfterCopy);
            await fs.rename(tmp, file);
          } catch (e) {
            await unlinkIfExists(tmp);
            throw e;
          }
          await fsyncDir(this.files.dir);
        }
      }
    });
  }

  /**
   * Keeping a revision: the cut data is a truncated copy (a reflink where the
   * filesystem can) committed as a stop commits, so the old image becomes the
   * newest revision by a hard link and a crash leaves the old or the new
   * state. Without revisions the image is cut in place, as a grow is resized.
   */
  protected override async doShrink(size: number, keepRevision: boolean): Promise<void> {
    if (!keepRevision) return this.doResize(size);
    await this.guarded('shrink failed', async () => {
      const s = await this.recover();
      if (!s.clean) throw new StoragePoolException(this.what('missing image file (volume not created?)'));
      const tmp = this.files.tmp(randomSuffix());
      try {
        await this.pool.copy(this.files.clean, tmp);
        await fs.truncate(tmp, size);
        failpoint(FP.shrinkAfterCopy);
        await this.commit(tmp, s);
      } catch (e) {
        await unlinkIfExists(tmp);
        throw e;
      }
    });
  }

  private async truncateDurably(file: string, size: number): Promise<void> {
    const fh = await fs.open(file, 'r+');
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    failpoint(FP.resizeAfterTruncate);
  }

  protected async doRevisions(): Promise<Revision[]> {
    const entries = await this.entries();
    // A revision that is a second name of the committed image is what a crash
    // left of a commit or revert (recover() drops it): not a revision.
    const clean = await lstatOrNull(this.files.clean);
    const leftover = async (f: string): Promise<boolean> => {
      const st = clean ? await lstatOrNull(f) : null;
      return !!st && st.ino === clean!.ino && st.dev === clean!.dev;
    };
    const revs: ClassifiedFile[] = [];
    for (const e of entries) if (e.role === 'revision' && !(await leftover(e.file))) revs.push(e);
    return revs
      .sort((a, b) => a.id! - b.id!)
      .map((e) => ({ id: String(e.id), time: e.time! }));
  }

  protected async doRevert(revision: string): Promise<void> {
    await this.guarded('revert failed', async () => {
      const s = await this.recover();
      const target = s.revisions.find((r) => String(r.id) === revision);
      if (!target) throw new StoragePoolException(this.what(`revision ${revision} vanished`));
      if (s.clean) {
        // Keep the current data as the newest revision, so the revert can be undone.
        const next = (s.revisions.at(-1)?.id ?? 0) + 1;
        await fs.link(this.files.clean, this.files.revision(next, utcNow()));
        await fsyncDir(this.files.dir);
        failpoint(FP.revertAfterRevisionLink);
      }
      await fs.rename(target.file, this.files.clean);
      await fsyncDir(this.files.dir);
      failpoint(FP.revertAfterRename);
    });
  }

  protected async doExport(): Promise<string> {
    return this.guarded('export failed', async () => {
      await this.recover();
      const image = this.snap_on_start && !this.save_on_stop
        ? (this.source as FileReflinkVolume).committedImage
        : this.files.clean;
      const link = this.files.exportLink(randomSuffix());
      try {
        await fs.link(image, link);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT')
          throw new StoragePoolException(this.what('nothing to export (no committed data)'));
        throw e;
      }
      try {
        await this.checkRegular(link, 'the committed image');
      } catch (e) {
        await unlinkIfExists(link);
        throw e;
      }
      this.pool.hold(link);
      return link;
    });
  }

  protected async doExportEnd(path: string): Promise<void> {
    if (!this.pool.isHeld(path)) throw new StoragePoolException(this.what(`not an export in progress: ${path}`));
    try {
      await unlinkIfExists(path);
    } catch (e) {
      throw storageError(this.what('ending the export failed'), e, path);
    } finally {
      this.pool.release(path); // if it could not go, the next open's sweep takes it
    }
  }

  protected async doImportData(size: number): Promise<string> {
    return this.guarded('import failed', async () => {
      await this.pool.ensureVolumeDir(this.files.dir);
      await this.recover();
      await createSparse(this.files.import, size);
      this.pool.hold(this.files.import);
      failpoint(FP.importAfterCreate);
      return this.files.import;
    });
  }

  protected async doImportDataEnd(success: boolean): Promise<void> {
    try {
      await this.guarded(success ? 'import failed' : 'dropping the import failed', async () => {
        if (!success) {
          await unlinkIfExists(this.files.import);
          await fsyncDir(this.files.dir);
          return;
        }
        const s = await this.scan();
        await this.commit(this.files.import, s);
      });
    } catch (e) {
      await unlinkIfExists(this.files.import).catch(() => undefined);
      throw e;
    } finally {
      this.pool.release(this.files.import);
    }
  }

  protected async doImportVolume(src: Volume, srcPath: string): Promise<void> {
    await this.guarded(`copy from ${src.vid} failed`, async () => {
      await this.pool.ensureVolumeDir(this.files.dir);
      const s = await this.recover();
      const tmp = this.files.tmp(randomSuffix());
      try {
        // Another pool may be on another filesystem: a sparse copy is always allowed there.
        await this.pool.copy(srcPath, tmp, src.pool !== this.pool || !this.pool.setupCheck);
        failpoint(FP.importVolumeAfterCopy);
        await this.commit(tmp, s);
      } catch (e) {
        await unlinkIfExists(tmp);
        throw e;
      }
    });
  }

  protected async doIsDirty(): Promise<boolean> {
    return (await lstatOrNull(this.files.dirty)) !== null;
  }

  protected async doIsOutdated(): Promise<boolean | null> {
    if (!this.snap_on_start) return false;
    const base = await lstatOrNull(this.files.base);
    if (!base) return false; // not running: the next start takes the current source
    const cur = await lstatOrNull((this.source as FileReflinkVolume).committedImage);
    return !cur || cur.ino !== base.ino || cur.dev !== base.dev;
  }

  /** An origin's committed image carries its size (see Volume.storedSize). */
  override async storedSize(): Promise<number | null> {
    if (!this.save_on_stop || this.snap_on_start) return null;
    return (await lstatOrNull(this.files.clean))?.size ?? null;
  }

  /**
   * usage, path and is_outdated from one round of concurrent lstat calls
   * (two for most volumes, instead of three one after another), read in the
   * turn's lstat batch (src/files/lstat-batch.ts): Info is the most frequent
   * call, and a worker-pool hand-off per lstat cost more CPU than the rest of
   * the call. Same answers as doUsage, path and doIsOutdated, read after the
   * call arrived.
   */
  protected override async liveInfo(): Promise<Pick<VolumeInfo, 'usage' | 'path' | 'is_outdated'>> {
    const found = await lstatEachInBatch(
      this.snap_on_start ? [this.files.dirty, this.files.clean, this.files.base] : [this.files.dirty, this.files.clean],
    );
    const dirty = found[0] ?? null;
    const clean = found[1] ?? null;
    const base = found[2] ?? null;
    let is_outdated = false;
    if (base) {
      const cur = await lstatInBatch((this.source as FileReflinkVolume).committedImage);
      is_outdated = !cur || cur.ino !== base.ino || cur.dev !== base.dev;
    }
    const image = dirty ?? clean;
    return { usage: image ? image.blocks * 512 : 0, path: dirty ? this.files.dirty : this.files.clean, is_outdated };
  }

  protected async doUsage(): Promise<number> {
    const dirty = await lstatOrNull(this.files.dirty);
    return dirty ? dirty.blocks * 512 : allocatedBytes(this.files.clean);
  }
}

function ignoreMissing(e: unknown): void {
  if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
}
