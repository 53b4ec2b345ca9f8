// Runs the real qubesd as a child process for the daemon tests.
import { spawn, type ChildProcess } from 'node:child_process';
import { after } from 'node:test';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/test/daemon -> dist/src/daemon/qubesd.js */
export const QUBESD = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'daemon', 'qubesd.js');

export interface DaemonProc {
  child: ChildProcess;
  pid: number;
  /** stderr so far. */
  readonly stderr: () => string;
  /** Resolves with the exit code (or 128+signal number) when the process ends. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when stderr contains `text`. */
  waitFor(text: string | RegExp, ms?: number): Promise<void>;
}

/**
 * The environment of a test's qubesd: `env` with the runtime named. Tests'
 * domains have fake kernels, and qemu is the default runtime where it is
 * installed (src/runtime/setting.ts), so every daemon a test or a bench
 * spawns runs `bookkeeping` unless it asks for `qemu`, or for `null`: the
 * default, as a user's qubesd would choose it.
 */
export function qubesdEnv(env: NodeJS.ProcessEnv, runtime: 'bookkeeping' | 'qemu' | null = 'bookkeeping'): NodeJS.ProcessEnv {
  const out = { ...env };
  delete out['QUBES_STORAGE_RUNTIME'];
  return runtime === null ? out : { ...out, QUBES_STORAGE_RUNTIME: runtime };
}

export interface SpawnOptions {
  /** The runtime (default bookkeeping; null: qubesd's own default); see qubesdEnv. */
  readonly runtime?: 'bookkeeping' | 'qemu' | null;
  /** More environment. */
  readonly env?: NodeJS.ProcessEnv;
}

export function spawnQubesd(args: readonly string[], opts: SpawnOptions = {}): DaemonProc {
  const child = spawn(process.execPath, [QUBESD, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: qubesdEnv({ ...process.env, QUBES_STORAGE_FAILPOINTS: '', ...opts.env }, opts.runtime),
  });
  let err = '';
  const waiters = new Set<() => void>();
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    err += d;
    for (const w of [...waiters]) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      for (const w of [...waiters]) w();
      resolve({ code, signal });
    }),
  );
  return {
    child,
    pid: child.pid!,
    stderr: () => err,
    exited,
    waitFor(text, ms = 20_000) {
      const has = () => (typeof text === 'string' ? err.includes(text) : text.test(err));
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`qubesd: no ${String(text)} in ${ms} ms; stderr:\n${err}`));
        }, ms);
        const check = () => {
          if (has()) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`qubesd exited (${child.exitCode ?? child.signalCode}) before ${String(text)}; stderr:\n${err}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
  };
}

/** Starts qubesd on `baseDir` with its socket at `socketPath` and waits until it listens. */
export async function startQubesd(baseDir: string, socketPath: string, extra: readonly string[] = [], opts: SpawnOptions = {}): Promise<DaemonProc> {
  const d = spawnQubesd(['--base-dir', baseDir, '--socket', socketPath, '--storage-conf', path.join(baseDir, 'storage.conf'), ...extra], opts);
  await d.waitFor(`qubesd: listening on ${socketPath}\n`);
  return d;
}

/** A short directory for sockets (socket paths are limited to 107 bytes). */
export async function socketDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'qs-d-'));
}

/** Kills a child still running (test cleanup). */
export async function ensureDead(d: DaemonProc | undefined): Promise<void> {
  if (!d || d.child.exitCode !== null || d.child.signalCode !== null) return;
  d.child.kill('SIGKILL');
  await d.exited;
}

/**
 * What a test file's daemons need, cleaned up after all its tests: `sock()`
 * gives a socket path in a fresh directory, `running` takes the daemons to
 * kill if a test left them running.
 */
export function daemonScope(): { sock: () => Promise<string>; running: DaemonProc[] } {
  const running: DaemonProc[] = [];
  const dirs: string[] = [];
  after(async () => {
    for (const d of running) await ensureDead(d);
    for (const s of dirs) await fs.rm(s, { recursive: true, force: true });
  });
  return {
    running,
    async sock() {
      const d = await socketDir();
      dirs.push(d);
      return path.join(d, 'qubesd.sock');
    },
  };
}
