/**
 * Running the `rbd` and `ceph` commands (package ceph-common): argument
 * vectors through child_process (never a shell), the cluster connection
 * options on every call, client timeouts so a call fails instead of hanging
 * when the cluster is unreachable, and errors that name what failed and why.
 */
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { StoragePoolException } from '../../src/storage/errors.js';

/** How to reach the cluster and where in it the images are. */
export interface CephTarget {
  /** ceph.conf path; '' = the Ceph default (/etc/ceph/ceph.conf or CEPH_CONF). */
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

/** A failed command: errno (rbd exits with it), the last error line, and a message naming the call. */
export class CephCommandError extends StoragePoolException {
  readonly errno: number | null;
  readonly detail: string;
  readonly timedOut: boolean;
  constructor(message: string, errno: number | null, detail: string, timedOut: boolean) {
    super(message);
    this.errno = errno;
    this.detail = detail;
    this.timedOut = timedOut;
  }
}

/** QS_RBD_TRACE=1: every command and its duration on stderr (a debugging aid). */
const TRACE = process.env['QS_RBD_TRACE'] === '1';

export const ENOENT = 2;
export const EEXIST = 17;
export const EBUSY = 16;
export const ENOTEMPTY = 39;
export const ETIMEDOUT = 110;

export interface RunOptions {
  /** Data for stdin (streamed). */
  readonly input?: Readable;
  /** Kill the command after this long; default: a little more than the client timeouts allow. */
  readonly timeoutMs?: number | null;
  /** What the call is for, in messages (default: the command line). */
  readonly what?: string;
}

/** The last meaningful line of an error output (rbd prints progress and warnings too). */
function lastErrorLine(stderr: string): string {
  const lines = stderr
    .split(/\r?\n|\r/)
    .map((l) => l.trim())
    .filter((l) => l && !/% complete/.test(l) && !/^warning:/i.test(l));
  const withRbd = lines.filter((l) => /^(rbd|rados|error|Error)/.test(l));
  return (withRbd.at(-1) ?? lines.at(-1) ?? '').slice(0, 300);
}

export class CephCli {
  constructor(
    readonly target: CephTarget,
    /** "pool NAME", for messages. */
    readonly where: string,
  ) {}

  /** pool/[namespace/]image[@snap] */
  spec(image: string, snap?: string): string {
    const ns = this.target.namespace ? `${this.target.namespace}/` : '';
    return `${this.target.pool}/${ns}${image}${snap ? `@${snap}` : ''}`;
  }

  private common(): string[] {
    const t = this.target;
    const a: string[] = [];
    if (t.conf) a.push('--conf', t.conf);
    if (t.clientId) a.push('--id', t.clientId);
    if (t.keyring) a.push('--keyring', t.keyring);
    const s = String(t.timeoutS);
    a.push(`--rados_osd_op_timeout=${s}`, `--rados_mon_op_timeout=${s}`, `--client_mount_timeout=${s}`);
    return a;
  }

  /** Runs `rbd ARGS...`; resolves with stdout. */
  rbd(args: readonly string[], opts: RunOptions = {}): Promise<string> {
    return this.run('rbd', [...this.common(), ...args], opts);
  }

  /** Runs `rbd ARGS... --format json` and parses the result. */
  async rbdJson<T>(args: readonly string[], opts: RunOptions = {}): Promise<T> {
    const out = await this.rbd([...args, '--format', 'json'], opts);
    return parseJson<T>(out, `${this.where}: rbd ${args[0] ?? ''}`);
  }

  /** Runs `ceph ARGS... --format json` and parses the result. */
  async cephJson<T>(args: readonly string[], opts: RunOptions = {}): Promise<T> {
    const t = this.target;
    const a = [...this.common(), '--connect-timeout', String(t.timeoutS), ...args, '--format', 'json'];
    const out = await this.run('ceph', a, opts);
    return parseJson<T>(out, `${this.where}: ceph ${args.join(' ')}`);
  }

  private run(cmd: string, args: string[], opts: RunOptions): Promise<string> {
    const timeoutMs = opts.timeoutMs === undefined ? (this.target.timeoutS * 2 + 10) * 1000 : opts.timeoutMs;
    const shown = opts.what ?? `${cmd} ${args.filter((a) => !a.startsWith('--rados_') && !a.startsWith('--client_mount')).join(' ')}`;
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: [opts.input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      let err = '';
      let timedOut = false;
      let settled = false;
      const timer =
        timeoutMs === null
          ? null
          : setTimeout(() => {
              timedOut = true;
              child.kill('SIGKILL');
            }, timeoutMs);
      child.stdout!.on('data', (d: Buffer) => out.push(d));
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (d: string) => {
        if (err.length < 64 * 1024) err += d;
      });
      if (opts.input) {
        const stdin = child.stdin!;
        stdin.on('error', () => undefined); // EPIPE when the command fails early: its exit status tells
        opts.input.on('error', (e) => {
          err += `\ninput error: ${String(e)}`;
          child.kill('SIGKILL');
        });
        opts.input.pipe(stdin);
      }
      const fail = (e: CephCommandError): void => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        reject(e);
      };
      child.on('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'ENOENT' ? `${cmd} not found (install the Debian package ceph-common)` : String(e);
        fail(new CephCommandError(`${this.where}: ${shown}: ${why}`, null, why, false));
      });
      const t0 = TRACE ? performance.now() : 0;
      child.on('close', (code, signal) => {
        if (TRACE) process.stderr.write(`rbd-trace ${Math.round(performance.now() - t0)}ms ${cmd} ${args.filter((a) => !a.startsWith('--')).join(' ')} -> ${code}\n`);
        if (settled) return;
        if (code === 0) {
          settled = true;
          if (timer) clearTimeout(timer);
          resolve(Buffer.concat(out).toString('utf8'));
          return;
        }
        const detail = lastErrorLine(err);
        const errno = code !== null && code > 0 && code < 256 ? code : null;
        if (timedOut || errno === ETIMEDOUT) {
          const secs = timedOut ? Math.round(timeoutMs! / 1000) : this.target.timeoutS;
          fail(
            new CephCommandError(
              `${this.where}: ${shown}: the Ceph cluster did not answer within ${secs} s (monitors or OSDs down or unreachable?)` +
                (detail ? `: ${detail}` : ''),
              ETIMEDOUT,
              detail,
              true,
            ),
          );
          return;
        }
        fail(
          new CephCommandError(
            `${this.where}: ${shown} failed${signal ? ` (killed by ${signal})` : ` (exit ${code})`}: ${detail || 'no error output'}`,
            errno,
            detail,
            false,
          ),
        );
      });
    });
  }
}

function parseJson<T>(out: string, what: string): T {
  try {
    return JSON.parse(out.trim() === '' ? 'null' : out) as T;
  } catch {
    throw new StoragePoolException(`${what}: unexpected output: ${out.slice(0, 200)}`);
  }
}

/** True when `e` is a failed command that exited with `errno`. */
export function isErrno(e: unknown, errno: number): boolean {
  return e instanceof CephCommandError && e.errno === errno;
}
