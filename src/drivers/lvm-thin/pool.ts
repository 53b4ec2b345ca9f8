/**
 * The lvm_thin pool: volumes as thin volumes of the thin pool
 * `volume_group/thin_pool`, named as Qubes names them (see volume.ts and the
 * README). Every LVM change goes through this object, which keeps what `lvs`
 * reported for the volume group (the lvs cache) and applies its own changes
 * to it, so an operation costs one `lvs` at most: the cache is read again
 * when the device-mapper devices of the volume group (/dev/mapper) are not
 * the ones it left after its last change (another program changed the VG),
 * after any failed command, and for usage figures, which the domains' writes
 * change behind its back.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { processAlive } from '../../files/process.js';
import { QubesValueError, StoragePoolException } from '../../storage/errors.js';
import { KeyedMutex } from '../../storage/lock.js';
import type { PoolOptions } from '../../storage/options.js';
import type { PoolPlace } from '../../storage/places.js';
import { Pool, type UsageDetails } from '../../storage/pool.js';
import { checkVid, type DomainRef, type VolumeSpec } from '../../storage/volume.js';
import { deviceSize, LvmError, lvsArgs, parseLvs, runLvm, type LvInfo } from './lvm.js';
import { LVM_THIN_CAPABILITIES } from './options.js';
import { LvmThinVolume } from './volume.js';

/** LVM's name rules (VG and LV): letters, digits, + _ . -, not starting with '-'. */
const LVM_NAME_RE = /^[A-Za-z0-9_+.][A-Za-z0-9_+.-]{0,126}$/;
/** LV names of helper volumes: running copies, imports, revisions (never listed as volumes). */
export const HELPER_LV_RE = /-(snap|import|[0-9]+-back)$/;

export class LvmThinPool extends Pool {
  readonly vg: string;
  readonly thinPool: string;
  /** The lvs report of the VG, as this object last knew it; null: read it again. */
  private cache: Map<string, LvInfo> | null = null;
  /** /dev/mapper entries of this VG after the last change of ours (or the last read). */
  private knownDevices = '';
  private readonly dmPrefix: string;
  /** LVs whose LV-import an import of this process is writing (recovery leaves those alone). */
  readonly importing = new Set<string>();
  /**
   * This pool's LVM commands, one at a time (LVM serializes them on the VG
   * lock anyway): a read of lvs and the devices it records are never
   * interleaved with a change whose effect is not in the cache yet.
   */
  private readonly lvmLock = new KeyedMutex();

  constructor(name: string, options: PoolOptions) {
    super(name, 'lvm_thin', options, LVM_THIN_CAPABILITIES);
    this.vg = String(options['volume_group'] ?? '');
    this.thinPool = String(options['thin_pool'] ?? '');
    for (const [k, v] of [['volume_group', this.vg], ['thin_pool', this.thinPool]] as const)
      if (!LVM_NAME_RE.test(v) || v === '.' || v === '..')
        throw new QubesValueError(`pool ${name}: ${k} '${v.slice(0, 80)}' is not an LVM name (letters, digits, '+', '_', '.', '-'; not starting with '-')`);
    this.dmPrefix = `${this.vg.replaceAll('-', '--')}-`;
  }

  /** "VG/THIN_POOL", for messages. */
  get poolId(): string {
    return `${this.vg}/${this.thinPool}`;
  }

  /** The device node of an LV of this VG. */
  devPath(lv: string): string {
    return `/dev/${this.vg}/${lv}`;
  }

  // ---- the lvs cache -------------------------------------------------------------

  /** Names in /dev/mapper of this VG's active LVs (one readdir: no LVM command). */
  private async devices(): Promise<string> {
    const names = await fs.readdir('/dev/mapper').catch(() => [] as string[]);
    return names
      .filter((n) => n.startsWith(this.dmPrefix) && !n.slice(this.dmPrefix.length).startsWith('-'))
      .sort()
      .join('\n');
  }

  /** Reads `lvs` of the VG now. */
  scan(): Promise<Map<string, LvInfo>> {
    return this.lvmLock.run('vg', () => this.scanLocked());
  }

  private async scanLocked(): Promise<Map<string, LvInfo>> {
    this.cache = null;
    const out = await runLvm(lvsArgs(this.vg)).catch((e: unknown) => {
      throw this.lvmFailure(`reading the volume group ${this.vg}`, e);
    });
    let lvs: Map<string, LvInfo>;
    try {
      lvs = parseLvs(out, this.vg);
    } catch (e) {
      throw new StoragePoolException(`pool ${this.name}: lvm lvs ${this.vg}: ${(e as Error).message}`);
    }
    this.knownDevices = await this.devices();
    this.cache = lvs;
    return lvs;
  }

  /** The cached report, read again when the VG's devices changed behind our back. */
  async lvs(): Promise<Map<string, LvInfo>> {
    if (this.cache && (await this.devices()) === this.knownDevices) return this.cache;
    return this.scan();
  }

