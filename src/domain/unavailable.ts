/**
 * A pool whose driver cannot be used here (not installed, options its driver
 * refuses, or storage its checkUsable does not find: lvm_thin without LVM or
 * its volume group). It loads
 * with its configuration kept as written, so the state file survives a
 * round trip; its volumes exist as objects (their configuration is kept
 * too) but every operation that needs the driver fails with a
 * StoragePoolException naming the pool and the reason.
 */
import { StoragePoolException } from '../storage/errors.js';
import { placesWithoutDriver, type PoolPlace } from '../storage/places.js';
import type { OptionValue, PoolOptions } from '../storage/options.js';
import { Pool, UNDECLARED_CAPABILITIES } from '../storage/pool.js';
import { Volume, type DomainRef, type Revision, type VolumeSpec } from '../storage/volume.js';

export class UnavailablePool extends Pool {
  /** Why the pool cannot be used. */
  readonly reason: string;
  private readonly raw: PoolOptions;

  /**
   * `places`: those of the pool as its driver made it, when it was made (it
   * then failed its setup or its place check); else what the storage
   * contract assumes of a pool whose driver cannot answer
   * (places.ts placesWithoutDriver): a pool that cannot be used here still
   * keeps new pools out of its data.
   */
  constructor(name: string, driver: string, rawOptions: PoolOptions, reason: string, places?: readonly PoolPlace[]) {
    // Only the common options are interpreted (so revisions_to_keep reads right); the rest is kept raw.
    const common: PoolOptions = {};
    const rtk = Number(rawOptions['revisions_to_keep']);
    if (rawOptions['revisions_to_keep'] !== undefined && Number.isSafeInteger(rtk) && rtk >= -1) common['revisions_to_keep'] = rtk;
    const ev = String(rawOptions['ephemeral_volatile'] ?? '').toLowerCase();
    if (ev === 'true') common['ephemeral_volatile'] = true;
    // Shrink declared so that a shrink, like every other change, reaches the volume and is refused as unavailable.
    super(name, driver, common, { ...UNDECLARED_CAPABILITIES, shrink: true });
    this.raw = { ...rawOptions };
    this.reason = reason;
    this.knownPlaces = places ?? placesWithoutDriver(rawOptions);
  }
  private readonly knownPlaces: readonly PoolPlace[];

  override async places(): Promise<PoolPlace[]> {
    return [...this.knownPlaces];
  }

  /** Nothing, as before its places were known: they keep new pools out, they say nothing of its storage. */
  override async includedIn(_others: readonly Pool[]): Promise<Pool | null> {
    return null;
  }

  unavailableError(what: string): StoragePoolException {
    return new StoragePoolException(`pool ${this.name} (driver ${this.driver}) is unavailable: ${this.reason}; cannot ${what}`);
  }

  override config(): Record<string, OptionValue> {
    return { name: this.name, driver: this.driver, ...this.raw };
  }
  override setOption(key: string, value: OptionValue): void {
    this.raw[key] = value;
    super.setOption(key, value);
  }
  async setup(): Promise<void> {
    throw this.unavailableError('set it up');
  }
  async destroy(): Promise<void> {}
  initVolume(domain: DomainRef | null, spec: VolumeSpec): Volume {
    const vid = spec.vid ?? (domain ? `${domain.dirPrefix}/${domain.name}/${spec.name}` : spec.name);
    return new UnavailableVolume(this, domain, vid, spec);
  }
  async listVolumes(): Promise<string[]> {
    throw this.unavailableError('list its volumes');
  }
  async getVolume(_vid: string): Promise<Volume> {
    throw this.unavailableError('find a volume');
  }
  async size(): Promise<number | null> {
    return null;
  }
  async usage(): Promise<number | null> {
    return null;
  }
}

/** A volume of an unavailable pool: configuration only. */
export class UnavailableVolume extends Volume {
  private fail(what: string): never {
    throw (this.pool as UnavailablePool).unavailableError(`${what} volume ${this.vid}`);
  }
  async path(): Promise<string> {
    return '';
  }
  protected async doCreate(): Promise<void> {
    this.fail('create');
  }
  protected async doRemove(): Promise<void> {
    this.fail('remove');
  }
  protected async doStart(): Promise<void> {
    this.fail('start');
  }
  protected async doStop(): Promise<void> {
    this.fail('stop');
  }
  protected async doVerify(): Promise<boolean> {
    this.fail('verify');
  }
  protected async doResize(_size: number): Promise<void> {
    this.fail('resize');
  }
  protected override async doShrink(_size: number): Promise<void> {
    this.fail('resize');
  }
  protected async doRevisions(): Promise<Revision[]> {
    return [];
  }
  protected async doRevert(_revision: string): Promise<void> {
    this.fail('revert');
  }
  protected async doExport(): Promise<string> {
    this.fail('export');
  }
  protected async doExportEnd(_path: string): Promise<void> {}
  protected async doImportData(_size: number): Promise<string> {
    this.fail('import into');
  }
  protected async doImportDataEnd(_success: boolean): Promise<void> {}
  protected async doImportVolume(_src: Volume, _srcPath: string): Promise<void> {
    this.fail('import into');
  }
  protected async doIsDirty(): Promise<boolean> {
    return false;
  }
  protected async doIsOutdated(): Promise<boolean | null> {
    return null;
  }
  protected async doUsage(): Promise<number> {
    return 0;
  }
}
