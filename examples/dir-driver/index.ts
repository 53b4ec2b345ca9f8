/**
 * An example out-of-tree storage driver: every volume is one sparse image
 * file in a directory, and it passes the driver conformance suite
 * (test/conformance/). Install the package next to qubes-storage and its
 * package.json makes the driver `dir` known; or name it in storage.conf
 * with `class=qubes-storage-dir-driver#dirDriver`.
 *
 * Files under dir_path, for a volume with id VID:
 *   VID.img          the committed data (volumes that keep data)
 *   VID.img.running  the working copy while the volume is started
 *   VID.img.base     a link to the source's data a snapshot started from
 *                    (is_outdated: the source committed since)
 *   VID.img@ID       a revision (its time: when the link was made)
 *   VID.img.import   data being imported
 * Every change is a rename of a complete, fsynced file, so a crash leaves
 * the old or the new data, never a mix.
 */
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import {
  COMMON_POOL_OPTIONS,
  DRIVER_API_VERSION,
  Pool,
  QubesException,
  QubesValueError,
  StoragePoolException,
  storageErrnoError,
  Volume,
  type DomainRef,
  type PoolOptions,
  type Revision,
  type StorageDriver,
  type VolumeSpec,
} from './qubes-storage.js';

const VID_RE = /^[A-Za-z0-9_][A-Za-z0-9_.+-]*(\/[A-Za-z0-9_][A-Za-z0-9_.+-]*)+$/;
const REVISION_RE = /^(.+\.img)@([0-9]+)$/;

async function statOrNull(p: string): Promise<import('node:fs').Stats | null> {
  return fs.stat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes `tmp` (complete, synced) the file `dest`, durably. */
async function install(tmp: string, dest: string): Promise<void> {
  await fsyncPath(tmp);
  await fs.rename(tmp, dest);
  await fsyncPath(path.dirname(dest));
}

/** A copy of `src` at `dest` (a reflink where the filesystem can), made under a temporary name. */
async function copyInto(src: string, dest: string): Promise<void> {
  const tmp = `${dest}.tmp`;
  await fs.rm(tmp, { force: true });
  await fs.copyFile(src, tmp, fsc.COPYFILE_FICLONE);
  await install(tmp, dest);
}

/** An empty sparse file of `size` bytes at `dest`, made under a temporary name. */
async function emptyInto(dest: string, size: number): Promise<void> {
  const tmp = `${dest}.tmp`;
  await fs.rm(tmp, { force: true });
  const fh = await fs.open(tmp, 'wx', 0o600);
  try {
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
  await install(tmp, dest);
}

export class DirPool extends Pool {
  constructor(name: string, options: PoolOptions) {
    super(name, 'dir', options);
  }
  get dir(): string {
    return String(this.options['dir_path']);
  }
  async setup(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o755 });
  }
  async destroy(): Promise<void> {}
  initVolume(domain: DomainRef | null, spec: VolumeSpec): DirVolume {
    const vid = spec.vid ?? (domain ? `${domain.dirPrefix}/${domain.name}/${spec.name}` : '');
    if (!VID_RE.test(vid)) throw new QubesValueError(`pool ${this.name}: volume id '${vid}' must be DIR/NAME`);
    return new DirVolume(this, domain, vid, spec);
  }
  /** Volumes with committed data: every VID.img below the directory. */
  async listVolumes(): Promise<string[]> {
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      const ents = await fs.readdir(path.join(this.dir, rel), { withFileTypes: true }).catch(() => []);
      for (const e of ents) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(r);
        else if (e.isFile() && e.name.endsWith('.img') && VID_RE.test(r.slice(0, -4))) out.push(r.slice(0, -4));
      }
    };
    await walk('');
    return out.sort();
  }
  async getVolume(vid: string): Promise<DirVolume> {
    const vol = this.initVolume(null, { name: path.basename(vid), vid, rw: true, save_on_stop: true });
    const st = await statOrNull(vol.file);
    if (!st) throw new StoragePoolException(`pool ${this.name}: no volume ${vid}`);
    return this.initVolume(null, { name: path.basename(vid), vid, rw: true, save_on_stop: true, size: st.size });
  }
  async size(): Promise<number | null> {
    const s = await fs.statfs(this.dir);
    return s.blocks * s.bsize;
  }
  async usage(): Promise<number | null> {
    const s = await fs.statfs(this.dir);
    return (s.blocks - s.bfree) * s.bsize;
  }
}

