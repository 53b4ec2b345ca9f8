/**
 * A small binding of librados (librados.so.2) and librbd (librbd.so.1), both
 * from ceph-common, through koffi. One cluster connection per pool, made on
 * first use and kept until the pool is closed; one I/O context per
 * connection (the pool's Ceph pool and namespace). Every call that waits for
 * the cluster runs as a koffi async call, on a worker thread: the daemon's
 * event loop never waits for a monitor or an OSD. Errors are librbd's
 * negative errnos, turned into RbdError (errno plus a message naming the
 * image and the call).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createRequire } from 'node:module';
import { StoragePoolException } from '../../storage/errors.js';

type KoffiModule = typeof import('koffi');
type Fn = ((...args: unknown[]) => unknown) & { async: (...args: unknown[]) => void };
type Handle = unknown;

export const ENOENT = 2;
export const EIO = 5;
export const EBUSY = 16;
export const EEXIST = 17;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EROFS = 30;
export const ERANGE = 34;
export const ENOTEMPTY = 39;
export const EDQUOT = 122;
export const ETIMEDOUT = 110;
export const ESHUTDOWN = 108;
export const EBLOCKLISTED = 108;

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  2: 'ENOENT',
  5: 'EIO',
  13: 'EACCES',
  16: 'EBUSY',
  17: 'EEXIST',
  22: 'EINVAL',
  28: 'ENOSPC',
  30: 'EROFS',
  34: 'ERANGE',
  39: 'ENOTEMPTY',
  95: 'EOPNOTSUPP',
  108: 'ESHUTDOWN',
  110: 'ETIMEDOUT',
  116: 'ESTALE',
  122: 'EDQUOT',
};
const ERRNO_TEXT: Record<number, string> = {
  1: 'operation not permitted',
  2: 'no such image or snapshot',
  5: 'input/output error',
  13: 'permission denied (cephx caps?)',
  16: 'busy (in use, or has snapshots, watchers or children)',
  17: 'already exists',
  22: 'invalid argument',
  28: 'no space left in the Ceph cluster',
  30: 'read-only',
  34: 'result too large',
  39: 'not empty (snapshots left)',
  95: 'operation not supported by this cluster',
  108: 'this client was blocklisted by the cluster',
  110: 'the Ceph cluster did not answer in time (monitors or OSDs down or unreachable?)',
  116: 'the image was removed or replaced meanwhile',
  122: 'quota exceeded',
};

/** A failed librados/librbd call: its errno (positive) and a message naming what failed. */
export class RbdError extends StoragePoolException {
  /** Positive, as storageErrnoError reads it (no `code`: ENOENT here is no file error). */
  readonly errno: number;
  readonly timedOut: boolean;
  constructor(what: string, errno: number, text?: string) {
    super(`${what}: ${text ?? ERRNO_TEXT[errno] ?? `error ${errno}`} (${ERRNO_NAMES[errno] ?? `errno ${errno}`})`);
    this.errno = errno;
    this.timedOut = errno === ETIMEDOUT;
  }
}

/** True when `e` is a failed call with `errno`. */
export function isErrno(e: unknown, errno: number): boolean {
  return e instanceof RbdError && e.errno === errno;
}

interface Api {
  koffi: KoffiModule;
  rados_create2: Fn;
  rados_conf_read_file: Fn;
  rados_conf_set: Fn;
  rados_conf_parse_env: Fn;
  rados_connect: Fn;
  rados_shutdown: Fn;
  rados_ioctx_create: Fn;
  rados_ioctx_destroy: Fn;
  rados_ioctx_set_namespace: Fn;
  rados_blocklist_add: Fn;
  rados_stat: Fn;
  rados_read: Fn;
  rados_lock_exclusive: Fn;
  rados_list_lockers: Fn;
  rados_break_lock: Fn;
  rados_exec: Fn;
  rados_mon_command: Fn;
  rados_buffer_free: Fn;
  rados_getaddrs: Fn;
  rbd_image_options_create: Fn;
  rbd_image_options_destroy: Fn;
  rbd_image_options_set_uint64: Fn;
  rbd_create4: Fn;
  rbd_clone3: Fn;
  rbd_remove: Fn;
  rbd_rename: Fn;
  rbd_list: Fn;
  rbd_open: Fn;
  rbd_open_read_only: Fn;
  rbd_close: Fn;
  rbd_get_size: Fn;
  rbd_resize: Fn;
  rbd_get_id: Fn;
  rbd_trash_move: Fn;
  rbd_trash_remove: Fn;
  rbd_trash_list: Fn;
  rbd_trash_list_cleanup: Fn;
  trashInfo: unknown;
  rbd_get_parent_info2: Fn;
  rbd_snap_list: Fn;
  rbd_snap_list_end: Fn;
  rbd_snap_create: Fn;
  rbd_snap_remove: Fn;
  rbd_snap_rename: Fn;
  rbd_snap_rollback: Fn;
  rbd_snap_protect: Fn;
  rbd_list_lockers: Fn;
  rbd_lock_exclusive: Fn;
  rbd_break_lock: Fn;
  rbd_read2: Fn;
  rbd_write2: Fn;
  rbd_write_zeroes: Fn;
  rbd_flush: Fn;
  rbd_metadata_get: Fn;
  rbd_metadata_set: Fn;
  rbd_diff_iterate2: Fn;
  rbd_namespace_list: Fn;
  rbd_namespace_create: Fn;
  diffCallback: unknown;
  snapInfo: unknown;
}

let api: Api | undefined;

