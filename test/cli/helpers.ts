/**
 * Running the tools as child processes on a temporary base directory,
 * embedded (no daemon) or against a qubesd started here and stopped by pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runNode } from '../helpers/process.js';
import { qubesdEnv } from '../daemon/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/ */
export const DIST = path.resolve(here, '..', '..');
export const CLI_DIR = path.join(DIST, 'src', 'cli');
export const QUBESD = path.join(DIST, 'src', 'daemon', 'qubesd.js');

export const TOOLS = ['qvm-pool', 'qvm-volume', 'qvm-create', 'qvm-clone', 'qvm-remove', 'qvm-start', 'qvm-shutdown', 'qvm-prefs', 'qvm-ls'];

export interface Result {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | null;
}

export async function tempBase(prefix = 'qs-cli-'): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** The environment of a tool: only what decides the transport and the base directory. */
export function toolEnv(base: string, socket?: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, ...extra };
  // A daemon of this test's own, or explicitly none: never a daemon of the machine.
  if (socket === undefined) env['QUBES_STORAGE_EMBEDDED'] = '1';
  else env['QUBESD_SOCKET'] = socket;
  return env;
}

export function run(tool: string, args: readonly string[], env: NodeJS.ProcessEnv, input?: string): Promise<Result> {
  return runNode(path.join(CLI_DIR, `${tool}.js`), args, env, input);
}

export interface Daemon {
  readonly socket: string;
  readonly pid: number;
  /** What the daemon has written to stderr so far. */
  log(): string;
  stop(): Promise<void>;
}

/** Starts qubesd on `base` and resolves once it listens. */
export async function startDaemon(base: string): Promise<Daemon> {
  const socket = path.join(base, 's');
  const child: ChildProcess = spawn(process.execPath, [QUBESD, '--base-dir', base, '--socket', socket], {
    env: qubesdEnv({ PATH: process.env['PATH'], HOME: base }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`qubesd did not start:\n${log}`)), 15_000);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      log += d;
      if (log.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`qubesd exited (${code}):\n${log}`));
    });
  });
  child.removeAllListeners('exit');
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    socket,
    pid: child.pid!,
    log: () => log,
    async stop() {
      process.kill(child.pid!, 'SIGTERM');
      await exited;
    },
  };
}

/** The base directory written as $BASE, so that outputs of different runs compare. */
export function normalize(text: string, base: string): string {
  return text.split(base).join('$BASE');
}

/** A Unix socket in front of a daemon's that passes every connection on and records the method each one called. */
export interface CountingProxy {
  readonly socket: string;
  /** The method of each connection so far (`-` for one that sent no header: a probe). */
  readonly methods: string[];
  close(): Promise<void>;
}

/**
 * Starts a proxy at `socket` for the daemon at `target`. The admin protocol
 * makes one connection per call, its header first (`METHOD[+ARG] SOURCE
 * name DEST\0`), so counting connections counts calls.
 */
export async function countingProxy(socket: string, target: string): Promise<CountingProxy> {
  const methods: string[] = [];
  const open = new Set<net.Socket>();
  // Half-open both ways: a client ends its request with a FIN and still reads the reply.
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const i = methods.push('-') - 1;
    const upstream = net.connect({ path: target, allowHalfOpen: true });
    open.add(client).add(upstream);
    let head = '';
    client.on('data', (d: Buffer) => {
      if (head.includes(' ')) return;
      head += d.toString('latin1');
      const sp = head.indexOf(' ');
      if (sp >= 0) methods[i] = head.slice(0, sp).split('+')[0]!;
    });
    client.pipe(upstream).pipe(client);
    // Each side's end is passed on by pipe(); an error on either ends both.
    const fail = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail).on('close', () => open.delete(client));
    upstream.on('error', fail).on('close', () => open.delete(upstream));
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socket, () => resolve()));
  return {
    socket,
    methods,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}
