/**
 * The rbd pool: volumes as RBD images in a Ceph pool (optionally inside a
 * RADOS namespace), named `image_prefix` + the vid with '/' written as '='.
 * Several hosts (daemons) may use the same Ceph pool: a running volume is
 * held by an RBD lock naming the host (see volume.ts).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { processAlive } from '../../files/process.js';
import { QubesValueError, StoragePoolException } from '../../storage/errors.js';
import type { PoolOptions } from '../../storage/options.js';
import type { PoolPlace } from '../../storage/places.js';
import { Pool, type UsageDetails } from '../../storage/pool.js';
import { checkVid, type DomainRef, type VolumeSpec } from '../../storage/volume.js';
import { EEXIST, ENOENT, isErrno, RbdClient, type CephTarget } from './librbd.js';
import { RBD_CAPABILITIES } from './options.js';
import { RbdVolume } from './volume.js';

const PREFIX_RE = /^[A-Za-z0-9_.-]{0,64}$/;
const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;
/** Image names of volumes: prefix + vid with '/' as '=' (vids hold no '='); helper images carry '~'. */
const SEP = '=';

/** The image name of a vid (reversible: see vidOfImage). */
export function imageOfVid(prefix: string, vid: string): string {
  return prefix + vid.split('/').join(SEP);
}

/** The vid of an image name, or null when the image is not a volume of this prefix. */
export function vidOfImage(prefix: string, image: string): string | null {
  if (!image.startsWith(prefix) || image.includes('~')) return null;
  const vid = image.slice(prefix.length).split(SEP).join('/');
  try {
    checkVid(vid);
  } catch {
    return null;
  }
  return vid.includes('/') ? vid : null;
}

interface CephDf {
  stats: { total_bytes: number; total_used_raw_bytes: number; total_avail_bytes: number };
  pools: { name: string; stats: { stored: number; bytes_used: number; max_avail: number; objects: number } }[];
}

export class RbdPool extends Pool {
  /** The pool's cluster connection (made on first use, closed by close()/destroy()). */
  readonly rbd: RbdClient;
  readonly prefix: string;

  constructor(name: string, options: PoolOptions) {
    super(name, 'rbd', options, RBD_CAPABILITIES);
    const prefix = String(options['image_prefix'] ?? 'qubes-');
    if (!PREFIX_RE.test(prefix))
      throw new QubesValueError(`pool ${name}: image_prefix '${prefix}' may hold only letters, digits, '_', '.', '-' (at most 64)`);
    for (const key of ['ceph_pool', 'namespace'] as const) {
      const v = String(options[key] ?? '');
      if ((key === 'ceph_pool' || v !== '') && !NAME_RE.test(v))
        throw new QubesValueError(`pool ${name}: ${key} '${v}' may hold only letters, digits, '_', '.', '-'`);
    }
    const host = String(options['host_id'] ?? '');
    if (host.includes(' ') || host.length > 64)
      throw new QubesValueError(`pool ${name}: host_id must be at most 64 characters without spaces`);
    this.prefix = prefix;
    this.rbd = new RbdClient(this.target(), `pool ${name}`);
  }

  private target(): CephTarget {
    return {
      conf: String(this.options['ceph_conf'] ?? ''),
      clientId: String(this.options['client_id'] ?? ''),
      keyring: String(this.options['keyring'] ?? ''),
      pool: String(this.options['ceph_pool'] ?? 'rbd'),
      namespace: String(this.options['namespace'] ?? ''),
      timeoutS: Number(this.options['timeout'] ?? 30),
    };
  }

  override setOption(key: string, value: string | number | boolean): void {
    super.setOption(key, value);
    if (key === 'timeout') {
      // The timeouts are set when connecting: the next call connects anew with them.
      const old = this.rbd;
      (this as { rbd: RbdClient }).rbd = new RbdClient(this.target(), `pool ${this.name}`);
      void old.close();
    }
  }

  /**
   * This host's name in locks: host_id; when empty (a pool added before
   * host_id was filled in at add, or from storage.conf), the host name.
   */
  get hostId(): string {
    return String(this.options['host_id'] || os.hostname());
  }