/** Loads koffi and the two libraries once per process; a clear error when they are missing. */
function loadApi(): Api {
  if (api) return api;
  let koffi: KoffiModule;
  try {
    koffi = createRequire(import.meta.url)('koffi') as KoffiModule;
  } catch (e) {
    throw new StoragePoolException(`rbd: cannot load koffi (reinstall with npm ci): ${(e as Error).message}`);
  }
  let rados: ReturnType<KoffiModule['load']>;
  let rbd: ReturnType<KoffiModule['load']>;
  try {
    rados = koffi.load('librados.so.2');
    rbd = koffi.load('librbd.so.1');
  } catch (e) {
    throw new StoragePoolException(
      `rbd: cannot load librados.so.2/librbd.so.1 (install the Debian package ceph-common): ${(e as Error).message}`,
    );
  }
  const opaque = (n: string): unknown => koffi.pointer(n, koffi.opaque());
  opaque('rados_t');
  opaque('rados_ioctx_t');
  opaque('rbd_image_t');
  opaque('rbd_image_options_t');
  const snapInfo = koffi.struct('rbd_snap_info_t', { id: 'uint64_t', size: 'uint64_t', name: 'const char *' });
  const trashInfo = koffi.struct('rbd_trash_image_info_t', {
    id: 'const char *',
    name: 'const char *',
    source: 'int',
    deletion_time: 'int64_t',
    deferment_end_time: 'int64_t',
  });
  const diffCallback = koffi.proto('int rbd_diff_cb(uint64_t ofs, size_t len, int exists, void *arg)');
  const r = (s: string): Fn => rados.func(s) as unknown as Fn;
  const b = (s: string): Fn => rbd.func(s) as unknown as Fn;
  api = {
    koffi,
    snapInfo,
    trashInfo,
    diffCallback,
    rados_create2: r('int rados_create2(_Out_ rados_t *cluster, const char *clustername, const char *name, uint64_t flags)'),
    rados_conf_read_file: r('int rados_conf_read_file(rados_t cluster, const char *path)'),
    rados_conf_set: r('int rados_conf_set(rados_t cluster, const char *option, const char *value)'),
    rados_conf_parse_env: r('int rados_conf_parse_env(rados_t cluster, const char *var)'),
    rados_connect: r('int rados_connect(rados_t cluster)'),
    rados_shutdown: r('void rados_shutdown(rados_t cluster)'),
    rados_ioctx_create: r('int rados_ioctx_create(rados_t cluster, const char *pool, _Out_ rados_ioctx_t *io)'),
    rados_ioctx_destroy: r('void rados_ioctx_destroy(rados_ioctx_t io)'),
    rados_ioctx_set_namespace: r('void rados_ioctx_set_namespace(rados_ioctx_t io, const char *ns)'),
    rados_blocklist_add: r('int rados_blocklist_add(rados_t cluster, const char *addr, uint32_t expire)'),
    rados_stat: r('int rados_stat(rados_ioctx_t io, const char *oid, _Out_ uint64_t *psize, _Out_ int64_t *pmtime)'),
    rados_read: r('int rados_read(rados_ioctx_t io, const char *oid, _Out_ uint8_t *buf, size_t len, uint64_t off)'),
    rados_lock_exclusive: r(
      'int rados_lock_exclusive(rados_ioctx_t io, const char *oid, const char *name, const char *cookie, const char *desc, void *duration, uint8_t flags)',
    ),
    rados_list_lockers: r(
      'long rados_list_lockers(rados_ioctx_t io, const char *oid, const char *name, _Out_ int *exclusive, _Out_ uint8_t *tag, _Inout_ size_t *tag_len, ' +
        '_Out_ uint8_t *clients, _Inout_ size_t *clients_len, _Out_ uint8_t *cookies, _Inout_ size_t *cookies_len, ' +
        '_Out_ uint8_t *addrs, _Inout_ size_t *addrs_len)',
    ),
    rados_break_lock: r('int rados_break_lock(rados_ioctx_t io, const char *oid, const char *name, const char *client, const char *cookie)'),
    rados_exec: r(
      'int rados_exec(rados_ioctx_t io, const char *oid, const char *cls, const char *method, const uint8_t *in_buf, size_t in_len, _Out_ uint8_t *buf, size_t out_len)',
    ),
    rados_mon_command: r(
      'int rados_mon_command(rados_t cluster, const char **cmd, size_t cmdlen, const char *inbuf, size_t inbuflen, ' +
        '_Out_ void **outbuf, _Out_ size_t *outbuflen, _Out_ void **outs, _Out_ size_t *outslen)',
    ),
    rados_buffer_free: r('void rados_buffer_free(void *buf)'),
    rados_getaddrs: r('int rados_getaddrs(rados_t cluster, _Out_ char **addrs)'),
    rbd_image_options_create: b('void rbd_image_options_create(_Out_ rbd_image_options_t *opts)'),
    rbd_image_options_destroy: b('void rbd_image_options_destroy(rbd_image_options_t opts)'),
    rbd_image_options_set_uint64: b('int rbd_image_options_set_uint64(rbd_image_options_t opts, int optname, uint64_t optval)'),
    rbd_create4: b('int rbd_create4(rados_ioctx_t io, const char *name, uint64_t size, rbd_image_options_t opts)'),
    rbd_clone3: b(
      'int rbd_clone3(rados_ioctx_t p_ioctx, const char *p_name, const char *p_snapname, rados_ioctx_t c_ioctx, const char *c_name, rbd_image_options_t c_opts)',
    ),
    rbd_remove: b('int rbd_remove(rados_ioctx_t io, const char *name)'),
    rbd_rename: b('int rbd_rename(rados_ioctx_t io, const char *srcname, const char *destname)'),
    rbd_list: b('int rbd_list(rados_ioctx_t io, _Out_ uint8_t *names, _Inout_ size_t *size)'),
    rbd_open: b('int rbd_open(rados_ioctx_t io, const char *name, _Out_ rbd_image_t *image, const char *snap_name)'),
    rbd_open_read_only: b('int rbd_open_read_only(rados_ioctx_t io, const char *name, _Out_ rbd_image_t *image, const char *snap_name)'),
    rbd_close: b('int rbd_close(rbd_image_t image)'),
    rbd_get_size: b('int rbd_get_size(rbd_image_t image, _Out_ uint64_t *size)'),
    // rbd_resize (shrinking allowed), not rbd_resize2: the latter calls its progress callback unconditionally (NULL: a crash).
    rbd_resize: b('int rbd_resize(rbd_image_t image, uint64_t size)'),
    rbd_get_id: b('int rbd_get_id(rbd_image_t image, _Out_ uint8_t *id, size_t len)'),
    rbd_trash_move: b('int rbd_trash_move(rados_ioctx_t io, const char *name, uint64_t delay)'),
    rbd_trash_remove: b('int rbd_trash_remove(rados_ioctx_t io, const char *id, bool force)'),
    rbd_trash_list: b('int rbd_trash_list(rados_ioctx_t io, void *entries, _Inout_ size_t *num)'),
    rbd_trash_list_cleanup: b('void rbd_trash_list_cleanup(void *entries, size_t num)'),
    rbd_get_parent_info2: b(
      'int rbd_get_parent_info2(rbd_image_t image, _Out_ uint8_t *pool, size_t poollen, _Out_ uint8_t *name, size_t namelen, ' +
        '_Out_ uint8_t *id, size_t idlen, _Out_ uint8_t *snap, size_t snaplen)',
    ),
    rbd_snap_list: b('int rbd_snap_list(rbd_image_t image, void *snaps, _Inout_ int *max_snaps)'),
    rbd_snap_list_end: b('void rbd_snap_list_end(void *snaps)'),
    rbd_snap_create: b('int rbd_snap_create(rbd_image_t image, const char *snapname)'),
    rbd_snap_remove: b('int rbd_snap_remove(rbd_image_t image, const char *snapname)'),
    rbd_snap_rename: b('int rbd_snap_rename(rbd_image_t image, const char *from, const char *to)'),
    rbd_snap_rollback: b('int rbd_snap_rollback(rbd_image_t image, const char *snapname)'),
    rbd_snap_protect: b('int rbd_snap_protect(rbd_image_t image, const char *snapname)'),
    rbd_list_lockers: b(
      'long rbd_list_lockers(rbd_image_t image, _Out_ int *exclusive, _Out_ uint8_t *tag, _Inout_ size_t *tag_len, ' +
        '_Out_ uint8_t *clients, _Inout_ size_t *clients_len, _Out_ uint8_t *cookies, _Inout_ size_t *cookies_len, ' +
        '_Out_ uint8_t *addrs, _Inout_ size_t *addrs_len)',
    ),
    rbd_lock_exclusive: b('int rbd_lock_exclusive(rbd_image_t image, const char *cookie)'),
    rbd_break_lock: b('int rbd_break_lock(rbd_image_t image, const char *client, const char *cookie)'),
    rbd_read2: b('long rbd_read2(rbd_image_t image, uint64_t ofs, size_t len, _Out_ uint8_t *buf, int op_flags)'),
    rbd_write2: b('long rbd_write2(rbd_image_t image, uint64_t ofs, size_t len, const uint8_t *buf, int op_flags)'),
    rbd_write_zeroes: b('int rbd_write_zeroes(rbd_image_t image, uint64_t ofs, uint64_t len, int zero_flags, int op_flags)'),
    rbd_flush: b('int rbd_flush(rbd_image_t image)'),
    rbd_metadata_get: b('int rbd_metadata_get(rbd_image_t image, const char *key, _Out_ uint8_t *value, _Inout_ size_t *val_len)'),
    rbd_metadata_set: b('int rbd_metadata_set(rbd_image_t image, const char *key, const char *value)'),
    rbd_diff_iterate2: b(
      'int rbd_diff_iterate2(rbd_image_t image, const char *fromsnap, uint64_t ofs, uint64_t len, uint8_t include_parent, ' +
        'uint8_t whole_object, rbd_diff_cb *cb, void *arg)',
    ),
    rbd_namespace_list: b('int rbd_namespace_list(rados_ioctx_t io, _Out_ uint8_t *names, _Inout_ size_t *size)'),
    rbd_namespace_create: b('int rbd_namespace_create(rados_ioctx_t io, const char *name)'),
  };
  return api;
}

