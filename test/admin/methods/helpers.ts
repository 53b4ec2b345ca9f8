// A real admin socket over a runtime on a test filesystem, for the pool and
// volume method tests: raw replies (exact bytes) and typed errors.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { AdminClient, AdminServer, type AdminEvent, type AdminServerOptions } from '../../../src/admin/index.js';
import { openRuntime, type Runtime, type RuntimeOptions } from '../../../src/daemon/runtime.js';
import type { TestFs } from '../../helpers/filesystems.js';
import { MiB } from '../../helpers/data.js';
import { collectingLog, rawExchange, type LogLines } from '../helpers.js';

export const ROOT_SIZE = 8 * MiB;
export const PRIVATE_SIZE = 4 * MiB;

export interface Rig {
  dir: string;
  poolDir: string;
  socketPath: string;
  rt: Runtime;
  server: AdminServer;
  client: AdminClient;
  log: LogLines;
  /** Every event of the bus since the rig started. */
  events: AdminEvent[];
  stop(): Promise<void>;
}

/**
 * Opens a runtime in `dir` (no storage.conf, no packages) with a file-reflink
 * pool `default` in `dir/pool` and serves it on a socket (in a short
 * temporary directory: socket paths are limited to 107 bytes).
 */
export async function startRig(
  tfs: TestFs,
  dir: string,
  over: Partial<RuntimeOptions> = {},
  serverOptions: Partial<Omit<AdminServerOptions, 'socketPath' | 'methods' | 'log'>> = {},
): Promise<Rig> {
  const rt = await openRuntime({
    baseDir: dir,
    storageConf: null,
    nodeModules: [],
    sizes: { root: ROOT_SIZE, private: PRIVATE_SIZE },
    ...over,
  });
  const poolDir = path.join(dir, 'pool');
  await rt.app.addPool('file-reflink', 'default', { dir_path: poolDir, setup_check: tfs.reflink });
  const sockDir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-m-'));
  const socketPath = path.join(sockDir, 's');
  const log = collectingLog();
  const server = new AdminServer({ socketPath, methods: rt.methods, log, lingerMs: 500, ...serverOptions });
  await server.listen();
  const events: AdminEvent[] = [];
  const off = rt.bus.subscribe((e) => events.push(e));
  return {
    dir,
    poolDir,
    socketPath,
    rt,
    server,
    client: new AdminClient({ socketPath, timeoutMs: 60_000 }),
    log,
    events,
    async stop() {
      off();
      await server.close({ timeoutMs: 5000 });
      await rt.close();
      await fs.rm(sockDir, { recursive: true, force: true });
    },
  };
}

/** The raw reply bytes of one call. */
export async function raw(socketPath: string, method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<Buffer> {
  const head = Buffer.from(`${method}${arg ? `+${arg}` : ''} dom0 name ${dest}\0`, 'latin1');
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  return (await rawExchange(socketPath, Buffer.concat([head, body]), { timeoutMs: 30_000 })).data;
}

/** The result of a call that must succeed, as text (the reply must start with 0x30 0x00). */
export async function ok(socketPath: string, method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<string> {
  const r = await raw(socketPath, method, dest, arg, payload);
  assert.equal(r.subarray(0, 2).toString('latin1'), '0\0', `${method}+${arg} ${dest}: ${r.toString('latin1')}`);
  return r.subarray(2).toString('utf8');
}

export interface WireError {
  name: string;
  message: string;
}

/** The class name and message of a call that must fail (exact framing checked). */
export async function fails(socketPath: string, method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<WireError> {
  const r = await raw(socketPath, method, dest, arg, payload);
  const text = r.toString('utf8');
  assert.ok(text.startsWith('2\0'), `${method}+${arg} ${dest} should fail, got ${JSON.stringify(text)}`);
  const parts = text.slice(2).split('\0');
  assert.equal(parts.length, 4, `error reply framing: ${JSON.stringify(text)}`);
  assert.equal(parts[3], '', 'error reply ends with NUL');
  assert.equal(parts[1], '', 'no traceback without debug');
  return { name: parts[0]!, message: parts[2]! };
}

/** Asserts the error class (and optionally that the message matches). */
export async function failsWith(
  socketPath: string,
  name: string,
  call: [method: string, dest: string, arg?: string, payload?: string | Buffer],
  message?: RegExp,
): Promise<WireError> {
  const e = await fails(socketPath, ...call);
  assert.equal(e.name, name, `${call[0]}+${call[2] ?? ''}: ${e.name}: ${e.message}`);
  if (message) assert.match(e.message, message);
  return e;
}

/** A streamed call (imports) through the client: resolves to the result text or rejects with the mapped error. */
export async function stream(rig: Rig, method: string, dest: string, arg: string, chunks: Iterable<Buffer> | AsyncIterable<Buffer>): Promise<string> {
  return (await rig.client.callStream(method, dest, arg, Readable.from(chunks))).toString('utf8');
}
