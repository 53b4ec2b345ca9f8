/**
 * The file-reflink pool: volumes as image files under dir_path, laid out by
 * the domain's class (`appvms/NAME/`, `vm-templates/NAME/`). Copies are
 * reflinks; on a filesystem without reflink the pool is refused at setup
 * unless setup_check is false, and then copies are sparse.
 */
import type { Dirent, Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { forEachLimit } from '../../files/concurrency.js';
import { copyFileCow, exists, lstatOrNull, reflinkSupported, type CopyProgress } from '../../files/files.js';
import type { DriverCapabilities } from '../../storage/driver.js';
import { QubesValueError, StoragePoolException, storageError } from '../../storage/errors.js';
import type { PoolOptions } from '../../storage/options.js';
import type { PoolPlace } from '../../storage/places.js';
import { Pool } from '../../storage/pool.js';
import { checkVid, type DomainRef, type VolumeSpec } from '../../storage/volume.js';
import { FileReflinkVolume } from './volume.js';
import { FILE_STEM_RE, REFLINK_NAMING, TEMP_FILE_RE, type FileNaming } from './layout.js';
import { FILE_REFLINK_CAPABILITIES } from './options.js';

/**
 * Mode of the directories a pool makes (dir_path and its volume
 * directories, also parents of dir_path it has to make): the images are
 * the VMs' disks, for the daemon only; never world-writable (nor readable).
 * Directories that already exist keep their mode: they are the user's.
 */
export const POOL_DIR_MODE = 0o750;

/** What distinguishes the drivers built on this pool: file-reflink, file, xen. */
export interface FilePoolFlavor {
  readonly driver: string;
  readonly naming: FileNaming;
  /** Honour setup_check (refuse a filesystem without reflink); else always allow sparse copies. */
  readonly requireReflink: boolean;
  /** Class directories made at setup. */
  readonly classDirs: readonly string[];
  /** The driver's declaration (the base classes enforce it). */
  readonly capabilities: DriverCapabilities;
}

export const REFLINK_FLAVOR: FilePoolFlavor = {
  driver: 'file-reflink',
  naming: REFLINK_NAMING,
  requireReflink: true,
  classDirs: ['appvms', 'vm-templates'],
  capabilities: FILE_REFLINK_CAPABILITIES,
};

export class FileReflinkPool extends Pool {
  readonly flavor: FilePoolFlavor;
  /** Paths of import/export files this process is using (not debris). */
  private readonly held = new Set<string>();
  /** Called with copy progress (sparse copies only: reflinks are instant). */
  onCopyProgress: CopyProgress | undefined;

  constructor(name: string, options: PoolOptions, flavor: FilePoolFlavor = REFLINK_FLAVOR) {
    super(name, flavor.driver, options, flavor.capabilities);
    this.flavor = flavor;
    const dir = String(options['dir_path'] ?? '');
    if (!path.isAbsolute(dir)) throw new QubesValueError(`pool ${name}: dir_path must be an absolute path`);
  }

  get dirPath(): string {
    return path.resolve(String(this.options['dir_path']));
  }
  /** Copies must be reflinks (else they may be sparse copies). */
  get setupCheck(): boolean {
    return this.flavor.requireReflink && this.options['setup_check'] !== false;
  }

  /**
   * Removes what a crashed process left in the pool: temporary copies,
   * imports and exports (layout.ts TEMP_FILE_RE) anywhere under dir_path, and
   * reflink probes. Called when the App opens (it holds the state lock, so no
   * other process works in its pools and every such file not held by this
   * process is debris), and awaited before the first operation of this
   * process in the pool (a pool added later). Each volume also cleans its own
   * files at every operation; this catches debris of volumes nobody touches
   * next (e.g. the source of a copy, a volume removed from the state).
   */
  override sweepLeftovers(): Promise<void> {
    return this.sweepOnce();
  }

  /** sweepLeftovers, once per process (again after a failure). */
  sweepOnce(): Promise<void> {
    this.swept ??= this.sweep().catch((e: unknown) => {
      this.swept = undefined; // try again at the next operation
      throw e;
    });
    return this.swept;
  }
  private swept: Promise<void> | undefined;

  /**
   * Walks every directory under dir_path (vids have any depth); symlinks are
   * never followed (a Dirent's type is the entry's own) and only regular
   * files of the exact temporary names go.
   */
  private async sweep(): Promise<void> {
    await this.removeProbeDebris();
    // Level by level from the class folders (the pool writes nowhere else), LIST_CONCURRENCY
    // directories at a time (thousands of domain directories).
    for (let level = CLASS_FOLDERS.map((c) => path.join(this.dirPath, c)); level.length; ) {
      const next: string[] = [];
      await forEachLimit(level, LIST_CONCURRENCY, async (dir) => {
        for (const d of await readdirEntries(dir)) {
          const p = path.join(dir, d.name);
          if (d.isDirectory()) next.push(p);
          else if (d.isFile() && TEMP_FILE_RE.test(d.name) && !this.held.has(p)) await fs.unlink(p).catch(() => undefined);
        }
      });
      level = next;
    }
  }

  /** Files of a reflink check of setup (files.ts reflinkSupported) that a crash cut short. */
  private async removeProbeDebris(): Promise<void> {
    const probe = /^\.reflink-probe-[0-9a-f]+(-copy)?$/;
    for (const n of (await readdirOrEmpty(this.dirPath)).filter((x) => probe.test(x)))
      await fs.unlink(path.join(this.dirPath, n)).catch(() => undefined);
  }

  hold(file: string): void {
    this.held.add(file);
  }
  release(file: string): void {
    this.held.delete(file);
  }
  isHeld(file: string): boolean {
    return this.held.has(file);
  }

  /** Copies a file within the pool: reflink, or sparse where allowed. */
  async copy(from: string, to: string, allowSparse = !this.setupCheck, durable = true): Promise<void> {
    try {
      await copyFileCow(from, to, { allowSparse, onProgress: this.onCopyProgress, durable });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL')
        throw new StoragePoolException(
          `pool ${this.name}: the filesystem of ${this.dirPath} cannot make reflink copies; ` +
            `use a reflink filesystem (XFS, btrfs) or add the pool with setup_check=False`,
          { cause: e },
        );
      throw e;
    }
  }

  /**
   * Makes the directory of a volume (`dir_path/PREFIX/DOMAIN`), refusing any
   * component that is a symlink or not a directory, so nothing planted in the
   * pool can redirect writes outside it.
   */
  async ensureVolumeDir(dir: string): Promise<void> {
    const root = this.dirPath;
    const rel = path.relative(root, dir);
    if (rel.startsWith('..') || path.isAbsolute(rel))
      throw new StoragePoolException(`pool ${this.name}: ${dir} is outside ${root}`);
    await this.checkRealDir(root);
    let cur = root;
    for (const part of rel.split(path.sep).filter(Boolean)) {
      cur = path.join(cur, part);
      if (await this.checkRealDir(cur, true)) continue;
      try {
        await fs.mkdir(cur, { mode: POOL_DIR_MODE });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      await this.checkRealDir(cur);
    }
  }

  /** Refuses a symlink or non-directory at `dir`; with `mayBeMissing`, false when it is absent. */
  private async checkRealDir(dir: string, mayBeMissing = false): Promise<boolean> {
    let st;
    try {
      st = await fs.lstat(dir);
    } catch (e) {
      if (mayBeMissing && (e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw storageError(`pool ${this.name}: directory ${dir}`, e);
    }
    if (st.isSymbolicLink())
      throw new StoragePoolException(`pool ${this.name}: ${dir} is a symlink; refusing to follow it`);
    if (!st.isDirectory()) throw new StoragePoolException(`pool ${this.name}: ${dir} is not a directory`);
    return true;
  }

  /**
   * dir_path, owned but confined to the class folders (see
   * storage/places.ts): volumes, sweeps and listings stay in them, and the
   * only other writes are the uniquely named reflink probe files at the top.
   * So dir_path may be the base directory beside qubes.xml, as Qubes'
   * varlibqubes and R3.2 default pools are, and hold other pools outside
   * its class folders.
   */
  override async places(): Promise<PoolPlace[]> {
    return [{ kind: 'directory', path: this.dirPath, access: 'own', option: 'dir_path', confinedTo: CLASS_FOLDERS, entries: CLASS_FOLDER_ENTRIES }];
  }

  /**
   * Makes dir_path (and its missing parents) and the class directories, and
   * checks reflink (before the class directories, so a filesystem without
   * it gets none). A failure removes the directories it made again.
   */
  override async setup(): Promise<void> {
    const root = this.dirPath;
    const made: string[] = [];
    try {
      const st = await fs.lstat(root).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      });
      if (st?.isSymbolicLink())
        throw new StoragePoolException(`pool ${this.name}: dir_path ${root} is a symlink; give the real path`);
      const missing: string[] = [];
      for (let p = root; !(await exists(p)); p = path.dirname(p)) missing.unshift(p);
      for (const p of missing) {
        await fs.mkdir(p, { mode: POOL_DIR_MODE });
        made.push(p);
      }
      await this.removeProbeDebris();
      if (this.setupCheck && !(await reflinkSupported(root)))
        throw new StoragePoolException(
          `pool ${this.name}: the filesystem of ${root} does not support reflink; ` +
            `add the pool with setup_check=False to use sparse copies (slower, and copies use space)`,
        );
      for (const sub of this.flavor.classDirs) {
        const dir = path.join(root, sub);
        if (!(await exists(dir))) made.push(dir);
        await this.ensureVolumeDir(dir);
      }
    } catch (e) {
      await removeEmptyDirs(made);
      throw storageError(`pool ${this.name}: setup failed`, e);
    }
    this.madeBySetup = made;
  }
  /** Directories the last setup made (undoSetup removes them while empty). */
  private madeBySetup: string[] = [];

  override async undoSetup(): Promise<void> {
    await removeEmptyDirs(this.madeBySetup);
    this.madeBySetup = [];
  }

  override async destroy(): Promise<void> {
    // The images are the user's data: forgetting a pool never deletes them.
  }

  override initVolume(domain: DomainRef | null, spec: VolumeSpec): FileReflinkVolume {
    const vid = spec.vid ?? (domain ? `${domain.dirPrefix}/${domain.name}/${spec.name}` : '');
    if (!vid) throw new QubesValueError(`pool ${this.name}: volume ${spec.name} has neither vid nor domain`);
    checkVid(vid);
    if (vid.split('/').length < 2)
      throw new QubesValueError(`pool ${this.name}: volume id '${vid}' must be DIR/NAME (e.g. appvms/work/private)`);
    if (!CLASS_FOLDERS.includes(vid.split('/')[0]!))
      throw new QubesValueError(`pool ${this.name}: volume id '${vid}' must lie in a class folder (${CLASS_FOLDERS.join(', ')}): the pool writes nowhere else`);
    if (!FILE_STEM_RE.test(path.basename(vid)))
      throw new QubesValueError(
        `pool ${this.name}: volume id '${vid}': its last part names the image files and must be a letter, then letters, digits or '_'`,
      );
    return new FileReflinkVolume(this, domain, vid, spec);
  }

  /**
   * The vids of the images on disk (`PREFIX/DOMAIN/NAME.img`), also those this
   * process did not make; symlinks are not followed.
   *
   * A pool holds thousands of domain directories and a read of each costs
   * several system calls, so each directory's images are remembered with the
   * directory's inode, mtime and ctime; a later listing takes one lstat per
   * directory and reads again only those whose identity or times differ: any
   * entry made, removed or renamed in a directory changes its ctime and mtime,
   * by this process or from outside. A directory changed less than
   * LISTING_SETTLE_MS before it was looked at is not remembered (read again at
   * each listing): a timestamp has the filesystem's granularity (one second on
   * some), so a second change within it could leave the times as they were.
   * The lstats and reads run LIST_CONCURRENCY at a time, asynchronously (no
   * synchronous I/O on the daemon's paths: a slow filesystem must not stop
   * every other call).
   */
  override async listVolumes(): Promise<string[]> {
    const root = this.dirPath;
    const domainDirs: string[] = [];
    for (const prefix of CLASS_FOLDERS) {
      const st = await fs.lstat(path.join(root, prefix)).catch(() => null);
      if (!st?.isDirectory()) continue;
      // Names only: the lstat below tells the directories (a Dirent each would be 10,000 more objects).
      for (const name of await readdirOrEmpty(path.join(root, prefix))) domainDirs.push(`${prefix}/${name}`);
    }
    const known = this.listed;
    const listed = new Map<string, ListedDir>();
    const out: string[] = [];
    let reads = 0;
    await forEachLimit(domainDirs, LIST_CONCURRENCY, async (rel) => {
      // Taken before the lstat: a directory changed after it is never remembered as settled.
      const settledBefore = this.listingNow() - LISTING_SETTLE_MS;
      const dir = `${root}/${rel}`;
      const st = await lstatDir(dir);
      if (!st) return; // not a directory (a symlink included), or gone since the class folder was read
      const was = known.get(rel);
      let vids: readonly string[] | null;
      if (was && was.ino === st.ino && was.mtimeMs === st.mtimeMs && was.ctimeMs === st.ctimeMs) vids = was.vids;
      else {
        vids = await imagesIn(dir, rel);
        reads++;
      }
      if (vids === null) return;
      if (st.ctimeMs <= settledBefore && st.mtimeMs <= settledBefore)
        listed.set(rel, { ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, vids });
      for (const vid of vids) out.push(vid);
    });
    this.listed = listed;
    this.lastListingReads = reads;
    return out.sort();
  }
  /** What the last listing found in each settled domain directory (see listVolumes). */
  private listed = new Map<string, ListedDir>();
  /** How many domain directories the last listVolumes read (the others it remembered): for tests and the bench. */
  lastListingReads = 0;
  /** The clock listVolumes compares directory times with (tests move it on instead of waiting). */
  listingNow: () => number = Date.now;

  override async getVolume(vid: string): Promise<FileReflinkVolume> {
    checkVid(vid);
    const vol = this.initVolume(null, { name: path.basename(vid), vid, rw: true, save_on_stop: true, size: 0 });
    const st = await fs.stat(vol.files.clean).catch(() => null);
    if (!st) throw new StoragePoolException(`pool ${this.name}: no volume ${vid}`);
    return this.initVolume(null, { name: path.basename(vid), vid, rw: true, save_on_stop: true, size: st.size });
  }

  override async size(): Promise<number | null> {
    const s = await fs.statfs(this.dirPath).catch(() => null);
    return s ? s.blocks * s.bsize : null;
  }

  override async usage(): Promise<number | null> {
    const s = await fs.statfs(this.dirPath).catch(() => null);
    return s ? (s.blocks - s.bfree) * s.bsize : null;
  }
}

/**
 * The folders a file pool keeps volumes in: the class folders of every
 * flavor (an R3.2 xen directory, with servicevms/, may be reused by any).
 */
const CLASS_FOLDERS: readonly string[] = ['appvms', 'vm-templates', 'servicevms'];
/** What a class folder may hold when a pool moves in: domain directories (and an ext* mount point's lost+found). */
const CLASS_FOLDER_ENTRIES = /^([A-Za-z][A-Za-z0-9_.-]*|lost\+found)$/;


/** Removes the directories (made in this order) that are still empty, last first. */
async function removeEmptyDirs(made: readonly string[]): Promise<void> {
  for (const dir of [...made].reverse()) await fs.rmdir(dir).catch(() => undefined);
}

/** Domain directories the sweep reads at once. */
const LIST_CONCURRENCY = 16;
/**
 * How long a directory must have been unchanged before listVolumes remembers
 * its images: more than the coarsest timestamp granularity of the
 * filesystems a pool may be on (one second: ext4 with small inodes) and the
 * kernel's clock tick.
 */
export const LISTING_SETTLE_MS = 3000;
/** The committed image of a volume: NAME.img (volume names: see volume.ts). */
const IMAGE_NAME_RE = /^[A-Za-z][A-Za-z0-9_]*\.img$/;

/** A domain directory as listVolumes last saw it: its identity and times, and the vids of its images. */
interface ListedDir {
  readonly ino: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  readonly vids: readonly string[];
}

/** lstat of a directory; null when it is gone or is no directory (a symlink included). */
async function lstatDir(dir: string): Promise<Stats | null> {
  try {
    const st = await lstatOrNull(dir);
    return st?.isDirectory() ? st : null;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw e;
  }
}

/** The vids (`rel/NAME`) of the images (regular files NAME.img) in domain directory `dir`; null when it is gone or not a directory. */
async function imagesIn(dir: string, rel: string): Promise<string[] | null> {
  let entries: Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
  const out: string[] = [];
  for (const f of entries) if (f.isFile() && IMAGE_NAME_RE.test(f.name)) out.push(`${rel}/${f.name.slice(0, -'.img'.length)}`);
  return out;
}

/** A directory's entries with their types; none when it does not exist (any more). */
async function readdirEntries(dir: string): Promise<Dirent[]> {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw e;
  }
}