  /**
   * At add, an empty host_id becomes HOSTNAME-RANDOM, saved with the pool:
   * unique per daemon (two daemons on one machine, each with its own state,
   * get different ones) and kept across restarts.
   */
  override addedOptions(): Record<string, string> {
    if (String(this.options['host_id'] ?? '') !== '') return {};
    const id = `${os.hostname().replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40)}-${randomBytes(6).toString('hex')}`;
    this.options['host_id'] = id;
    return { host_id: id };
  }
  /**
   * The host whose locks this host may break, or '': the pool option
   * break_stale_locks, else $QUBES_RBD_BREAK_STALE_LOCKS of this process (an
   * operator's explicit word for one command or one daemon run).
   */
  get breakLocksOf(): string {
    return String(this.options['break_stale_locks'] || process.env['QUBES_RBD_BREAK_STALE_LOCKS'] || '');
  }
  get tmpDir(): string {
    return String(this.options['tmp_dir'] || os.tmpdir());
  }

  /** A new name for an import or export file in tmp_dir; the pid lets a later process tell debris. */
  tmpFile(kind: 'import' | 'export'): string {
    return path.join(this.tmpDir, `qs-rbd-${kind}-${process.pid}-${Math.random().toString(16).slice(2, 14)}.img`);
  }

  /**
   * Once per process, before the first import or export: removes the import
   * and export files that processes no longer alive left in tmp_dir (a crash
   * or a kill in the middle of one).
   */
  override async sweepLeftovers(): Promise<void> {
    await this.sweepTmpOnce();
    // Running images a stop moved to the RBD trash whose removal a crash cut off (this prefix's helper images only).
    await this.purgeHelperTrash().catch(() => undefined);
  }

  /** Removes this prefix's helper images (NAME~...) from the RBD trash: stopped volumes' images a removal did not finish. */
  purgeHelperTrash(): Promise<void> {
    return this.rbd.purgeTrash((n) => n.startsWith(this.prefix) && n.includes('~'));
  }

  sweepTmpOnce(): Promise<void> {
    this.swept ??= this.sweepTmp().catch(() => undefined);
    return this.swept;
  }
  private swept: Promise<void> | undefined;

  private async sweepTmp(): Promise<void> {
    const re = /^qs-rbd-(?:import|export)-([1-9][0-9]{0,9})-[0-9a-f]+\.img$/;
    for (const name of await fs.readdir(this.tmpDir)) {
      const m = re.exec(name);
      if (!m || Number(m[1]) === process.pid || processAlive(Number(m[1]))) continue;
      await fs.rm(path.join(this.tmpDir, name), { force: true });
    }
  }

  imageOf(vid: string): string {
    return imageOfVid(this.prefix, vid);
  }

  /**
   * The image names of this pool: image_prefix in the Ceph pool and
   * namespace. tmp_dir is no place: the pool only makes uniquely named files
   * there (and sweeps only those of dead processes), beside anyone's.
   */
  override async places(): Promise<PoolPlace[]> {
    const t = this.rbd.target;
    const space = `Ceph pool ${t.pool}${t.namespace ? `, namespace ${t.namespace}` : ''}`;
    return [{ kind: 'names', space, prefix: this.prefix, access: 'own', option: 'image_prefix' }];
  }

  /** Checks that the Ceph pool answers; makes the namespace when it is missing. */
  override async setup(): Promise<void> {
    const t = this.rbd.target;
    if (t.namespace) {
      // Namespaces are listed and made in the Ceph pool itself, outside any namespace.
      const root = new RbdClient({ ...t, namespace: '' }, `pool ${this.name}`);
      try {
        if (!(await root.namespaces()).includes(t.namespace))
          await root.createNamespace(t.namespace).catch((e: unknown) => {
            if (!isErrno(e, EEXIST)) throw e;
          });
      } finally {
        await root.close();
      }
    }
    await this.listImages();
  }

  /** The images are the user's data: forgetting a pool never deletes them; its connection ends. */
  override async destroy(): Promise<void> {
    await this.prunesSettled();
    await this.rbd.close();
  }

  override async close(): Promise<void> {
    await this.prunesSettled();
    await this.rbd.close();
  }

  /**
   * Background work after an operation returned, by vid: the prune of a
   * volume's oldest revisions after a stop (RbdVolume.pruneLater). One
   * queued per volume at a time: the job takes the volume's lock and reads
   * the list afresh, so a job queued once covers every stop before it runs.
   */
  private readonly prunesQueued = new Map<string, Promise<void>>();
  /** The latest job of each vid, queued or running (removed once it settles). */
  private readonly prunesLast = new Map<string, Promise<void>>();
  private readonly prunesRunning = new Set<Promise<void>>();

