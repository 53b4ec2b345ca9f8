/**
 * The web page's tests: the real qubesd (its own process, over its socket,
 * the bookkeeping runtime), the real qubes-storage-web, and headless Chromium
 * from Debian driven by playwright-core (nothing downloaded). A missing
 * browser skips the tests with the reason, except under QS_TEST_REQUIRE=1
 * (CI), where it fails them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/ */
export const DIST = path.resolve(here, '..', '..');
export const WEB = path.join(DIST, 'src', 'web', 'qubes-storage-web.js');
export const QUBESD = path.join(DIST, 'src', 'daemon', 'qubesd.js');

/** Debian's chromium (QS_CHROMIUM names another), or why there is none. */
export function findChromium(): { path: string } | { missing: string } {
  const p = process.env['QS_CHROMIUM'] ?? '/usr/bin/chromium';
  try {
    accessSync(p, fsc.X_OK);
    return { path: p };
  } catch {
    return { missing: `no chromium at ${p} (Debian package chromium; scripts/install-test-deps.sh installs it)` };
  }
}

/** The suite's skip reason; under QS_TEST_REQUIRE=1 a missing browser throws instead (the file fails). */
export function chromiumOrSkip(): { path: string | null; skip: string | false } {
  const c = findChromium();
  if ('path' in c) return { path: c.path, skip: false };
  if (process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: ${c.missing}`);
  return { path: null, skip: c.missing };
}

/** test-output/web/ in the checkout (ignored by git): screenshots, kept after the run. */
export async function outputDir(): Promise<string> {
  const dir = path.resolve(DIST, '..', 'test-output', 'web');
  await fs.mkdir(dir, { recursive: true });
  return dir;
}

export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  out(): string;
  err(): string;
  /** Resolves with how the process ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when stdout+stderr match `re` (rejects if the process ends first). */
  waitFor(re: RegExp): Promise<RegExpExecArray>;
  /** SIGTERM and wait (SIGKILL if still there after 20 s). */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnNode(script: string, args: readonly string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of [...waiters]) w();
  };
  child.stdout!.setEncoding('utf8').on('data', (d: string) => ((out += d), poke()));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => ((err += d), poke()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      poke();
      resolve({ code, signal });
    }),
  );
  return {
    child,
    pid: child.pid!,
    out: () => out,
    err: () => err,
    exited,
    waitFor(re) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(out + err);
          if (m) {
            waiters.delete(check);
            resolve(m);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            waiters.delete(check);
            reject(new Error(`${path.basename(script)} exited (${child.exitCode ?? child.signalCode}) before ${String(re)}:\n${out}${err}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
  };
}

/** qubesd on `base`, socket `socket`, bookkeeping runtime; resolves once it listens. */
export async function startDaemon(base: string, socket: string): Promise<Proc> {
  const d = spawnNode(QUBESD, ['--base-dir', base, '--socket', socket, '--storage-conf', path.join(base, 'storage.conf')], {
    PATH: process.env['PATH'],
    HOME: base,
    QUBES_STORAGE_RUNTIME: 'bookkeeping',
  });
  await d.waitFor(new RegExp(`qubesd: listening on ${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n`));
  return d;
}

export interface Web extends Proc {
  /** http://127.0.0.1:PORT */
  readonly base: string;
  readonly token: string;
}

/** qubes-storage-web against `socket`; resolves with its address and token once it prints them. */
export async function startWeb(socket: string, stateDir: string, extra: readonly string[] = []): Promise<Web> {
  const w = spawnNode(WEB, ['--listen', '127.0.0.1:0', '--socket', socket, '--state-dir', stateDir, ...extra], {
    PATH: process.env['PATH'],
    HOME: stateDir,
  });
  const m = await w.waitFor(/open (http:\/\/127\.0\.0\.1:\d+)\/\?token=([A-Za-z0-9_-]+)\n/);
  return { ...w, base: m[1]!, token: m[2]! };
}
