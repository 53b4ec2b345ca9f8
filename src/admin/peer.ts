/**
 * Who is on the other end of a Unix socket, as the kernel says: the peer's
 * pid, uid and gid at connect time (SO_PEERCRED) and its supplementary groups
 * (SO_PEERGROUPS, Linux 4.13+). The request header's SOURCE is only what the
 * caller claims; these cannot be forged by the caller.
 *
 * Node has no API for either option, so getsockopt(2) is called through the
 * koffi FFI (loaded on first use: a tool that never serves a socket never
 * loads it). Linux only.
 */
import type { Socket } from 'node:net';

export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /**
   * Supplementary groups of the peer when it connected. Read when first
   * asked (a second getsockopt, which most callers, root, never need), so
   * ask before the accepting turn of the event loop ends: the descriptor is
   * the socket's only while it is open.
   */
  groups(): readonly number[];
}

/** Reads the credentials of an accepted socket's peer; throws PeerCredentialsError. */
export type PeerCredentialsReader = (socket: Socket) => PeerCredentials;

export class PeerCredentialsError extends Error {
  override readonly name = 'PeerCredentialsError';
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_PEERGROUPS = 59;
const ERANGE = 34;
/** struct ucred { pid_t pid; uid_t uid; gid_t gid; }: three 32-bit fields on Linux. */
const UCRED_BYTES = 12;

type Koffi = Pick<typeof import('koffi'), 'load' | 'errno'>;
/** optval and optlen point into the caller's own memory (no copies in or out): the kernel writes them. */
type GetSockOpt = (fd: number, level: number, name: number, value: Buffer, length: Uint32Array) => number;

let loaded: Promise<PeerCredentialsReader> | undefined;

/**
 * The reader, or a PeerCredentialsError saying why there is none (not Linux,
 * koffi or its prebuilt binary missing). The daemon does not start without it.
 */
export function peerCredentialsReader(): Promise<PeerCredentialsReader> {
  loaded ??= load();
  return loaded;
}

async function load(): Promise<PeerCredentialsReader> {
  if (process.platform !== 'linux')
    throw new PeerCredentialsError(`reading a caller's credentials (SO_PEERCRED) needs Linux, not ${process.platform}`);
  let koffi: Koffi;
  try {
    koffi = await import('koffi');
  } catch (e) {
    throw new PeerCredentialsError(
      `cannot load koffi, needed to read a caller's credentials (SO_PEERCRED): ${(e as Error).message} ` +
        `(reinstall with npm ci; its prebuilt binary for ${process.platform}-${process.arch} comes as an optional package)`,
    );
  }
  let getsockopt: GetSockOpt;
  try {
    // The process's own symbols (dlopen(NULL)) include libc's, glibc or musl alike.
    const libc = koffi.load(null);
    getsockopt = libc.func(
      'int getsockopt(int fd, int level, int optname, void *optval, uint32_t *optlen)',
    ) as GetSockOpt;
  } catch (e) {
    throw new PeerCredentialsError(`cannot find getsockopt in libc through koffi: ${(e as Error).message}`);
  }
  return (socket) => readCredentials(koffi, getsockopt, socket);
}

function socketFd(socket: Socket): number {
  // Not a public API: the libuv handle of an accepted pipe has its descriptor here.
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0)
    throw new PeerCredentialsError('the socket has no file descriptor (already closed?)');
  return fd;
}

/** Reused by every read: the reads are synchronous, one at a time. */
const credBuf = Buffer.alloc(UCRED_BYTES);
const GROUPS_ROOM = 64 * 4;
const groupsBuf = Buffer.alloc(GROUPS_ROOM);
const optLen = new Uint32Array(1);

function readCredentials(koffi: Koffi, getsockopt: GetSockOpt, socket: Socket): PeerCredentials {
  const fd = socketFd(socket);
  optLen[0] = UCRED_BYTES;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, credBuf, optLen) !== 0)
    throw new PeerCredentialsError(`getsockopt(SO_PEERCRED) failed: errno ${koffi.errno()}`);
  if (optLen[0] !== UCRED_BYTES) throw new PeerCredentialsError(`getsockopt(SO_PEERCRED) gave ${optLen[0]} bytes`);
  return new Credentials(credBuf.readInt32LE(0), credBuf.readUInt32LE(4), credBuf.readUInt32LE(8), koffi, getsockopt, socket, fd);
}

/** A class, not an object of closures: made for every connection. */
class Credentials implements PeerCredentials {
  private read: readonly number[] | undefined;
  constructor(
    readonly pid: number,
    readonly uid: number,
    readonly gid: number,
    private readonly koffi: Koffi,
    private readonly getsockopt: GetSockOpt,
    private readonly socket: Socket,
    private readonly fd: number,
  ) {}
  groups(): readonly number[] {
    this.read ??= readGroups(this.koffi, this.getsockopt, this.socket, this.fd);
    return this.read;
  }
}

function readGroups(koffi: Koffi, getsockopt: GetSockOpt, socket: Socket, fd: number): readonly number[] {
  if (socketFd(socket) !== fd) throw new PeerCredentialsError('the socket was closed before its groups were read');
  // The kernel says how much room the groups need when the first guess is short (ERANGE).
  let room = GROUPS_ROOM;
  for (let attempt = 0; attempt < 2; attempt++) {
    const buf = room === GROUPS_ROOM ? groupsBuf : Buffer.alloc(room);
    optLen[0] = room;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, buf, optLen) === 0) {
      const n = Math.floor(Math.min(optLen[0], room) / 4);
      return Array.from({ length: n }, (_, i) => buf.readUInt32LE(i * 4));
    }
    const errno = koffi.errno();
    if (errno !== ERANGE || optLen[0] <= room) throw new PeerCredentialsError(`getsockopt(SO_PEERGROUPS) failed: errno ${errno}`);
    room = optLen[0];
  }
  throw new PeerCredentialsError('getsockopt(SO_PEERGROUPS): the group list kept growing');
}
