/**
 * The admin daemon's socket server: one call per connection on a Unix
 * socket, dispatched to a method table (see dispatch.ts for the methods and
 * connection.ts for the per-connection protocol).
 */
import * as net from 'node:net';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { MAX_REQUEST_BYTES } from './protocol/header.js';
import { encodeError } from './protocol/reply.js';
import { createDispatchContext, type Caller, type DispatchContext, type DispatchOptions, type MethodTable } from './dispatch.js';
import { serveConnection, type Connection, type ConnectionLimits } from './connection.js';
import type { AccessPolicy } from './policy.js';
import { peerCredentialsReader, type PeerCredentialsReader } from './peer.js';

export interface AdminServerOptions extends DispatchOptions {
  readonly socketPath: string;
  /** Mode of the socket file; default 0o660. */
  readonly socketMode?: number;
  /**
   * Group (gid) of the socket file, e.g. the `qubes` group; default unchanged
   * (the daemon's group). Its members may call; other users than root and
   * the daemon's own are refused even if the mode lets them connect.
   */
  readonly socketGroup?: number;
  /**
   * Only root and the daemon's own user may call, whatever the socket's mode
   * and group (the internal socket, whose calls bypass the access policy).
   */
  readonly adminOnly?: boolean;
  /** How callers are identified; default SO_PEERCRED through koffi (listen() fails without it). */
  readonly peerCredentials?: PeerCredentialsReader;
  /** Default 10 s. */
  readonly headerTimeoutMs?: number;
  /** Default 60 s (see ConnectionLimits). */
  readonly requestTimeoutMs?: number;
  /** Default 64 KiB, the protocol's limit; lower only in tests. */
  readonly maxRequestBytes?: number;
  /** Default 4 MiB. */
  readonly maxEventBacklogBytes?: number;
  /** Default 5 s. */
  readonly lingerMs?: number;
  /** Streamed payloads (imports): fewer bytes than this in a window of `minStreamWindowMs` cut the call; default 1 MiB. */
  readonly minStreamBytesPerWindow?: number;
  /** Default 30 s. */
  readonly minStreamWindowMs?: number;
  /** Connections of callers other than root (and the daemon's user) beyond this are closed at once; default 1024. */
  readonly maxConnections?: number;
  /** Extra connections only root (and the daemon's user) may use once `maxConnections` is reached; default 64. */
  readonly rootReserveConnections?: number;
  /** Connections of one uid other than root's (and the daemon's); default 64. */
  readonly maxConnectionsPerUid?: number;
  /** Connections of one process (pid at connect time), root's included; default 128 (a test or tool may run many clients in one process; a user other than root is bounded by its 64 first). */
  readonly maxConnectionsPerPid?: number;
}

/** Who holds how many connections, to refuse a caller over its share at accept. */
interface PeerKey {
  readonly admin: boolean;
  readonly uid: number | undefined;
  readonly pid: number | undefined;
}

export interface CloseOptions {
  /** After this, calls still running are aborted and their sockets destroyed; default: wait. */
  readonly timeoutMs?: number;
}

export class AdminServer {
  readonly socketPath: string;
  readonly context: DispatchContext;
  private readonly limits: ConnectionLimits;
  private readonly opts: AdminServerOptions;
  private server: net.Server | undefined;
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | undefined;
  /** Identity of the socket file we made, so we only ever remove our own. */
  private socketId: { dev: number; ino: number } | undefined;
  private readPeer: PeerCredentialsReader | undefined;
  /** The socket file's group: its members may call. */
  private socketGid = -1;
  /** The daemon's own user, which may call and relay as root may. */
  private readonly ownUid = process.getuid?.();

  constructor(opts: AdminServerOptions) {
    this.opts = opts;
    this.socketPath = path.resolve(opts.socketPath);
    this.context = createDispatchContext(opts);
    this.limits = {
      headerTimeoutMs: opts.headerTimeoutMs ?? 10_000,
      requestTimeoutMs: opts.requestTimeoutMs ?? 60_000,
      maxRequestBytes: opts.maxRequestBytes ?? MAX_REQUEST_BYTES,
      maxEventBacklogBytes: opts.maxEventBacklogBytes ?? 4 * 1024 * 1024,
      lingerMs: opts.lingerMs ?? 5_000,
      minStreamBytesPerWindow: opts.minStreamBytesPerWindow ?? 1 << 20,
      minStreamWindowMs: opts.minStreamWindowMs ?? 30_000,
    };
    this.shares = {
      maxConnections: opts.maxConnections ?? 1024,
      rootReserve: opts.rootReserveConnections ?? 64,
      perUid: opts.maxConnectionsPerUid ?? 64,
      perPid: opts.maxConnectionsPerPid ?? 128,
    };
  }