  /**
   * Queues `job` for `vid` unless one is queued and has not started yet.
   * `job` calls `started()` once it holds the volume's lock and before it
   * reads the list: a stop after that queues a new job.
   */
  queuePrune(vid: string, job: (started: () => void) => Promise<void>): void {
    if (this.prunesQueued.has(vid)) return;
    // After the operation that queued it (and the others of the same domain stop) have settled, or 250 ms.
    const p: Promise<void> = this.rbd
      .quiet(250)
      .then(() =>
        // Outside the stop's session: that one closes its handles when the stop returns.
        this.rbd.detached(() =>
          job(() => {
            if (this.prunesQueued.get(vid) === p) this.prunesQueued.delete(vid);
          }),
        ),
      )
      .catch(() => undefined) // a failed prune is retried by the next stop or operation (recover)
      .finally(() => {
        if (this.prunesQueued.get(vid) === p) this.prunesQueued.delete(vid);
        if (this.prunesLast.get(vid) === p) this.prunesLast.delete(vid);
        this.prunesRunning.delete(p);
      });
    this.prunesQueued.set(vid, p);
    this.prunesLast.set(vid, p);
    this.prunesRunning.add(p);
  }

  /** Waits for the queued or running prune of `vid`, if any (a listing of its revisions waits for it). */
  async pruneOf(vid: string): Promise<void> {
    await this.prunesLast.get(vid);
  }

  /** Waits for every queued prune (close, tests, benchmarks). */
  async prunesSettled(): Promise<void> {
    while (this.prunesRunning.size) await Promise.all([...this.prunesRunning]);
  }

  /** Waits for all background work: queued prunes, then the RBD trash removals of stopped images. */
  async settled(): Promise<void> {
    await this.prunesSettled();
    await this.rbd.settled();
  }

  override initVolume(domain: DomainRef | null, spec: VolumeSpec): RbdVolume {
    const vid = spec.vid ?? (domain ? `${domain.dirPrefix}/${domain.name}/${spec.name}` : '');
    if (!vid) throw new QubesValueError(`pool ${this.name}: volume ${spec.name} has neither vid nor domain`);
    checkVid(vid);
    if (vid.split('/').length < 2)
      throw new QubesValueError(`pool ${this.name}: volume id '${vid}' must be DIR/NAME (e.g. appvms/work/private)`);
    return new RbdVolume(this, domain, vid, spec);
  }

  /** Image names in the pool (and namespace). */
  async listImages(): Promise<string[]> {
    return this.rbd.list();
  }

  override async listVolumes(): Promise<string[]> {
    const out: string[] = [];
    for (const img of await this.listImages()) {
      const vid = vidOfImage(this.prefix, img);
      if (vid) out.push(vid);
    }
    return out.sort();
  }

  override async getVolume(vid: string): Promise<RbdVolume> {
    checkVid(vid);
    let size: number;
    try {
      size = await this.rbd.withImage(this.imageOf(vid), (i) => i.size());
    } catch (e) {
      if (isErrno(e, ENOENT)) throw new StoragePoolException(`pool ${this.name}: no volume ${vid}`);
      throw e;
    }
    const name = vid.split('/').at(-1)!;
    return this.initVolume(null, { name, vid, rw: true, save_on_stop: true, size });
  }

  private async df(): Promise<{ total: number; used: number; pool: CephDf['pools'][number]['stats'] | null }> {
    const d = await this.rbd.monCommand<CephDf>({ prefix: 'df', format: 'json' });
    const p = d.pools.find((x) => x.name === this.rbd.target.pool);
    return { total: d.stats.total_bytes, used: d.stats.total_used_raw_bytes, pool: p?.stats ?? null };
  }

  /** Bytes the Ceph pool may hold: what it uses plus what it can still take (max_avail). */
  override async size(): Promise<number | null> {
    const d = await this.df().catch(() => null);
    return d?.pool ? d.pool.bytes_used + d.pool.max_avail : null;
  }

  override async usage(): Promise<number | null> {
    const d = await this.df().catch(() => null);
    return d?.pool ? d.pool.bytes_used : null;
  }

  /** From the monitors' `df`: the Ceph pool's size and usage, its stored bytes and objects, and the cluster's raw totals. */
  override async usageDetails(): Promise<UsageDetails> {
    const d = await this.df();
    const out: UsageDetails = {};
    if (d.pool) {
      out['data_size'] = d.pool.bytes_used + d.pool.max_avail;
      out['data_usage'] = d.pool.bytes_used;
      out['ceph_pool_stored'] = d.pool.stored;
      out['ceph_pool_objects'] = d.pool.objects;
    }
    out['cluster_size'] = d.total;
    out['cluster_usage'] = d.used;
    return out;
  }
}

