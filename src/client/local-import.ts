/**
 * A local import: on the daemon's host, with access to its internal socket
 * (root, or the daemon's user: the socket is mode 0600), the data of a
 * regular file need not cross the admin socket. The stock import service
 * (src/qrexec/import-service.ts) is run as a child with the file as its
 * stdin: it asks the daemon for the volume's import path
 * (internal.vm.volume.ImportBegin, which asks the admin policy as the
 * streamed call would), writes the data there itself (only the file's data
 * regions read, 4 MiB reads, zero blocks left as holes, one fdatasync) and
 * ends with ImportEnd, whose reply
 * is the import's result. The daemon commits by renaming the import file,
 * as for a streamed import: a failure or an interruption leaves the old data.
 * For a volume whose driver writes imports into its storage itself (rbd),
 * where a file would be one more full copy, the service streams the data to
 * the volume's import writer instead (internal ImportMode, ImportDataWithSize:
 * src/qrexec/import-service.ts).
 *
 * Why a child rather than this process: an import begun on the internal
 * socket belongs to its caller and the caller's parent (internal.ts). The
 * child and this tool are those two, so if the tool is killed outright the
 * child still ends the import, and if both are gone the daemon ends it as
 * failed; an import begun by the tool itself would stay held as long as the
 * tool's shell lives.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { unwrapReply } from '../admin/client.js';
import { defaultInternalSocketPath } from '../admin/paths.js';
import { EXIT_INTERNAL_UNREACHABLE } from '../qrexec/import-service.js';

/** The stock service program this checkout installs. */
const SERVICE_PROGRAM = fileURLToPath(new URL('../qrexec/import-service.js', import.meta.url));


/**
 * The internal socket of the daemon the tools talk to (QUBESD_INTERNAL_SOCKET,
 * else beside the admin socket) when this process may connect to it (a
 * socket it can write), else null with the reason.
 */
export async function usableInternalSocket(env: NodeJS.ProcessEnv): Promise<{ path: string } | { path: null; why: string }> {
  const p = defaultInternalSocketPath(env);
  try {
    const st = await fs.lstat(p);
    if (!st.isSocket()) return { path: null, why: `${p} is not a socket` };
    await fs.access(p, fs.constants.W_OK);
  } catch (e) {
    return { path: null, why: `${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
  }
  return { path: p };
}

export interface LocalImport {
  readonly internalSocket: string;
  readonly vm: string;
  readonly volume: string;
  /** A descriptor of the data (a regular file), read from its current offset. */
  readonly fd: number;
  /** The data's length: ImportWithSize (the volume gets that size); without it, Import (the volume's size). */
  readonly size?: number;
  /** Aborted: the service is interrupted (SIGINT), ends the import as failed, and this resolves once it exited. */
  readonly signal?: AbortSignal;
  /** Called with the bytes the service has read so far, while it runs (from /proc/PID/fdinfo/0). */
  readonly onProgress?: (bytesRead: number) => void;
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * Runs the import; resolves to 'done', or 'unreachable' when the service
 * could not reach the internal socket before reading anything (the caller
 * may stream instead). Throws the daemon's exception of a refused or
 * failed import.
 */
export async function importLocally(o: LocalImport): Promise<'done' | 'unreachable'> {
  const args = [SERVICE_PROGRAM, '--service'];
  args.push(o.size === undefined ? 'admin.vm.volume.Import' : 'admin.vm.volume.ImportWithSize');
  if (o.size !== undefined) args.push('--size', String(o.size));
  args.push('--', o.volume);
  const env = {
    ...(o.env ?? process.env),
    QREXEC_REMOTE_DOMAIN: 'dom0',
    QREXEC_REQUESTED_TARGET: o.vm,
    QUBESD_INTERNAL_SOCKET: o.internalSocket,
  };
  // Where the data starts: the descriptor's offset now (stdin redirected from a file may be past 0).
  const start = (await fdPosition(`/proc/self/fdinfo/${o.fd}`)) ?? 0;
  const child = spawn(process.execPath, args, { env, stdio: [o.fd, 'pipe', 'inherit'] });
  const reply: Buffer[] = [];
  child.stdout!.on('data', (d: Buffer) => reply.push(d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const interrupt = () => child.kill('SIGINT');
  o.signal?.addEventListener('abort', interrupt, { once: true });
  let timer: NodeJS.Timeout | undefined;
  if (o.onProgress && child.pid !== undefined) {
    const fdinfo = `/proc/${child.pid}/fdinfo/0`;
    timer = setInterval(() => {
      void fdPosition(fdinfo).then((pos) => {
        if (pos !== null) o.onProgress!(pos - start);
      });
    }, 250);
    timer.unref();
  }
  let r;
  try {
    r = await exited;
  } finally {
    clearInterval(timer);
    o.signal?.removeEventListener('abort', interrupt);
  }
  if (r.code === EXIT_INTERNAL_UNREACHABLE) return 'unreachable';
  const bytes = Buffer.concat(reply);
  // Killed before it answered: the daemon ends its import as failed once this tool has gone too.
  if (bytes.length === 0) throw new Error(`the import service ended without a reply (${r.signal ?? `exit ${r.code}`})`);
  unwrapReply(bytes);
  return 'done';
}

/** The file offset a /proc/PID/fdinfo/FD file gives; null when it cannot be read. */
async function fdPosition(fdinfo: string): Promise<number | null> {
  const text = await fs.readFile(fdinfo, 'latin1').catch(() => '');
  const m = /^pos:\s*(\d+)/m.exec(text);
  return m ? Number(m[1]) : null;
}
