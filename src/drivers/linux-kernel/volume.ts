/**
 * A kernel volume: the files of one kernel version, `DIR/VERSION/vmlinuz`,
 * `initramfs` and optionally `modules.img`. The volume's vid is the version.
 * Nothing is ever written: create and remove touch nothing (the kernels
 * belong to the system, not to the domain), and every operation that would
 * change data is refused by the base class (the driver declares itself
 * read-only), so the mechanics below for them are never reached. A missing
 * version is found at start or verify, never when the volume object is made.
 *
 * The empty vid is a domain without a kernel (its `kernel` property empty:
 * it boots its own): as in Qubes the volume stays in the domain's set, with
 * no path, no usage, and start and verify with nothing to check.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { QubesValueError, StoragePoolException, storageError } from '../../storage/errors.js';
import type { Pool } from '../../storage/pool.js';
import { printable, Volume, type DomainRef, type Revision, type VolumeSpec } from '../../storage/volume.js';

/** Files a kernel version must have. */
export const KERNEL_FILES = ['vmlinuz', 'initramfs'] as const;
/** The optional image of kernel modules, attached as a disk. */
export const MODULES_IMG = 'modules.img';

const VERSION_RE = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$/;

/** A kernel version is one path component: no '/', no '..', printable. */
export function checkKernelVersion(version: string, where: string): void {
  if (!VERSION_RE.test(version) || version.includes('..'))
    throw new QubesValueError(`${where}: invalid kernel version '${printable(version)}' (one name of at most 64 letters, digits, '.', '_', '+', '-'; no '/' or '..')`);
}

async function statOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fs.stat(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
}

export class LinuxKernelVolume extends Volume {
  /** DIR/VERSION; null without a kernel (the empty vid). */
  readonly versionDir: string | null;

  constructor(pool: Pool, domain: DomainRef | null, kernelsDir: string, spec: VolumeSpec & { vid: string }) {
    if (spec.vid !== '') checkKernelVersion(spec.vid, `pool ${pool.name}`);
    super(pool, domain, spec.vid, spec);
    this.versionDir = spec.vid === '' ? null : path.join(kernelsDir, spec.vid);
  }

  protected override takesEmptyVid(): boolean {
    return true;
  }

  override get where(): string {
    return this.vid === '' ? `volume ${this.name} (no kernel) of pool ${this.pool?.name}` : super.where;
  }

  private refuse(what: string): StoragePoolException {
    const from = this.versionDir ? `kernel ${this.vid} comes from ${this.versionDir}` : 'and this one names no kernel';
    return new StoragePoolException(`${this.where}: cannot ${what}: kernel volumes are read-only (${from})`);
  }

  /** Throws unless vmlinuz and initramfs are regular files in DIR/VERSION (nothing to check without a kernel). */
  private async checkPresent(): Promise<void> {
    if (this.versionDir === null) return;
    try {
      const dir = await statOrNull(this.versionDir);
      if (!dir || !dir.isDirectory())
        throw new StoragePoolException(`${this.where}: kernel version '${this.vid}' not found (no directory ${this.versionDir})`);
      for (const f of KERNEL_FILES) {
        const st = await statOrNull(path.join(this.versionDir, f));
        if (!st || !st.isFile())
          throw new StoragePoolException(`${this.where}: kernel version '${this.vid}' is incomplete: ${f} missing in ${this.versionDir}`);
      }
    } catch (e) {
      throw storageError(this.where, e);
    }
  }

  /** The modules image when there is one, else the version directory; '' without a kernel. */
  async path(): Promise<string> {
    if (this.versionDir === null) return '';
    const img = path.join(this.versionDir, MODULES_IMG);
    const st = await statOrNull(img);
    return st?.isFile() ? img : this.versionDir;
  }

  // ---- mechanics ---------------------------------------------------------

  /** Nothing to make: the kernel is the system's. */
  protected async doCreate(): Promise<void> {}
  /** Nothing to remove: never delete a system kernel with a domain. */
  protected async doRemove(): Promise<void> {}
  protected async doStart(): Promise<void> {
    await this.checkPresent();
  }
  protected async doStop(): Promise<void> {}
  protected async doVerify(): Promise<boolean> {
    await this.checkPresent();
    return true;
  }
  // Never reached for a change of data: the base class refuses it first (writable: false).
  protected async doResize(_size: number): Promise<void> {
    throw this.refuse('resize');
  }
  protected async doRevisions(): Promise<Revision[]> {
    return [];
  }
  protected async doRevert(_revision: string): Promise<void> {
    throw this.refuse('revert');
  }
  /** A kernel is no image: there is nothing to export. */
  protected async doExport(): Promise<string> {
    throw this.refuse('export');
  }
  protected async doExportEnd(_path: string): Promise<void> {}
  protected async doImportData(_size: number): Promise<string> {
    throw this.refuse('import data');
  }
  protected async doImportDataEnd(_success: boolean): Promise<void> {
    throw this.refuse('import data');
  }
  protected async doImportVolume(_src: Volume): Promise<void> {
    throw this.refuse('import a volume');
  }
  protected async doIsDirty(): Promise<boolean> {
    return false;
  }
  protected async doIsOutdated(): Promise<boolean | null> {
    return false;
  }
  /** Bytes of the kernel's files (0 when the version is missing, or without a kernel). */
  protected async doUsage(): Promise<number> {
    return this.versionDir === null ? 0 : kernelBytes(this.versionDir);
  }
}

/** Sum of the sizes of vmlinuz, initramfs and modules.img present in `dir`. */
export async function kernelBytes(dir: string): Promise<number> {
  let total = 0;
  for (const f of [...KERNEL_FILES, MODULES_IMG]) {
    const st = await statOrNull(path.join(dir, f));
    if (st?.isFile()) total += st.size;
  }
  return total;
}
