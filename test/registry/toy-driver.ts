/**
 * A tiny driver for tests of the registry and of drivers that wrap others:
 * every volume is one file `DIR/VID.img`; a started volume has a `.dirty`
 * marker; one revision is kept as `VID.img.1` when the test puts it there.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
// Written as a driver outside this repository would be: everything from the package's public surface.
import {
  COMMON_POOL_OPTIONS,
  DRIVER_API_VERSION,
  Pool,
  StoragePoolException,
  Volume,
  exists,
  type DomainRef,
  type PoolOptions,
  type Revision,
  type StorageDriver,
  type VolumeSpec,
} from 'qubes-storage';

export class ToyPool extends Pool {
  constructor(name: string, options: PoolOptions) {
    super(name, 'toy', options);
  }
  get dir(): string {
    return String(this.options['dir_path']);
  }
  async setup(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
  }
  async destroy(): Promise<void> {}
  initVolume(domain: DomainRef | null, spec: VolumeSpec): ToyVolume {
    const vid = spec.vid ?? `${domain?.dirPrefix ?? 'other'}/${domain?.name ?? 'none'}/${spec.name}`;
    return new ToyVolume(this, domain, vid, spec);
  }
  async listVolumes(): Promise<string[]> {
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      const ents = await fs.readdir(path.join(this.dir, rel), { withFileTypes: true }).catch(() => []);
      for (const e of ents) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(r);
        else if (e.name.endsWith('.img')) out.push(r.slice(0, -4));
      }
    };
    await walk('');
    return out.sort();
  }
  async getVolume(vid: string): Promise<ToyVolume> {
    const st = await fs.stat(path.join(this.dir, `${vid}.img`));
    return new ToyVolume(this, null, vid, { name: path.basename(vid), vid, rw: true, save_on_stop: true, size: st.size });
  }
  async size(): Promise<number | null> {
    return null;
  }
  async usage(): Promise<number | null> {
    return 0;
  }
}

export class ToyVolume extends Volume {
  get file(): string {
    return path.join((this.pool as ToyPool).dir, `${this.vid}.img`);
  }
  async path(): Promise<string> {
    return this.file;
  }
  protected async doCreate(): Promise<void> {
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const fh = await fs.open(this.file, 'wx');
    await fh.truncate(this.size);
    await fh.close();
  }
  protected async doRemove(): Promise<void> {
    for (const f of [this.file, `${this.file}.1`, `${this.file}.dirty`, `${this.file}.import`]) await fs.rm(f, { force: true });
  }
  protected async doStart(): Promise<void> {
    if (!(await exists(this.file))) throw new StoragePoolException(`${this.where}: missing`);
    await fs.writeFile(`${this.file}.dirty`, '');
  }
  protected async doStop(): Promise<void> {
    await fs.rm(`${this.file}.dirty`, { force: true });
  }
  protected async doVerify(): Promise<boolean> {
    return exists(this.file);
  }
  protected async doResize(size: number): Promise<void> {
    await fs.truncate(this.file, size);
  }
  protected async doRevisions(): Promise<Revision[]> {
    return (await exists(`${this.file}.1`)) ? [{ id: '1', time: '2026-01-01T00:00:00Z' }] : [];
  }
  protected async doRevert(_revision: string): Promise<void> {
    const tmp = `${this.file}.swap`;
    await fs.rename(this.file, tmp);
    await fs.rename(`${this.file}.1`, this.file);
    await fs.rename(tmp, `${this.file}.1`);
  }
  protected async doExport(): Promise<string> {
    return this.file;
  }
  protected async doExportEnd(_path: string): Promise<void> {}
  protected async doImportData(size: number): Promise<string> {
    const p = `${this.file}.import`;
    const fh = await fs.open(p, 'w');
    await fh.truncate(size);
    await fh.close();
    return p;
  }
  protected async doImportDataEnd(success: boolean): Promise<void> {
    if (success) await fs.rename(`${this.file}.import`, this.file);
    else await fs.rm(`${this.file}.import`, { force: true });
  }
  protected async doImportVolume(src: Volume): Promise<void> {
    const from = await src.export();
    try {
      await fs.copyFile(from, this.file);
    } finally {
      await src.exportEnd(from);
    }
  }
  protected async doIsDirty(): Promise<boolean> {
    return exists(`${this.file}.dirty`);
  }
  protected async doIsOutdated(): Promise<boolean | null> {
    return null;
  }
  protected async doUsage(): Promise<number> {
    return (await fs.stat(this.file).catch(() => null))?.size ?? 0;
  }
}

export const toyDriver: StorageDriver = {
  name: 'toy',
  apiVersion: DRIVER_API_VERSION,
  description: 'test driver: one file per volume',
  options: [{ name: 'dir_path', type: 'path', required: true, help: 'where the files go' }, ...COMMON_POOL_OPTIONS],
  capabilities: { volumeKinds: ['volatile', 'origin', 'snapshot', 'origin_snapshot'], maxRevisions: 1, remote: false, writable: true },
  createPool: (name, options) => new ToyPool(name, options),
};