/** QS_RBD_TRACE=1: every call and its duration on stderr (a debugging aid). */
const TRACE = process.env['QS_RBD_TRACE'] === '1';

/**
 * Calls that waited for the cluster (run on a worker thread) in this process,
 * and how many of them opened an image: what the bench reports per operation.
 */
export const rbdCallCounts = { calls: 0, opens: 0 };

/** Runs `fn` on a koffi worker thread; resolves with its return value. */
function onWorker(fn: Fn, ...args: unknown[]): Promise<number> {
  const t0 = TRACE ? performance.now() : 0;
  rbdCallCounts.calls++;
  if (fn === api?.rbd_open || fn === api?.rbd_open_read_only) rbdCallCounts.opens++;
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, res: unknown) => {
      if (TRACE) process.stderr.write(`rbd-trace ${(performance.now() - t0).toFixed(1)}ms ${String((fn as { info?: { name?: string } }).info?.name ?? '')} ${typeof args[1] === 'string' ? args[1] : ''}\n`);
      if (err) reject(err instanceof Error ? err : new Error(JSON.stringify(err)));
      else resolve(Number(res));
    });
  });
}

/**
 * Clusters made in this process and not shut down yet. A process that ends
 * with one (a test that never closed its pool, a call still waiting on a
 * dead OSD) must not run librados' C++ static destructors: they free what
 * the cluster's own threads still use, and the process died of SIGSEGV at
 * exit after every test had passed. So it ends through `_exit` instead,
 * after every other exit handler registered before the first cluster (the
 * test runner's among them); stdout and stderr, pipes or files, are written
 * synchronously on Linux, so nothing written is lost.
 */
const liveClusters = new Set<Handle>();
let exitGuarded = false;

function clusterMade(cluster: Handle): void {
  liveClusters.add(cluster);
  if (exitGuarded) return;
  exitGuarded = true;
  const a = loadApi();
  const exitNow = a.koffi.load('libc.so.6').func('void _exit(int status)') as unknown as (status: number) => void;
  process.on('exit', (code) => {
    if (liveClusters.size > 0) exitNow(typeof process.exitCode === 'number' ? process.exitCode : code);
  });
}

function shutdownCluster(cluster: Handle): Promise<void> {
  return onWorker(loadApi().rados_shutdown, cluster).then(
    () => void liveClusters.delete(cluster),
    () => undefined,
  );
}

/** NUL-separated strings of the first `len` bytes of `buf`. */
function cstrings(buf: Buffer, len: number): string[] {
  return buf
    .subarray(0, len)
    .toString('utf8')
    .split('\0')
    .filter((s) => s !== '');
}
function cstring(buf: Buffer): string {
  const z = buf.indexOf(0);
  return buf.subarray(0, z < 0 ? buf.length : z).toString('utf8');
}

/** How to reach the cluster and where in it the images are. */
export interface CephTarget {
  /** ceph.conf path; '' = the Ceph default (/etc/ceph/ceph.conf or $CEPH_CONF). */
  readonly conf: string;
  /** Client id (the NAME of client.NAME); '' = admin. */
  readonly clientId: string;
  /** Keyring path; '' = what ceph.conf says. */
  readonly keyring: string;
  /** Ceph (RADOS) pool. */
  readonly pool: string;
  /** RADOS namespace inside the pool; '' = none. */
  readonly namespace: string;
  /** Seconds a call may wait for a monitor or an OSD before it fails. */
  readonly timeoutS: number;
}

export interface SnapInfo {
  id: number;
  name: string;
  size: number;
}
export interface Locker {
  /** Cookie: `qubes:HOST` for ours. */
  id: string;
  /** client.N */
  locker: string;
  address: string;
}
export interface ParentInfo {
  pool: string;
  image: string;
  snapshot: string;
}

/** Image features: layering only (see volume.ts: exclusive-lock would fight the advisory lock). */
const FEATURE_LAYERING = 1;
const OPT_FORMAT = 0;
const OPT_FEATURES = 1;
/** RBD_IMAGE_OPTION_CLONE_FORMAT (librbd >= mimic). */
const OPT_CLONE_FORMAT = 12;
/** Big reads and writes: one object (4 MiB, the default object size) per call. */
export const IO_CHUNK = 4 * 1024 * 1024;

/**
 * One connection to a Ceph cluster and one I/O context in the pool's Ceph
 * pool and namespace, made on first use (connect is a round trip to the
 * monitors) and shared by every operation of the pool until close().
 */
export class RbdClient {
  private conn: Promise<{ cluster: Handle; io: Handle }> | null = null;
  /** Connections given up after a timeout; shut down at close(). */
  private readonly retired: { cluster: Handle; io: Handle }[] = [];
  private closed = false;
  private inflight = 0;
  private idle: (() => void) | null = null;
  private readonly quietWaiters: (() => void)[] = [];

