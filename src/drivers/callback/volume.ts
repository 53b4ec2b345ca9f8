/**
 * A callback volume: a backend volume with the pool's commands run around
 * create, remove, start, stop, resize, revert and import. The rules of the
 * contract are checked by the base class (on this volume) and again by the
 * backend volume; the mechanics are the backend's public methods. Properties
 * are the backend's: this object only forwards.
 */
import {
  Volume,
  type BlockDevice,
  type DomainRef,
  type Revision,
  type VolumeConfig,
  type VolumeInfo,
} from '../../storage/volume.js';
import type { ExportSink } from '../../storage/export-sink.js';
import type { ImportWriter } from '../../storage/import-writer.js';
import type { CallbackPool, HookFacts } from './pool.js';

const bool = (b: boolean): string => (b ? 'True' : 'False');

export class CallbackVolume extends Volume {
  readonly backend: Volume;
  private readonly cbPool: CallbackPool;

  constructor(pool: CallbackPool, domain: DomainRef | null, backend: Volume, source: CallbackVolume | null) {
    const c = backend.config();
    super(pool, domain, backend.vid, {
      name: backend.name,
      vid: backend.vid,
      rw: backend.rw,
      snap_on_start: backend.snap_on_start,
      save_on_stop: backend.save_on_stop,
      size: backend.size,
      revisions_to_keep: c.revisions_to_keep ?? null,
      ephemeral: c.ephemeral ?? null,
      source,
    });
    this.backend = backend;
    this.cbPool = pool;
  }

  // ---- properties are the backend's ------------------------------------

  // The base constructor reads these before `backend` is set: fall back then.
  override get rw(): boolean {
    return this.backend ? this.backend.rw : super.rw;
  }
  override get size(): number {
    return this.backend ? this.backend.size : super.size;
  }
  override get revisions_to_keep(): number {
    return this.backend ? this.backend.revisions_to_keep : super.revisions_to_keep;
  }
  override get ephemeral(): boolean {
    return this.backend ? this.backend.ephemeral : super.ephemeral;
  }
  /** The backend volume maps its own data through dm-crypt when ephemeral (storage/ephemeral.ts), not this one. */
  protected override get mapsEphemeral(): boolean {
    return false;
  }
  override setRw(rw: boolean): void {
    this.backend.setRw(rw);
    super.setRw(rw);
  }
  override setRevisionsToKeep(n: number | null): void {
    this.backend.setRevisionsToKeep(n);
    super.setRevisionsToKeep(n);
  }
  override setEphemeral(e: boolean | null): void {
    this.backend.setEphemeral(e);
    super.setEphemeral(e);
  }
  /** The backend's data decides (see Volume.storedSize): a stale recorded size must not shrink it. */
  override storedSize(): Promise<number | null> {
    return this.backend.storedSize();
  }
  override config(): VolumeConfig {
    return { ...this.backend.config(), pool: this.pool.name };
  }
  override async info(): Promise<VolumeInfo> {
    return { ...(await this.backend.info()), pool: this.pool.name };
  }
  path(): Promise<string> {
    return this.backend.path();
  }
  override blockDevice(): Promise<BlockDevice> {
    return this.backend.blockDevice();
  }

  // ---- hooks -----------------------------------------------------------

  /** The volume's facts for its commands. */
  private facts(extra: HookFacts = {}): HookFacts {
    return {
      QS_VID: this.vid,
      QS_VOLUME_NAME: this.name,
      QS_DOMAIN: this.domain?.name ?? '',
      QS_SIZE: String(this.size),
      QS_RW: bool(this.rw),
      QS_SNAP_ON_START: bool(this.snap_on_start),
      QS_SAVE_ON_STOP: bool(this.save_on_stop),
      QS_SOURCE_VID: this.source?.vid ?? '',
      QS_REVISIONS_TO_KEEP: String(this.revisions_to_keep),
      ...extra,
    };
  }

  // ---- mechanics: the backend's public methods, with hooks around ----------