  private readonly shares: { maxConnections: number; rootReserve: number; perUid: number; perPid: number };
  private readonly byUid = new Map<number | undefined, number>();
  private readonly byPid = new Map<number | undefined, number>();
  private nonAdminCount = 0;

  /** The live method table; adding entries takes effect for the next call. */
  get methods(): MethodTable {
    return this.context.methods;
  }

  /** Replaces (or with undefined removes) the access policy, e.g. on SIGHUP. */
  setPolicy(policy: AccessPolicy | undefined): void {
    this.context.policy = policy;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Starts listening. A stale socket file (nothing answers on it) is
   * removed; a live server on the path, or a path that is not a socket, is
   * an error and nothing is touched.
   */
  async listen(): Promise<void> {
    if (this.server) throw new Error('AdminServer: already listening');
    // Fail closed: without the callers' credentials there is no serving.
    this.readPeer = this.opts.peerCredentials ?? (await peerCredentialsReader());
    await prepareSocketPath(this.socketPath);
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.accept(socket));
    // The kernel-level cap only as a backstop: the shares are counted in accept().
    server.maxConnections = this.shares.maxConnections + this.shares.rootReserve;
    server.on('error', (err) => this.context.log.error(`socket server: ${err.message}`));
    // Bind inside a private directory, set mode (and group), then rename into
    // place: no client can connect while the socket still has the umask's mode.
    const dir = path.dirname(this.socketPath);
    const tmpDir = await fs.mkdtemp(path.join(dir, '.qs-'));
    const tmpSock = path.join(tmpDir, 's');
    try {
      await listenOn(server, tmpSock);
      await fs.chmod(tmpSock, this.opts.socketMode ?? 0o660);
      if (this.opts.socketGroup !== undefined) await fs.chown(tmpSock, -1, this.opts.socketGroup);
      await fs.rename(tmpSock, this.socketPath);
    } catch (err) {
      await new Promise<void>((r) => server.close(() => r()));
      await fs.rm(tmpDir, { recursive: true, force: true });
      throw err;
    }
    await fs.rmdir(tmpDir);
    const st = await fs.lstat(this.socketPath);
    this.socketId = { dev: st.dev, ino: st.ino };
    this.socketGid = st.gid;
    this.server = server;
    this.context.log.info(`listening on ${this.socketPath}`);
  }

  /**
   * Stops accepting, ends events streams, drops connections that have not
   * sent a complete header, waits for the calls in flight to answer, then
   * removes the socket file (if it is still ours).
   */
  close(opts: CloseOptions = {}): Promise<void> {
    this.closing ??= this.doClose(opts);
    return this.closing;
  }