  /**
   * Resolves once no call is in flight, or after `maxMs`: background work
   * (a prune after a stop) waits for the operation that queued it, e.g. the
   * other volumes of the same domain's stop, and never much longer.
   */
  quiet(maxMs: number): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        const k = this.quietWaiters.indexOf(done);
        if (k >= 0) this.quietWaiters.splice(k, 1);
        resolve();
      };
      const timer = setTimeout(done, maxMs);
      timer.unref();
      this.quietWaiters.push(done);
    });
  }

  constructor(
    readonly target: CephTarget,
    /** "pool NAME", for messages. */
    readonly where: string,
  ) {}

  /** pool/[namespace/]image[@snap], for messages and QEMU paths. */
  spec(image: string, snap?: string): string {
    const ns = this.target.namespace ? `${this.target.namespace}/` : '';
    return `${this.target.pool}/${ns}${image}${snap ? `@${snap}` : ''}`;
  }

  private fail(what: string, rc: number): never {
    const text =
      -rc === ETIMEDOUT ? `the Ceph cluster did not answer within ${this.target.timeoutS} s (monitors or OSDs down or unreachable?)` : undefined;
    throw new RbdError(`${this.where}: ${what}`, -rc, text);
  }

  private connect(): Promise<{ cluster: Handle; io: Handle }> {
    if (this.closed) return Promise.reject(new StoragePoolException(`${this.where}: the Ceph connection is closed`));
    this.conn ??= this.doConnect().catch((e: unknown) => {
      this.conn = null; // the next call tries again (the cluster may be back)
      throw e;
    });
    return this.conn;
  }

  private async doConnect(): Promise<{ cluster: Handle; io: Handle }> {
    const a = loadApi();
    const t = this.target;
    const out: Handle[] = [null];
    let rc = a.rados_create2(out, 'ceph', `client.${t.clientId || 'admin'}`, 0) as number;
    if (rc < 0) this.fail('creating the Ceph client', rc);
    const cluster = out[0];
    clusterMade(cluster);
    let connected = false;
    try {
      rc = (await onWorker(a.rados_conf_read_file, cluster, t.conf || null)) as number;
      if (rc < 0) this.fail(`reading ${t.conf || 'the default ceph.conf'}`, rc);
      a.rados_conf_parse_env(cluster, null);
      const set = (k: string, v: string): void => {
        const r = a.rados_conf_set(cluster, k, v) as number;
        if (r < 0) this.fail(`setting ${k}`, r);
      };
      if (t.keyring) set('keyring', t.keyring);
      const s = String(t.timeoutS);
      set('rados_osd_op_timeout', s);
      set('rados_mon_op_timeout', s);
      set('client_mount_timeout', s);
      // Breaking a lock fences its holder only when we say so (lockBreak's blocklist argument).
      set('rbd_blocklist_on_break_lock', 'false');
      rc = await onWorker(a.rados_connect, cluster);
      if (rc < 0) this.fail(`connecting to the Ceph cluster${t.conf ? ` of ${t.conf}` : ''}`, rc);
      connected = true;
      const io: Handle[] = [null];
      rc = (await onWorker(a.rados_ioctx_create, cluster, t.pool, io)) as number;
      if (rc < 0) this.fail(`opening the Ceph pool ${t.pool}`, rc);
      if (t.namespace) a.rados_ioctx_set_namespace(io[0], t.namespace);
      return { cluster, io: io[0] };
    } catch (e) {
      if (!connected || e) void shutdownCluster(cluster);
      throw e;
    }
  }

  /**
   * Ends the connection once the calls in flight are done. A closed client
   * refuses further calls (the pool object is gone).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const conn = this.conn;
    this.conn = null;
    if (!conn && this.retired.length === 0) return;
    await Promise.all([...this.background]);
    if (this.inflight > 0) await new Promise<void>((r) => (this.idle = r));
    const c = conn ? await conn.catch(() => null) : null;
    const a = loadApi();
    for (const x of [...this.retired.splice(0), ...(c ? [c] : [])]) {
      a.rados_ioctx_destroy(x.io);
      await shutdownCluster(x.cluster);
    }
  }

  /** Counts a call in flight, so close() waits for it. */
  private async track<T>(fn: (c: { cluster: Handle; io: Handle }, a: Api) => Promise<T>): Promise<T> {
    const conn = this.connect();
    const c = await conn;
    this.inflight++;
    try {
      return await fn(c, loadApi());
    } catch (e) {
      // A call that timed out leaves a connection that may hold a stale view of the
      // cluster (an OSD restarted elsewhere): the next call connects afresh, as a new
      // `rbd` process would. The old one is shut down at close().
      if (e instanceof RbdError && e.timedOut && this.conn === conn) {
        this.conn = null;
        this.retired.push(c);
      }
      throw e;
    } finally {
      if (--this.inflight === 0) for (const w of this.quietWaiters.splice(0)) w();
      if (this.inflight === 0 && this.idle) {
        this.idle();
        this.idle = null;
      }
    }
  }

  // ---- pool-level calls ----------------------------------------------------

  /**
   * Whether `image` exists, in one OSD read and no open: the stat of its id
   * object `rbd_id.NAME`, which every format 2 image has (the only format
   * made here). False also for a format 1 image: callers confirm a false
   * answer by opening it (RbdVolume.exists).
   */
  idObjectExists(image: string): Promise<boolean> {
    return this.track(async (c, a) => {
      await this.freed(image);
      const rc = await onWorker(a.rados_stat, c.io, `rbd_id.${image}`, [0], [0]);
      if (rc === -ENOENT) return false;
      if (rc < 0) this.fail(`looking for image ${image}`, rc);
      return true;
    });
  }

  /**
   * The advisory locks of `image` without opening it (an open is a round
   * trip plus, writable, a watch; its close another): the lock librbd's
   * rbd_lock_exclusive takes is the class lock `rbd_lock` (tag and
   * description empty) on the image's header object `rbd_header.ID`, and
   * ID is what the id object `rbd_id.NAME` holds. The same lock, read and
   * taken where librbd would: `rbd lock ls` and other hosts' librbd see it.
   * ENOENT (as RbdError) when the image does not exist.
   */
  async header(image: string): Promise<ImageHeader> {
    const id = await this.track(async (c, a) => {
      await this.freed(image);
      return this.readId(c.io, a, image);
    });
    return new ImageHeader(this, image, id);
  }

  /** What the id object `rbd_id.NAME` holds; ENOENT (as RbdError) when no image has that name. */
  private async readId(io: Handle, a: Api, image: string): Promise<string> {
    const buf = Buffer.alloc(256);
    const rc = await onWorker(a.rados_read, io, `rbd_id.${image}`, buf, buf.length, 0);
    if (rc < 0) this.fail(`reading the id of image ${image}`, rc);
    // An encoded string: a 32-bit little-endian length, then the bytes.
    const len = rc >= 4 ? buf.readUInt32LE(0) : -1;
    if (len <= 0 || 4 + len > rc) this.fail(`reading the id of image ${image} (not a format 2 image?)`, -EINVAL);
    return buf.toString('utf8', 4, 4 + len);
  }

  /** @internal ImageHeader's calls, counted in flight like every call. */
  headerCall(fn: (io: Handle, a: Api) => Promise<number>): Promise<number> {
    return this.track((c, a) => fn(c.io, a));
  }

  /** Image names of the pool (and namespace). */
  list(): Promise<string[]> {
    return this.track(async (c, a) => {
      await this.freed(...this.leaving.keys());
      let size = 64 * 1024;
      for (;;) {
        const buf = Buffer.alloc(size);
        const len = [size];
        const rc = await onWorker(a.rbd_list, c.io, buf, len);
        if (rc === -ERANGE && len[0]! > size) {
          size = len[0]!;
          continue;
        }
        if (rc < 0) this.fail('listing the images', rc);
        return cstrings(buf, Math.min(len[0]!, size));
      }
    });
  }

  /** Makes an image of `size` bytes, format 2, layering only. EEXIST when it exists. */
  create(image: string, size: number): Promise<void> {
    return this.track(async (c, a) => {
      await this.freed(image);
      const rc = await this.withOptions(a, (o) => onWorker(a.rbd_create4, c.io, image, size, o));
      if (rc < 0) this.fail(`creating image ${image}`, rc);
    });
  }

  /** A layered clone of src@snap named `image`: clone format 2 (no protection), else 1 after protecting the snapshot. */
  clone(src: string, snap: string, image: string): Promise<void> {
    return this.track(async (c, a) => {
      await this.freed(image);
      let rc = await this.withOptions(a, (o) => {
        a.rbd_image_options_set_uint64(o, OPT_CLONE_FORMAT, 2);
        return onWorker(a.rbd_clone3, c.io, src, snap, c.io, image, o);
      });
      if (rc === -EINVAL || rc === -95) {
        // A cluster older than mimic: clone v1 needs a protected snapshot.
        await this.withImage(src, async (h) => {
          const p = await onWorker(a.rbd_snap_protect, h, snap);
          if (p < 0 && p !== -EBUSY) this.fail(`protecting ${src}@${snap}`, p);
        });
        rc = await this.withOptions(a, (o) => {
          a.rbd_image_options_set_uint64(o, OPT_CLONE_FORMAT, 1);
          return onWorker(a.rbd_clone3, c.io, src, snap, c.io, image, o);
        });
      }
      if (rc < 0) this.fail(`cloning ${src}@${snap} to ${image}`, rc);
    });
  }

  private async withOptions(a: Api, fn: (o: Handle) => Promise<number>): Promise<number> {
    const out: Handle[] = [null];
    a.rbd_image_options_create(out);
    try {
      a.rbd_image_options_set_uint64(out[0], OPT_FORMAT, 2);
      a.rbd_image_options_set_uint64(out[0], OPT_FEATURES, FEATURE_LAYERING);
      return await fn(out[0]);
    } finally {
      a.rbd_image_options_destroy(out[0]);
    }
  }

  /** Removes an image (its snapshots must be gone). */
  remove(image: string): Promise<void> {
    return this.track(async (c, a) => {
      await this.freed(image);
      await this.release(image);
      const rc = await onWorker(a.rbd_remove, c.io, image);
      if (rc < 0) this.fail(`removing image ${image}`, rc);
    });
  }

  /**
   * Removes an image at once from the pool's names, its objects later: it is
   * moved to the RBD trash (a few metadata writes), then its objects are
   * deleted in the background (seconds for a big image without object map).
   * A background removal a crash cut off is finished by purgeTrash().
   */
  async discard(image: string, knownId?: string, later = false): Promise<void> {
    const id = knownId ?? (await this.withImage(image, (i) => i.id()));
    await this.release(image);
    const before = this.leaving.get(image); // not freed(image): that would wait for this very move once it is `leaving`
    const move = this.detached(() =>
      this.track(async (c, a) => {
        await before;
        // The move takes a name: if the name leads elsewhere now (another host removed the image and
        // started anew), the image meant is gone and the one there is not ours to move.
        if (knownId !== undefined && (await this.nameLeadsElsewhere(c.io, a, image, id))) return false;
        const rc = await onWorker(a.rbd_trash_move, c.io, image, 0);
        if (rc >= 0) return true;
        // Another client removed or trashed it between the look and the move (ENOENT, or ESTALE from the
        // directory entry that no longer matches): whatever the error, if the name leads elsewhere now the
        // image meant is gone, and not ours to delete (its remover does, or sweepLeftovers).
        if (await this.nameLeadsElsewhere(c.io, a, image, id).catch(() => false)) return false;
        return this.fail(`moving image ${image} to the trash`, rc);
      }),
    );
    if (later) {
      // The name is taken until the move is done: every call naming the image waits for it (freed()).
      // A failed move leaves the image as a crash would: the next start finds it and replaces it.
      const moved = move.catch(() => false);
      const gone = moved.then(() => undefined);
      this.leaving.set(image, gone);
      this.background.add(gone);
      void gone.finally(() => {
        this.background.delete(gone);
        if (this.leaving.get(image) === gone) this.leaving.delete(image);
      });
      void moved.then((ok) => ok && this.removeLater(id));
      return;
    }
    if (await move) this.removeLater(id);
  }

  /**
   * Whether `image` names no image now, or another one than `id`: another
   * host's daemon sharing the pool removed the image meant, and maybe started
   * anew under the same name.
   */
  private async nameLeadsElsewhere(io: Handle, a: Api, image: string, id: string): Promise<boolean> {
    try {
      return (await this.readId(io, a, image)) !== id;
    } catch (e) {
      if (isErrno(e, ENOENT)) return true;
      throw e;
    }
  }

  /**
   * Deletes a trashed image's objects in the background. One removal at a time: koffi's async
   * calls share libuv's thread pool (4 threads, with the file system calls); a removal holds its
   * thread for as long as it deletes objects.
   */
  private removeLater(id: string): void {
    const bg = this.purging.then(() => this.trashRemove(id)).catch(() => undefined); // purgeTrash() finishes it if this fails
    this.purging = bg;
    this.background.add(bg);
    void bg.finally(() => this.background.delete(bg));
  }
  private readonly background = new Set<Promise<unknown>>();
  private purging: Promise<unknown> = Promise.resolve();
  /** Images being moved to the trash after the operation returned (discard(..., later)), by name. */
  private readonly leaving = new Map<string, Promise<void>>();

  /** Waits until none of these names is being moved to the trash in the background. */
  private async freed(...images: string[]): Promise<void> {
    for (const n of images) await this.leaving.get(n);
  }

  /** Waits for the background removals (tests, benchmarks). */
  async settled(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background]);
  }

  private trashRemove(id: string): Promise<void> {
    return this.track(async (c, a) => {
      const rc = await onWorker(a.rbd_trash_remove, c.io, id, false);
      if (rc < 0 && rc !== -ENOENT) this.fail(`removing image id ${id} from the trash`, rc);
    });
  }

  /** Removes the trash entries whose image name `match` accepts (what discard() left when cut off). */
  purgeTrash(match: (name: string) => boolean): Promise<void> {
    return this.track(async (c, a) => {
      const koffi = a.koffi;
      let max = 256;
      let entries: { id: string; name: string }[] = [];
      for (;;) {
        const mem = Buffer.alloc(koffi.sizeof(a.trashInfo as never) * max);
        const n = [max];
        const rc = await onWorker(a.rbd_trash_list, c.io, mem, n);
        if (rc === -ERANGE) {
          max = Math.max(n[0]!, max * 2);
          continue;
        }
        if (rc < 0) this.fail('listing the trash', rc);
        const count = Number(n[0]);
        if (count > 0) {
          entries = (koffi.decode(mem, koffi.array(a.trashInfo as never, count) as never) as { id: string; name: string }[]).map((e) => ({
            id: e.id,
            name: e.name,
          }));
          a.rbd_trash_list_cleanup(mem, count);
        }
        break;
      }
      for (const e of entries) if (match(e.name)) await this.trashRemove(e.id).catch(() => undefined);
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.track(async (c, a) => {
      await this.freed(from, to);
      await this.release(from, to);
      const rc = await onWorker(a.rbd_rename, c.io, from, to);
      if (rc < 0) this.fail(`renaming image ${from} to ${to}`, rc);
    });
  }

  /** The RADOS namespaces of the Ceph pool (rbd namespace ls). */
  namespaces(): Promise<string[]> {
    return this.track(async (c, a) => {
      const size = 64 * 1024;
      const buf = Buffer.alloc(size);
      const len = [size];
      const rc = await onWorker(a.rbd_namespace_list, c.io, buf, len);
      if (rc < 0) this.fail('listing the namespaces', rc);
      return cstrings(buf, Math.min(len[0]!, size));
    });
  }

  /** Makes the namespace (in the pool's Ceph pool; the I/O context's namespace is ignored for this call). */
  createNamespace(name: string): Promise<void> {
    return this.track(async (c, a) => {
      const rc = await onWorker(a.rbd_namespace_create, c.io, name);
      if (rc < 0) this.fail(`creating the namespace ${name}`, rc);
    });
  }

  /** A monitor command (JSON), e.g. {prefix: 'df', format: 'json'}: its parsed JSON output. */
  monCommand<T>(cmd: Record<string, unknown>): Promise<T> {
    return this.track(async (c, a) => {
      const outbuf: Handle[] = [null];
      const outlen = [0];
      const outs: Handle[] = [null];
      const outslen = [0];
      const rc = await onWorker(a.rados_mon_command, c.cluster, [JSON.stringify(cmd)], 1, null, 0, outbuf, outlen, outs, outslen);
      try {
        const text = (p: Handle, n: number): string =>
          p && n > 0 ? Buffer.from(a.koffi.decode(p, 'uint8_t', n) as number[]).toString('utf8') : '';
        if (rc < 0) throw new RbdError(`${this.where}: ceph ${String(cmd['prefix'])}: ${text(outs[0], outslen[0]!)}`, -rc);
        return JSON.parse(text(outbuf[0], outlen[0]!) || 'null') as T;
      } finally {
        if (outbuf[0]) a.rados_buffer_free(outbuf[0]);
        if (outs[0]) a.rados_buffer_free(outs[0]);
      }
    });
  }

  /** Blocklists (fences) the client at `address` (as a lock lists it), for the cluster's default time. */
  blocklist(address: string): Promise<void> {
    return this.track(async (c, a) => {
      const rc = await onWorker(a.rados_blocklist_add, c.cluster, address, 0);
      if (rc < 0) this.fail(`blocklisting ${address}`, rc);
    });
  }

  // ---- image calls -----------------------------------------------------------

  /** The images held open by the session() of the calling operation, by name. */
  private readonly sessions = new AsyncLocalStorage<Map<string, Promise<Handle>>>();

  /**
   * Runs one operation with its image opens shared: inside `fn`, withImage of
   * an image at its head reuses one open handle (an open and a close are each
   * a round trip, the open also a watch), and all are closed when `fn` ends,
   * together. Calls that need an image closed (remove, trash, rename) close
   * the session's handle of it first. Nested sessions join the outer one.
   */
  async session<T>(fn: () => Promise<T>): Promise<T> {
    if (this.sessions.getStore()) return fn();
    const held = new Map<string, Promise<Handle>>();
    try {
      return await this.sessions.run(held, fn);
    } finally {
      await this.closeHeld(held, [...held.keys()]);
    }
  }

  /**
   * Runs `fn` outside the calling operation's session: work that outlives
   * the operation (a prune queued by a stop) must not open handles in a
   * session that has already closed its handles.
   */
  detached<T>(fn: () => T): T {
    return this.sessions.exit(fn);
  }

  /** Closes the calling session's handles of these images (before a call that needs them closed). */
  private async release(...images: string[]): Promise<void> {
    const held = this.sessions.getStore();
    if (held) await this.closeHeld(held, images);
  }

  private async closeHeld(held: Map<string, Promise<Handle>>, images: string[]): Promise<void> {
    const handles = images.flatMap((n) => {
      const h = held.get(n);
      held.delete(n);
      return h ? [h] : [];
    });
    if (handles.length === 0) return;
    const a = loadApi();
    await Promise.all(
      handles.map(async (p) => {
        const h = await p.catch(() => null);
        if (h) await onWorker(a.rbd_close, h).catch(() => undefined);
      }),
    );
  }

  private async open(c: { io: Handle }, a: Api, image: string, snap: string | null, readOnly: boolean): Promise<Handle> {
    const out: Handle[] = [null];
    const rc = await onWorker(readOnly ? a.rbd_open_read_only : a.rbd_open, c.io, image, out, snap);
    if (rc < 0) this.fail(`opening image ${image}${snap ? `@${snap}` : ''}`, rc);
    return out[0];
  }

  /**
   * Opens `image` (at `snap` when given, read-only then), runs `fn` with the
   * open image and closes it. ENOENT (no such image or snapshot) as RbdError.
   * Inside a session() the head's handle is shared and closed by the session.
   * `readOnly` (at the head, outside a session): an open without a watch, for
   * a look that changes nothing. `'look'`: the same inside a session too,
   * unless the session already holds the image (for steps that need no
   * writable handle, e.g. reading or taking and breaking advisory locks: a
   * writable open adds a watch, its close an unwatch, both round trips).
   */
  withImage<T>(image: string, fn: (img: RbdImage) => Promise<T>, snap: string | null = null, readOnly: boolean | 'look' = false): Promise<T> {
    const session = snap === null ? this.sessions.getStore() : undefined;
    const held = session && (readOnly !== 'look' || session.has(image)) ? session : undefined;
    if (held)
      return this.track(async (c, a) => {
        await this.freed(image);
        let h = held.get(image);
        if (!h) {
          const opening = this.open(c, a, image, null, false);
          held.set(image, opening);
          opening.catch(() => {
            if (held.get(image) === opening) held.delete(image);
          });
          h = opening;
        }
        return fn(new RbdImage(this, a, await h, image));
      });
    return this.track(async (c, a) => {
      await this.freed(image);
      const h = await this.open(c, a, image, snap, snap !== null || readOnly !== false);
      try {
        return await fn(new RbdImage(this, a, h, image));
      } finally {
        await onWorker(a.rbd_close, h).catch(() => undefined);
      }
    });
  }

  /** Like withImage, but resolves null when the image does not exist. */
  async withImageIfAny<T>(image: string, fn: (img: RbdImage) => Promise<T>, readOnly: boolean | 'look' = false): Promise<T | null> {
    let opened = false;
    try {
      return await this.withImage(
        image,
        (img) => {
          opened = true;
          return fn(img);
        },
        null,
        readOnly,
      );
    } catch (e) {
      if (!opened && isErrno(e, ENOENT)) return null;
      throw e;
    }
  }

  /**
   * Opens `image` (writable) for as long as the caller needs it, outside any
   * session: an import streamed by a client writes through it between
   * calls. Counted as a call in flight until closed (close() of the client
   * waits for it); `close` is idempotent.
   */
  hold(image: string): Promise<{ image: RbdImage; close(): Promise<void> }> {
    return new Promise((resolve, reject) => {
      this.track(async (c, a) => {
        await this.freed(image);
        const h = await this.open(c, a, image, null, false);
        await new Promise<void>((ended) => {
          let closing: Promise<void> | null = null;
          resolve({
            image: new RbdImage(this, a, h, image),
            close: () => (closing ??= onWorker(a.rbd_close, h).then(() => ended(), () => ended())),
          });
        });
      }).catch(reject);
    });
  }

  /** @internal RbdImage reports its failures through the client. */
  failed(what: string, rc: number): never {
    return this.fail(what, rc);
  }
}

/** An open image: the calls on it. Valid only inside RbdClient.withImage. */
export class RbdImage {
  constructor(
    private readonly client: RbdClient,
    private readonly a: Api,
    private readonly h: Handle,
    readonly name: string,
  ) {}

  private check(rc: number, what: string): number {
    if (rc < 0) this.client.failed(`${what} of image ${this.name}`, rc);
    return rc;
  }

  async size(): Promise<number> {
    const out = [0];
    this.check(await onWorker(this.a.rbd_get_size, this.h, out), 'reading the size');
    return Number(out[0]);
  }

  /** Resizes (shrinking too: callers decide when that is allowed). */
  async resize(size: number): Promise<void> {
    this.check(await onWorker(this.a.rbd_resize, this.h, size), 'resizing');
  }

  /** The image's id (what the RBD trash knows it by). */
  async id(): Promise<string> {
    const buf = Buffer.alloc(128);
    this.check(await onWorker(this.a.rbd_get_id, this.h, buf, buf.length), 'reading the id');
    return cstring(buf);
  }

  /** The parent of a clone, or null. */
  async parent(): Promise<ParentInfo | null> {
    const n = 512;
    const pool = Buffer.alloc(n);
    const name = Buffer.alloc(n);
    const id = Buffer.alloc(n);
    const snap = Buffer.alloc(n);
    const rc = await onWorker(this.a.rbd_get_parent_info2, this.h, pool, n, name, n, id, n, snap, n);
    if (rc === -ENOENT) return null;
    this.check(rc, 'reading the parent');
    return { pool: cstring(pool), image: cstring(name), snapshot: cstring(snap) };
  }

  async snaps(): Promise<SnapInfo[]> {
    const a = this.a;
    const koffi = a.koffi;
    let max = 64;
    for (;;) {
      // max + 1 entries: librbd ends the list with an entry of NULL name.
      const mem = Buffer.alloc(koffi.sizeof(a.snapInfo as never) * (max + 1));
      const n = [max];
      const rc = await onWorker(a.rbd_snap_list, this.h, mem, n);
      if (rc === -ERANGE) {
        max = Math.max(n[0]!, max * 2);
        continue;
      }
      this.check(rc, 'listing the snapshots');
      const out: SnapInfo[] = [];
      if (rc === 0) return out;
      const list = koffi.decode(mem, koffi.array(a.snapInfo as never, rc) as never) as { id: bigint | number; size: bigint | number; name: string }[];
      for (const s of list) out.push({ id: Number(s.id), size: Number(s.size), name: s.name });
      a.rbd_snap_list_end(mem);
      return out;
    }
  }

  async snapCreate(snap: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_snap_create, this.h, snap), `creating snapshot ${snap}`);
  }
  async snapRemove(snap: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_snap_remove, this.h, snap), `removing snapshot ${snap}`);
  }
  async snapRename(from: string, to: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_snap_rename, this.h, from, to), `renaming snapshot ${from} to ${to}`);
  }
  async snapRollback(snap: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_snap_rollback, this.h, snap), `rolling back to snapshot ${snap}`);
  }

  /** The advisory locks on the image (rbd lock ls). */
  async lockers(): Promise<Locker[]> {
    const n = 4096;
    const ex = [0];
    const bufs = [Buffer.alloc(n), Buffer.alloc(n), Buffer.alloc(n), Buffer.alloc(n)];
    const lens = [[n], [n], [n], [n]];
    const rc = await onWorker(this.a.rbd_list_lockers, this.h, ex, bufs[0], lens[0], bufs[1], lens[1], bufs[2], lens[2], bufs[3], lens[3]);
    if (rc === -ENOENT) return [];
    this.check(rc, 'listing the locks');
    const clients = cstrings(bufs[1]!, Math.min(lens[1]![0]!, n));
    const cookies = cstrings(bufs[2]!, Math.min(lens[2]![0]!, n));
    const addrs = cstrings(bufs[3]!, Math.min(lens[3]![0]!, n));
    return clients.map((locker, i) => ({ id: cookies[i] ?? '', locker, address: addrs[i] ?? '' }));
  }

  /** Takes the exclusive advisory lock with this cookie: EBUSY/EEXIST when held. */
  async lockExclusive(cookie: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_lock_exclusive, this.h, cookie), `taking lock ${cookie}`);
  }

  /** Removes a lock of any client; `fence`: blocklist that client first (its writes cannot land afterwards). */
  async lockBreak(l: Locker, fence: boolean): Promise<void> {
    if (fence) await this.client.blocklist(l.address);
    const rc = await onWorker(this.a.rbd_break_lock, this.h, l.locker, l.id);
    if (rc === -ENOENT) return;
    this.check(rc, `breaking lock ${l.id} of ${l.locker}`);
  }

  async metaGet(key: string): Promise<string | null> {
    let n = 256;
    for (;;) {
      const buf = Buffer.alloc(n);
      const len = [n];
      const rc = await onWorker(this.a.rbd_metadata_get, this.h, key, buf, len);
      if (rc === -ENOENT) return null;
      if (rc === -ERANGE && len[0]! > n) {
        n = len[0]!;
        continue;
      }
      this.check(rc, `reading metadata ${key}`);
      return cstring(buf.subarray(0, len[0]!));
    }
  }
  async metaSet(key: string, value: string): Promise<void> {
    this.check(await onWorker(this.a.rbd_metadata_set, this.h, key, value), `setting metadata ${key}`);
  }

  /** Reads exactly buf.length bytes at `offset` (zeros past the end). */
  async read(offset: number, buf: Buffer): Promise<void> {
    const rc = await onWorker(this.a.rbd_read2, this.h, offset, buf.length, buf, 0);
    this.check(rc, `reading ${buf.length} bytes at ${offset}`);
    if (rc < buf.length) buf.fill(0, rc);
  }
  async write(offset: number, buf: Buffer): Promise<void> {
    const rc = await onWorker(this.a.rbd_write2, this.h, offset, buf.length, buf, 0);
    this.check(rc, `writing ${buf.length} bytes at ${offset}`);
    if (rc !== buf.length) this.client.failed(`short write (${rc} of ${buf.length}) at ${offset} of image ${this.name}`, -EIO);
  }
  /** Zeroes a range; whole objects are deallocated (the image stays sparse). */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.check(await onWorker(this.a.rbd_write_zeroes, this.h, offset, length, 0, 0), `zeroing ${length} bytes at ${offset}`);
  }
  async flush(): Promise<void> {
    this.check(await onWorker(this.a.rbd_flush, this.h), 'flushing');
  }

  /**
   * Bytes allocated in the image itself (not its parent), counted in whole
   * objects as `rbd du` counts them without fast-diff.
   */
  async allocated(size: number): Promise<number> {
    const a = this.a;
    let total = 0;
    const cb = a.koffi.register((_ofs: number, len: number, exists: number) => {
      if (exists) total += Number(len);
      return 0;
    }, a.koffi.pointer(a.diffCallback as never));
    try {
      this.check(await onWorker(a.rbd_diff_iterate2, this.h, null, 0, size, 0, 1, cb, null), 'reading the allocation');
    } finally {
      a.koffi.unregister(cb);
    }
    return total;
  }
}