export class DirVolume extends Volume {
  /** The committed data. */
  get file(): string {
    return path.join((this.pool as DirPool).dir, `${this.vid}.img`);
  }
  private get running(): string {
    return `${this.file}.running`;
  }
  private get base(): string {
    return `${this.file}.base`;
  }
  private get importing(): string {
    return `${this.file}.import`;
  }
  private get sourceFile(): string {
    return (this.source as DirVolume).file;
  }

  /**
   * Runs a change; an OS error becomes a StoragePoolException naming the
   * volume and the action. Out of space, EIO and a read-only filesystem are
   * left to the volume contract, which says them in words for every driver.
   */
  private async guarded<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof QubesException || storageErrnoError(this.where, e)) throw e;
      throw new StoragePoolException(`${this.where}: ${action} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }

  async path(): Promise<string> {
    return this.save_on_stop && !(await statOrNull(this.running)) ? this.file : this.running;
  }
  override async storedSize(): Promise<number | null> {
    return this.save_on_stop ? ((await statOrNull(this.file))?.size ?? null) : null;
  }

  protected async doCreate(): Promise<void> {
    return this.guarded('create', async () => {
      if (!this.save_on_stop) return; // snapshots and volatile volumes get their data at start
      await fs.mkdir(path.dirname(this.file), { recursive: true });
      if (await statOrNull(this.file)) throw new StoragePoolException(`${this.where}: ${this.file} exists`);
      await emptyInto(this.file, this.size);
    });
  }

  protected async doRemove(): Promise<void> {
    return this.guarded('remove', async () => {
      for (const r of await this.revisionFiles()) await fs.rm(r.file, { force: true });
      for (const f of [this.running, this.base, this.importing, this.file]) await fs.rm(f, { force: true });
      await fs.rmdir(path.dirname(this.file)).catch(() => undefined); // the domain's directory, when empty
    });
  }

  protected async doStart(): Promise<void> {
    return this.guarded('start', async () => {
      await this.doVerify();
      // After a crash a started volume keeps its working copy: nothing written is lost.
      if (await statOrNull(this.running)) return;
      await fs.mkdir(path.dirname(this.file), { recursive: true });
      if (this.snap_on_start) {
        await fs.rm(this.base, { force: true });
        await fs.link(this.sourceFile, this.base);
        await copyInto(this.sourceFile, this.running);
      } else if (!this.save_on_stop) await emptyInto(this.running, this.size);
      else if (this.revisions_to_keep === -1) await fs.link(this.file, this.running); // in place: no copy
      else await copyInto(this.file, this.running);
    });
  }

  protected async doStop(): Promise<void> {
    return this.guarded('stop', async () => {
      if (!(await statOrNull(this.running))) return;
      if (!this.save_on_stop) await fs.rm(this.running);
      else if ((await fs.stat(this.running)).ino === (await statOrNull(this.file))?.ino) {
        await fsyncPath(this.file); // written in place
        await fs.rm(this.running);
      } else await this.commit(this.running);
      await fs.rm(this.base, { force: true });
    });
  }

  /** Makes `newData` the committed data; the old becomes the newest revision; the oldest past the limit go. */
  private async commit(newData: string): Promise<void> {
    const keep = Math.max(this.revisions_to_keep, 0);
    if (keep > 0 && (await statOrNull(this.file))) await fs.link(this.file, await this.nextRevisionFile());
    await install(newData, this.file);
    const revs = await this.revisionFiles();
    for (const r of revs.slice(0, Math.max(revs.length - keep, 0))) await fs.rm(r.file);
  }

  private async revisionFiles(): Promise<{ id: number; file: string; time: Date }[]> {
    const dir = path.dirname(this.file);
    const out = [];
    for (const name of await fs.readdir(dir).catch(() => [])) {
      const m = REVISION_RE.exec(name);
      if (m?.[1] !== path.basename(this.file)) continue;
      const file = path.join(dir, name);
      const st = await statOrNull(file);
      if (st) out.push({ id: Number(m[2]), file, time: st.ctime });
    }
    return out.sort((a, b) => a.id - b.id);
  }

  private async nextRevisionFile(): Promise<string> {
    const revs = await this.revisionFiles();
    return `${this.file}@${(revs.at(-1)?.id ?? 0) + 1}`;
  }

  protected async doVerify(): Promise<boolean> {
    const needed = this.snap_on_start ? this.sourceFile : this.save_on_stop ? this.file : null;
    if (needed && !(await statOrNull(needed))) throw new StoragePoolException(`${this.where}: missing image ${needed}`);
    return true;
  }

  protected async doResize(size: number): Promise<void> {
    return this.guarded('resize', async () => {
      if (this.save_on_stop) await fs.truncate(this.file, size);
      if (await statOrNull(this.running)) await fs.truncate(this.running, size);
    });
  }

  protected async doRevisions(): Promise<Revision[]> {
    return (await this.revisionFiles()).map((r) => ({ id: String(r.id), time: r.time.toISOString().replace(/\.\d+Z$/, 'Z') }));
  }

  protected async doRevert(revision: string): Promise<void> {
    return this.guarded('revert', async () => {
      const target = `${this.file}@${revision}`;
      await fs.link(this.file, await this.nextRevisionFile()); // the current data can be reverted to
      await fs.rename(target, this.file);
      await fsyncPath(path.dirname(this.file));
    });
  }

  /** The committed data: a started volume writes its working copy. */
  protected async doExport(): Promise<string> {
    return this.file;
  }
  protected async doExportEnd(): Promise<void> {}

  protected async doImportData(size: number): Promise<string> {
    return this.guarded('import', async () => {
      await fs.rm(this.importing, { force: true });
      await emptyInto(this.importing, size);
      return this.importing;
    });
  }
  protected async doImportDataEnd(success: boolean): Promise<void> {
    return this.guarded('import', async () => {
      if (success) await this.commit(this.importing);
      else await fs.rm(this.importing, { force: true });
    });
  }
  protected async doImportVolume(_src: Volume, srcPath: string): Promise<void> {
    return this.guarded('import', async () => {
      await copyInto(srcPath, this.importing);
      await this.commit(this.importing);
    });
  }

  protected async doIsDirty(): Promise<boolean> {
    return (await statOrNull(this.running)) !== null;
  }
  protected async doIsOutdated(): Promise<boolean | null> {
    if (!this.snap_on_start || !(await statOrNull(this.running))) return false;
    return (await statOrNull(this.base))?.ino !== (await statOrNull(this.sourceFile))?.ino;
  }
  protected async doUsage(): Promise<number> {
    let bytes = 0;
    for (const f of [this.file, this.running]) bytes += ((await statOrNull(f))?.blocks ?? 0) * 512;
    return bytes;
  }
}

export const dirDriver: StorageDriver = {
  name: 'dir',
  apiVersion: DRIVER_API_VERSION,
  description: 'example driver: one sparse image file per volume in a directory',
  options: [{ name: 'dir_path', type: 'path', required: true, help: 'directory holding the images' }, ...COMMON_POOL_OPTIONS],
  capabilities: {
    volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
    maxRevisions: Infinity,
    remote: false,
    writable: true,
  },
  createPool: (name, options) => new DirPool(name, options),
};