  /** An LVM failure as a StoragePoolException naming the pool, what was done and the command. */
  lvmFailure(what: string, e: unknown): StoragePoolException {
    if (e instanceof StoragePoolException) return e;
    const msg = e instanceof LvmError || e instanceof Error ? e.message : String(e);
    // A volume's step names the volume (and so the pool) already.
    return new StoragePoolException(`${what.startsWith('volume ') ? '' : `pool ${this.name}: `}${what}: ${msg}`, { cause: e });
  }

  /**
   * Runs an LVM change; on success applies `effect` to the cache (and
   * records the devices it left), on failure drops the cache.
   */
  change(what: string, args: string[], effect: (lvs: Map<string, LvInfo>) => void): Promise<void> {
    return this.lvmLock.run('vg', async () => {
      try {
        await runLvm(args);
      } catch (e) {
        this.cache = null;
        throw this.lvmFailure(what, e);
      }
      if (this.cache) {
        effect(this.cache);
        this.knownDevices = await this.devices();
      }
    });
  }

  /** A new thin volume `lv` of `size` bytes (LVM rounds it up to whole extents), active. */
  async createThin(lv: string, size: number, what: string): Promise<void> {
    const args = ['lvcreate', '--thin', '--setactivationskip=n', '--activate=y', `--name=${lv}`, `--virtualsize=${size}B`, '--', this.poolId];
    await this.change(`${what}: creating ${this.vg}/${lv}`, args, (c) => {
      c.set(lv, { name: lv, poolLv: this.thinPool, size, usage: 0, attr: 'Vwi-a-tz--', origin: '', metadataSize: null, metadataUsage: null });
    });
    // The rounded size, when it was rounded: from the LV itself (no LVM command).
    await this.refreshSize(lv);
  }

  /** A thin snapshot `lv` of `origin` (same thin pool), active. */
  async snapshot(origin: string, lv: string, what: string): Promise<void> {
    // A snapshot of a thin volume without a size is a thin snapshot (LVM 2.03 refuses --snapshot with --type=thin).
    const args = ['lvcreate', '--snapshot', '--setactivationskip=n', '--activate=y', `--name=${lv}`, '--', `${this.vg}/${origin}`];
    await this.change(`${what}: snapshot ${this.vg}/${origin} as ${lv}`, args, (c) => {
      const o = c.get(origin);
      c.set(lv, { name: lv, poolLv: this.thinPool, size: o?.size ?? 0, usage: o?.usage ?? 0, attr: 'Vwi-a-tz--', origin, metadataSize: null, metadataUsage: null });
    });
  }

  async rename(from: string, to: string, what: string): Promise<void> {
    await this.change(`${what}: renaming ${this.vg}/${from} to ${to}`, ['lvrename', '--', this.vg, from, to], (c) => {
      const o = c.get(from);
      c.delete(from);
      if (o) c.set(to, { ...o, name: to });
      for (const x of c.values()) if (x.origin === from) x.origin = to;
    });
  }

  /** Removes LVs in one command (none: nothing). */
  async remove(lvs: readonly string[], what: string): Promise<void> {
    if (lvs.length === 0) return;
    const args = ['lvremove', '--force', '--', ...lvs.map((lv) => `${this.vg}/${lv}`)];
    await this.change(`${what}: removing ${lvs.join(', ')}`, args, (c) => {
      for (const lv of lvs) c.delete(lv);
      for (const x of c.values()) if (lvs.includes(x.origin)) x.origin = '';
    });
  }

  /** Grows `lv` to `size` bytes (rounded up to extents by LVM). */
  async extend(lv: string, size: number, what: string): Promise<void> {
    await this.change(`${what}: growing ${this.vg}/${lv} to ${size} bytes`, ['lvextend', `--size=${size}B`, '--', `${this.vg}/${lv}`], (c) => {
      const o = c.get(lv);
      if (o) o.size = size;
    });
    await this.refreshSize(lv);
  }

  /** The size of an active LV from sysfs (512-byte sectors), into the cache. */
  private async refreshSize(lv: string): Promise<void> {
    const size = await deviceSize(this.devPath(lv));
    const o = this.cache?.get(lv);
    if (o && size !== null) o.size = size;
  }

  // ---- the pool contract -------------------------------------------------------------

  /** LV names in the volume group: Qubes' names start with `vm-`. */
  override async places(): Promise<PoolPlace[]> {
    return [{ kind: 'names', space: `LVM volume group ${this.vg}`, prefix: 'vm-', access: 'own', option: 'volume_group' }];
  }

  /** The thin pool must exist (Qubes: "Thin pool VG/POOL does not exist", "... is not a thin pool"). */
  override async setup(): Promise<void> {
    await this.checkUsable();
  }