/** librbd's advisory lock: a class lock of this name on the header object. */
const RBD_LOCK_NAME = 'rbd_lock';

/**
 * The advisory locks of an image through its header object, without an
 * open (RbdClient.header): the lock calls of RbdImage, as librbd makes
 * them, for the steps that need nothing else of the image (a new clone's
 * or volatile image's lock at start, the stop of either before it goes to
 * the trash).
 */
export class ImageHeader {
  readonly oid: string;
  constructor(
    private readonly client: RbdClient,
    readonly name: string,
    /** The image's id (what the RBD trash knows it by). */
    readonly id: string,
  ) {
    this.oid = `rbd_header.${id}`;
  }

  private check(rc: number, what: string): number {
    if (rc < 0) this.client.failed(`${what} of image ${this.name}`, rc);
    return rc;
  }

  async lockers(): Promise<Locker[]> {
    let n = 4096;
    for (;;) {
      const ex = [0];
      const bufs = [Buffer.alloc(n), Buffer.alloc(n), Buffer.alloc(n), Buffer.alloc(n)];
      const lens = [[n], [n], [n], [n]];
      const rc = await this.client.headerCall((io, a) =>
        onWorker(a.rados_list_lockers, io, this.oid, RBD_LOCK_NAME, ex, bufs[0], lens[0], bufs[1], lens[1], bufs[2], lens[2], bufs[3], lens[3]),
      );
      if (rc === -ERANGE) {
        n = Math.max(n * 2, ...lens.map((l) => l[0]!));
        continue;
      }
      if (rc === -ENOENT) return [];
      this.check(rc, 'listing the locks');
      const clients = cstrings(bufs[1]!, Math.min(lens[1]![0]!, n));
      const cookies = cstrings(bufs[2]!, Math.min(lens[2]![0]!, n));
      const addrs = cstrings(bufs[3]!, Math.min(lens[3]![0]!, n));
      // librados writes the address as `v1:IP:PORT/NONCE`, librbd (and `rbd lock ls`) without the `v1:`.
      return clients.map((locker, i) => ({ id: cookies[i] ?? '', locker, address: (addrs[i] ?? '').replace(/^v[12]:/, '') }));
    }
  }

