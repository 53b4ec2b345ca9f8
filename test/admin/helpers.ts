/** Fixtures for the admin tests: temp dirs, a toy method table, raw socket exchanges. */
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { QubesValueError } from '../../src/storage/errors.js';
import {
  AdminServer,
  EventBus,
  adminEventsMethod,
  method,
  streamingMethod,
  type AdminLog,
  type AdminServerOptions,
  type MethodTable,
} from '../../src/admin/index.js';

export async function tempDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'qs-admin-'));
}

export interface LogLines extends AdminLog {
  readonly lines: string[];
}

export function collectingLog(): LogLines {
  const lines: string[] = [];
  return {
    lines,
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
  };
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Observations of the toy `test.Slow` method. */
export interface SlowProbe {
  started: Deferred<void>;
  release: Deferred<string>;
  aborted: Deferred<void>;
}

export function slowProbe(): SlowProbe {
  return { started: deferred(), release: deferred<string>(), aborted: deferred() };
}

/** A toy table; `probe` is read at call time so tests may replace it. */
export function toyMethods(bus: EventBus, probe: { current: SlowProbe }): MethodTable {
  return {
    'test.Echo': method(async (c) => c.payload),
    'test.Arg': method(async (c) => `${c.arg}|${c.source}|${c.dest}`),
    'test.Void': method(async () => undefined),
    'test.Fail': method(async () => {
      throw new QubesValueError('bad value: x');
    }),
    'test.Crash': method(async () => {
      throw new Error('secret internal detail');
    }),
    'test.Slow': method(async (c) => {
      const p = probe.current;
      c.signal.addEventListener('abort', () => p.aborted.resolve(), { once: true });
      p.started.resolve();
      return p.release.promise;
    }),
    'test.Count': streamingMethod(async (c) => {
      let n = 0;
      for await (const chunk of c.payload) n += (chunk as Buffer).length;
      return String(n);
    }),
    'admin.Events': adminEventsMethod(bus),
  };
}

export interface Harness {
  dir: string;
  socketPath: string;
  server: AdminServer;
  bus: EventBus;
  log: LogLines;
  probe: { current: SlowProbe };
  stop(): Promise<void>;
}

export async function startServer(extra: Partial<AdminServerOptions> = {}): Promise<Harness> {
  const dir = await tempDir();
  const socketPath = path.join(dir, 'qubesd.sock');
  const bus = new EventBus();
  const probe = { current: slowProbe() };
  const log = collectingLog();
  const server = new AdminServer({
    socketPath,
    methods: toyMethods(bus, probe),
    log,
    lingerMs: 500,
    ...extra,
  });
  await server.listen();
  return {
    dir,
    socketPath,
    server,
    bus,
    log,
    probe,
    async stop() {
      await server.close({ timeoutMs: 2000 });
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

export interface RawResult {
  /** Everything the server sent before closing. */
  data: Buffer;
  /** Milliseconds from connect to close. */
  ms: number;
}

/**
 * Sends raw bytes and collects the reply until the server closes. With
 * `end: false` the write side stays open (a slow or stuck client).
 */
export function rawExchange(socketPath: string, bytes: Uint8Array, opts: { end?: boolean; timeoutMs?: number } = {}): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const chunks: Buffer[] = [];
    const sock = net.connect(socketPath);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('rawExchange: server did not close the connection in time'));
    }, opts.timeoutMs ?? 5000);
    sock.on('connect', () => {
      if (opts.end === false) sock.write(bytes);
      else sock.end(bytes);
    });
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => {});
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), ms: performance.now() - start });
    });
  });
}

export const OK_HELLO = Buffer.from('0\0hello', 'latin1');

/** A normal call on a raw connection; asserts nothing, returns the reply. */
export async function echo(socketPath: string, text = 'hello'): Promise<Buffer> {
  return (await rawExchange(socketPath, Buffer.from(`test.Echo dom0 name dom0\0${text}`, 'latin1'))).data;
}

/** Polls until `cond` holds or `ms` pass. */
export async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('waitFor: condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
