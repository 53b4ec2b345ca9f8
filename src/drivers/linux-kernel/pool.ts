/**
 * A linux-kernel pool: a directory of kernels, one `VERSION/` directory each.
 * The pool owns nothing: setup checks the directory, destroy forgets it,
 * and its volumes are the versions found there.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { QubesValueError, StoragePoolException, storageError } from '../../storage/errors.js';
import type { OptionValue, PoolOptions } from '../../storage/options.js';
import { LINUX_KERNEL_CAPABILITIES } from './options.js';
import type { PoolPlace } from '../../storage/places.js';
import { Pool } from '../../storage/pool.js';
import type { DomainRef, VolumeSpec } from '../../storage/volume.js';
import { checkKernelVersion, kernelBytes, LinuxKernelVolume } from './volume.js';

/** Most versions looked at when listing (a kernels directory holds a few). */
export const MAX_KERNEL_VERSIONS = 4096;

export class LinuxKernelPool extends Pool {
  constructor(name: string, options: PoolOptions) {
    super(name, 'linux-kernel', options, LINUX_KERNEL_CAPABILITIES);
  }

  get dirPath(): string {
    return String(this.options['dir_path']);
  }

  /** The pool's revisions_to_keep (0: capabilities.maxRevisions) and ephemeral_volatile (False) are reported too. */
  override config(): Record<string, OptionValue> {
    return { ...super.config(), revisions_to_keep: 0, ephemeral_volatile: false };
  }

  /** dir_path, read only: other kernel pools may share it, no pool that writes may come near it. */
  override async places(): Promise<PoolPlace[]> {
    return [{ kind: 'directory', path: this.dirPath, access: 'read', option: 'dir_path' }];
  }

  async setup(): Promise<void> {
    let st;
    try {
      st = await fs.stat(this.dirPath);
    } catch (e) {
      throw storageError(`pool ${this.name}: kernels directory ${this.dirPath}`, e);
    }
    if (!st.isDirectory()) throw new StoragePoolException(`pool ${this.name}: ${this.dirPath} is not a directory`);
  }

  async destroy(): Promise<void> {}

  /**
   * A kernel volume for `spec.vid` (the version), checked for form only:
   * whether it exists is found at start or verify. The empty vid is a
   * domain without a kernel (Qubes keeps its kernel volume, with no
   * version). What the declaration rules out (rw, snap_on_start,
   * save_on_stop, revisions) the base class refuses.
   */
  initVolume(domain: DomainRef | null, spec: VolumeSpec): LinuxKernelVolume {
    const where = `pool ${this.name}`;
    if (spec.vid === undefined) throw new QubesValueError(`${where}: volume ${spec.name} needs a kernel version as its vid`);
    if (spec.vid !== '') checkKernelVersion(spec.vid, where);
    return new LinuxKernelVolume(this, domain, this.dirPath, { ...spec, vid: spec.vid });
  }

  /** Versions present: directories of DIR with a valid version name, sorted. */
  async listVolumes(): Promise<string[]> {
    let entries;
    try {
      entries = await fs.readdir(this.dirPath, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw storageError(`pool ${this.name}: listing ${this.dirPath}`, e);
    }
    const out: string[] = [];
    for (const ent of entries.slice(0, MAX_KERNEL_VERSIONS)) {
      try {
        checkKernelVersion(ent.name, '');
      } catch {
        continue;
      }
      const isDir = ent.isDirectory() || (ent.isSymbolicLink() && (await fs.stat(path.join(this.dirPath, ent.name)).catch(() => null))?.isDirectory());
      if (isDir) out.push(ent.name);
    }
    return out.sort();
  }

  async getVolume(vid: string): Promise<LinuxKernelVolume> {
    checkKernelVersion(vid, `pool ${this.name}`);
    const dir = path.join(this.dirPath, vid);
    const st = await fs.stat(dir).catch(() => null);
    if (!st?.isDirectory()) throw new StoragePoolException(`pool ${this.name}: no kernel version '${vid}' in ${this.dirPath}`);
    return this.initVolume(null, { name: 'kernel', vid, rw: false, size: await kernelBytes(dir) });
  }

  async size(): Promise<number | null> {
    return null;
  }

  /** Bytes of every kernel's files. */
  async usage(): Promise<number | null> {
    let total = 0;
    for (const v of await this.listVolumes()) total += await kernelBytes(path.join(this.dirPath, v));
    return total;
  }
}