  /**
   * Whether the pool can be used on this host: LVM installed, the volume
   * group and its thin pool there. The App calls it when it loads the pool
   * from the state; a failure keeps the pool listed, unavailable, with this
   * reason.
   */
  override async checkUsable(): Promise<void> {
    let lvs: Map<string, LvInfo>;
    try {
      lvs = await this.scan();
    } catch (e) {
      throw new StoragePoolException(`lvm_thin: thin pool ${this.poolId} cannot be read: ${(e as Error).message.replace(/^pool [^:]*: /, '')}`, { cause: e });
    }
    const tp = lvs.get(this.thinPool);
    if (!tp) throw new StoragePoolException(`lvm_thin: thin pool ${this.poolId} does not exist`);
    if (tp.attr[0] !== 't') throw new StoragePoolException(`lvm_thin: ${this.poolId} is not a thin pool (lv_attr ${tp.attr})`);
  }

  /** LVM volumes are the user's data: forgetting a pool removes nothing. */
  override async destroy(): Promise<void> {}

  override initVolume(domain: DomainRef | null, spec: VolumeSpec): LvmThinVolume {
    const vid = spec.vid ?? (domain ? `${this.vg}/vm-${domain.name}-${spec.name}` : '');
    if (!vid) throw new QubesValueError(`pool ${this.name}: volume ${spec.name} has neither vid nor domain`);
    this.checkOwnVid(vid);
    return new LvmThinVolume(this, domain, vid, spec);
  }

  /** A vid of this pool: VG/LV, LV a valid LVM name. */
  checkOwnVid(vid: string): void {
    checkVid(vid);
    const [vg, lv, ...rest] = vid.split('/');
    if (vg !== this.vg || !lv || rest.length || !LVM_NAME_RE.test(lv))
      throw new QubesValueError(`pool ${this.name}: volume id '${vid}' is not ${this.vg}/LV_NAME`);
  }

  /** Thin volumes of the thin pool, without running copies, imports and revisions (as Qubes lists them). */
  override async listVolumes(): Promise<string[]> {
    const out: string[] = [];
    for (const lv of (await this.lvs()).values())
      if (lv.poolLv === this.thinPool && !HELPER_LV_RE.test(lv.name)) out.push(`${this.vg}/${lv.name}`);
    return out.sort();
  }

  override async getVolume(vid: string): Promise<LvmThinVolume> {
    this.checkOwnVid(vid);
    const lv = (await this.lvs()).get(vid.split('/')[1]!);
    if (!lv || lv.poolLv !== this.thinPool) throw new StoragePoolException(`pool ${this.name}: no volume ${vid}`);
    return this.initVolume(null, { name: 'volume', vid, rw: true, save_on_stop: true, size: lv.size });
  }

  /** The thin pool's own report, read now (its usage changes as domains write). */
  private async thinPoolInfo(): Promise<LvInfo | null> {
    return (await this.scan()).get(this.thinPool) ?? null;
  }

  override async size(): Promise<number | null> {
    return (await this.thinPoolInfo().catch(() => null))?.size ?? null;
  }

  override async usage(): Promise<number | null> {
    return (await this.thinPoolInfo().catch(() => null))?.usage ?? null;
  }

  /**
   * As Qubes reports them: data_size and data_usage of the thin pool, and
   * metadata_size and metadata_usage of its metadata volume (a thin pool
   * whose metadata fills up fails every write: `qvm-pool usage` flags it
   * above the threshold as it flags data). One `lvs`.
   */
  override async usageDetails(): Promise<UsageDetails> {
    const tp = await this.thinPoolInfo();
    if (!tp) throw new StoragePoolException(`pool ${this.name}: thin pool ${this.poolId} does not exist`);
    const d: UsageDetails = { data_size: tp.size, data_usage: tp.usage ?? 0 };
    d['metadata_size'] = tp.metadataSize ?? 0;
    d['metadata_usage'] = tp.metadataUsage ?? 0;
    return d;
  }

  // ---- export files ------------------------------------------------------------------

  /** Directory of export files (copies of committed data handed to readers). */
  get tmpDir(): string {
    return os.tmpdir();
  }

  /** A new export file name; the pid lets a later process tell debris. */
  tmpFile(): string {
    return path.join(this.tmpDir, `qs-lvm-export-${process.pid}-${randomBytes(6).toString('hex')}.img`);
  }

  /** Export files of processes no longer alive (a crash during an export), and import LVs nobody finishes (volume.ts recovers those). */
  override async sweepLeftovers(): Promise<void> {
    const re = /^qs-lvm-export-([1-9][0-9]{0,9})-[0-9a-f]+\.img$/;
    for (const name of await fs.readdir(this.tmpDir).catch(() => [] as string[])) {
      const m = re.exec(name);
      if (!m || Number(m[1]) === process.pid || processAlive(Number(m[1]))) continue;
      await fs.rm(path.join(this.tmpDir, name), { force: true });
    }
  }
}