  private async doClose(opts: CloseOptions): Promise<void> {
    const server = this.server;
    if (!server) return;
    const stopped = new Promise<void>((r) => server.close(() => r()));
    for (const c of this.connections) {
      if (c.phase === 'header') c.drop('server shutting down');
      else if (c.phase === 'events' || c.phase === 'replying') c.abort();
    }
    const inFlight = Promise.all([...this.connections].map((c) => c.finished));
    if (opts.timeoutMs === undefined) {
      await inFlight;
    } else {
      let timer: NodeJS.Timeout | undefined;
      const expired = await Promise.race([
        inFlight.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), opts.timeoutMs))),
      ]);
      clearTimeout(timer);
      if (expired) {
        for (const c of this.connections) {
          c.abort();
          c.drop('server shutting down: call did not finish in time');
        }
        // Methods that ignore the abort are left to finish on their own.
        await Promise.all([...this.connections].map((c) => c.closed));
      }
    }
    await stopped;
    await this.removeOwnSocket();
    this.server = undefined;
    this.context.log.info(`closed ${this.socketPath}`);
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const caller = this.identify(socket);
    const peer: PeerKey = { admin: caller.relays, uid: caller.uid, pid: caller.pid };
    const over = this.overShare(peer);
    if (over !== undefined) return this.refuseAtAccept(socket, peer, over);
    this.count(peer, 1);
    // Finished only after its socket's 'close': never before it is in the set.
    const conn = serveConnection(socket, this.context, this.limits, caller, (c) => {
      this.connections.delete(c);
      this.count(peer, -1);
    });
    this.connections.add(conn);
  }

  /**
   * Which limit a new connection of this peer would exceed, if any: the
   * connections of one pid (everyone, root included), of one uid (not
   * root's), of all callers but root; root has a reserve beyond that, so
   * that an administrator can always get in.
   */
  private overShare(peer: PeerKey): string | undefined {
    const { maxConnections, rootReserve, perUid, perPid } = this.shares;
    if ((this.byPid.get(peer.pid) ?? 0) >= perPid) return `${perPid} connections per process`;
    if (peer.admin) {
      if (this.connections.size >= maxConnections + rootReserve) return `${maxConnections + rootReserve} connections in all`;
      return undefined;
    }
    if ((this.byUid.get(peer.uid) ?? 0) >= perUid) return `${perUid} connections per user`;
    if (this.nonAdminCount >= maxConnections) return `${maxConnections} connections of users other than root`;
    return undefined;
  }

  private count(peer: PeerKey, delta: number): void {
    const bump = (m: Map<number | undefined, number>, k: number | undefined) => {
      const n = (m.get(k) ?? 0) + delta;
      if (n > 0) m.set(k, n);
      else m.delete(k);
    };
    bump(this.byPid, peer.pid);
    if (!peer.admin) {
      bump(this.byUid, peer.uid);
      this.nonAdminCount += delta;
    }
  }

  /** Over its share: a PermissionDenied reply, without reading the request, then closed. */
  private refuseAtAccept(socket: net.Socket, peer: PeerKey, limit: string): void {
    this.context.log.warn(`refused connection of uid=${peer.uid ?? '?'} pid=${peer.pid ?? '?'}: over the limit of ${limit}`);
    socket.on('error', () => {});
    socket.setTimeout(this.limits.lingerMs, () => socket.destroy());
    // Closed once the reply is out; whatever the client sends meanwhile is thrown away.
    socket.resume();
    socket.end(encodeError('PermissionDenied', `too many connections: over the limit of ${limit}`), () => socket.destroy());
  }

  /**
   * The caller by its kernel credentials: root and the daemon's own user may
   * call and relay (name any source); members of the socket's group may call
   * as dom0; anyone else, or a peer whose credentials cannot be read, gets
   * PermissionDenied for whatever it asks (after its header, so that the
   * refusal is answered and logged like any other).
   */
  private identify(socket: net.Socket): Caller {
    let cred;
    try {
      cred = this.readPeer!(socket);
    } catch (e) {
      return { uid: undefined, pid: undefined, relays: false, refusal: `cannot read the caller's credentials: ${(e as Error).message}` };
    }
    if (cred.uid === 0 || cred.uid === this.ownUid) return { uid: cred.uid, pid: cred.pid, relays: true };
    let member: boolean;
    try {
      // The supplementary groups only when the answer depends on them (a second getsockopt).
      member = !this.opts.adminOnly && (cred.gid === this.socketGid || cred.groups().includes(this.socketGid));
    } catch (e) {
      return { uid: cred.uid, pid: cred.pid, relays: false, refusal: `cannot read the caller's credentials: ${(e as Error).message}` };
    }
    if (member) return { uid: cred.uid, pid: cred.pid, relays: false };
    if (this.opts.adminOnly)
      return { uid: cred.uid, pid: cred.pid, relays: false, refusal: `uid ${cred.uid} is neither root nor the daemon's user` };
    return {
      uid: cred.uid,
      pid: cred.pid,
      relays: false,
      refusal: `uid ${cred.uid} is neither root nor in the group of the socket (gid ${this.socketGid})`,
    };
  }

  private async removeOwnSocket(): Promise<void> {
    if (!this.socketId) return;
    try {
      const st = await fs.lstat(this.socketPath);
      if (st.isSocket() && st.dev === this.socketId.dev && st.ino === this.socketId.ino) await fs.unlink(this.socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    this.socketId = undefined;
  }
}

function listenOn(server: net.Server, socketPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(socketPath, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/**
 * Makes the path free for a new socket: nothing there is fine; a socket on
 * which nothing answers is removed; a live socket or any other kind of file
 * is refused (and left alone; symlinks are not followed).
 */
export async function prepareSocketPath(socketPath: string, probeTimeoutMs = 1000): Promise<void> {
  let st;
  try {
    st = await fs.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new Error(`${socketPath} exists and is not a socket; not touching it`);
  const state = await probeSocket(socketPath, probeTimeoutMs);
  if (state === 'live') throw new Error(`another server is answering on ${socketPath}`);
  if (state === 'gone') return;
  const again = await fs.lstat(socketPath);
  if (again.isSocket() && again.ino === st.ino && again.dev === st.dev) await fs.unlink(socketPath);
}

/** `live`: something accepted (or did not refuse in time); `stale`: refused; `gone`: vanished. */
export function probeSocket(socketPath: string, timeoutMs: number): Promise<'live' | 'stale' | 'gone'> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    const timer = setTimeout(() => {
      sock.destroy();
      resolve('live');
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve('live');
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ECONNREFUSED') resolve('stale');
      else if (err.code === 'ENOENT') resolve('gone');
      else reject(err);
    });
  });
}