  protected doCreate(): Promise<void> {
    return this.cbPool.around('volume_create', this.where, this.facts(), () => this.backend.create());
  }
  protected doRemove(): Promise<void> {
    return this.cbPool.around('volume_remove', this.where, this.facts(), () => this.backend.remove());
  }
  protected doStart(): Promise<void> {
    return this.cbPool.around('volume_start', this.where, this.facts(), () => this.backend.start());
  }
  protected doStop(): Promise<void> {
    return this.cbPool.around('volume_stop', this.where, this.facts(), () => this.backend.stop());
  }
  protected doVerify(): Promise<boolean> {
    return this.backend.verify();
  }
  protected doResize(size: number): Promise<void> {
    return this.cbPool.around('volume_resize', this.where, this.facts({ QS_NEW_SIZE: String(size) }), () =>
      this.backend.resize(size),
    );
  }
  /** The backend's base class checks the shrink again and keeps the revision (same declaration). */
  protected override doShrink(size: number): Promise<void> {
    return this.cbPool.around('volume_resize', this.where, this.facts({ QS_NEW_SIZE: String(size) }), () =>
      this.backend.resize(size, { force: true }),
    );
  }
  protected doRevisions(): Promise<Revision[]> {
    return this.backend.revisions();
  }
  protected doRevert(revision: string): Promise<void> {
    return this.cbPool.around('volume_revert', this.where, this.facts({ QS_REVISION: revision }), () =>
      this.backend.revert(revision),
    );
  }
  protected doExport(): Promise<string> {
    return this.backend.export();
  }
  protected doExportEnd(path: string): Promise<void> {
    return this.backend.exportEnd(path);
  }
  /** As the backend: an rbd backend streams its image (no file in its tmp_dir). */
  override get readsExportsItself(): boolean {
    return this.backend ? this.backend.readsExportsItself : super.readsExportsItself;
  }
  protected override doExportInto(sink: ExportSink, signal?: AbortSignal): Promise<void> {
    return this.backend.exportInto(sink, signal);
  }
  /** As the backend: an rbd backend takes an import into its image (no file in its tmp_dir). */
  override get writesImportsItself(): boolean {
    return this.backend ? this.backend.writesImportsItself : super.writesImportsItself;
  }
  /** pre_volume_import runs here; post_volume_import when the import ends (doImportDataEnd). */
  protected async doImportData(size: number): Promise<string> {
    await this.preImport(size);
    return this.backend.importData(size);
  }
  /** The backend's own writer (its file's, or its storage's); the backend's importDataEnd finishes and closes it again, which does nothing. */
  protected override async doImportWriter(size: number): Promise<ImportWriter> {
    await this.preImport(size);
    return this.backend.importWriter(size);
  }
  private preImport(size: number): Promise<void> {
    return this.cbPool.runHook('pre_volume_import', this.where, this.facts({ QS_IMPORT: 'data', QS_IMPORT_SIZE: String(size) }), false);
  }
  protected async doImportDataEnd(success: boolean): Promise<void> {
    await this.backend.importDataEnd(success);
    await this.cbPool.runHook(
      'post_volume_import',
      this.where,
      this.facts({ QS_IMPORT: 'data', QS_SUCCESS: bool(success) }),
      true,
    );
  }
  protected doImportVolume(src: Volume): Promise<void> {
    const facts = this.facts({
      QS_IMPORT: 'volume',
      QS_IMPORT_SIZE: String(src.size),
      QS_SOURCE_POOL: src.pool.name,
      QS_IMPORT_VID: src.vid,
    });
    return this.cbPool.around('volume_import', this.where, facts, () => this.backend.importVolume(src));
  }
  protected doIsDirty(): Promise<boolean> {
    return this.backend.isDirty();
  }
  protected doIsOutdated(): Promise<boolean | null> {
    return this.backend.isOutdated();
  }
  protected doUsage(): Promise<number> {
    return this.backend.usage();
  }
}