  /** Takes the exclusive advisory lock with this cookie: EBUSY/EEXIST when held. */
  async lockExclusive(cookie: string): Promise<void> {
    this.check(
      await this.client.headerCall((io, a) => onWorker(a.rados_lock_exclusive, io, this.oid, RBD_LOCK_NAME, cookie, '', null, 0)),
      `taking lock ${cookie}`,
    );
  }

  /**
   * Sets image metadata as rbd_metadata_set does: the `rbd` class method
   * `metadata_set` on the header object, its input an encoded map of one
   * key to its value (a 32-bit little-endian count, then each string as a
   * 32-bit length and its bytes). `rbd image-meta get` and rbd_metadata_get
   * read it.
   */
  async metaSet(key: string, value: string): Promise<void> {
    const str = (t: string): Buffer => {
      const b = Buffer.from(t, 'utf8');
      const len = Buffer.alloc(4);
      len.writeUInt32LE(b.length);
      return Buffer.concat([len, b]);
    };
    const count = Buffer.alloc(4);
    count.writeUInt32LE(1);
    const input = Buffer.concat([count, str(key), str(value)]);
    this.check(
      await this.client.headerCall((io, a) => onWorker(a.rados_exec, io, this.oid, 'rbd', 'metadata_set', input, input.length, Buffer.alloc(0), 0)),
      `setting metadata ${key}`,
    );
  }

  /** Removes a lock of any client; `fence`: blocklist that client first. */
  async lockBreak(l: Locker, fence: boolean): Promise<void> {
    if (fence) await this.client.blocklist(l.address);
    const rc = await this.client.headerCall((io, a) => onWorker(a.rados_break_lock, io, this.oid, RBD_LOCK_NAME, l.locker, l.id));
    if (rc === -ENOENT) return;
    this.check(rc, `breaking lock ${l.id} of ${l.locker}`);
  }
}
