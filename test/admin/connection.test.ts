/** One server-side connection (connection.ts) over a real Unix socket, where the server class cannot reach. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  EventBus,
  createDispatchContext,
  inProcessCaller,
  serveConnection,
  type Connection,
  type ConnectionLimits,
} from '../../src/admin/index.js';
import { collectingLog, rawExchange, slowProbe, tempDir, toyMethods } from './helpers.js';

const LIMITS: ConnectionLimits = {
  headerTimeoutMs: 10_000,
  requestTimeoutMs: 10_000,
  maxRequestBytes: 65536,
  maxEventBacklogBytes: 1 << 20,
  lingerMs: 5_000,
  minStreamBytesPerWindow: 1,
  minStreamWindowMs: 10_000,
};

// The timeout only stops a hang (the connection never finishing) from holding up the run.
test('a throw while sending the reply ends that connection (logged, socket closed, finished settles), not the process', { timeout: 30_000 }, async () => {
  const dir = await tempDir();
  const socketPath = path.join(dir, 's.sock');
  const log = collectingLog();
  const ctx = createDispatchContext({ methods: toyMethods(new EventBus(), { current: slowProbe() }), log });
  const conns: Connection[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    // A fault of ours at the last step: writing the reply throws.
    socket.end = () => {
      throw new Error('end failed');
    };
    conns.push(serveConnection(socket, ctx, LIMITS, inProcessCaller()));
  });
  try {
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    const r = await rawExchange(socketPath, Buffer.from('test.Echo dom0 name dom0\0hello', 'latin1'));
    assert.equal(r.data.length, 0, 'no reply: the socket was closed');
    assert.equal(conns.length, 1);
    await conns[0]!.finished;
    assert.ok(
      log.lines.some((l) => l === 'error internal error while sending a reply: Error: end failed'),
      log.lines.join('\n'),
    );
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await fs.rm(dir, { recursive: true, force: true });
  }
});

// A refused events call is answered at once, before the client's EOF (an
// events client may not half-close); the server then waits lingerMs for
// that EOF and no longer: a client that never closes cannot hold the socket.
test('after a reply sent before the client EOF, a client that never closes is cut off after lingerMs', { timeout: 30_000 }, async () => {
  const dir = await tempDir();
  const socketPath = path.join(dir, 's.sock');
  const ctx = createDispatchContext({ methods: toyMethods(new EventBus(), { current: slowProbe() }), log: collectingLog() });
  const conns: Connection[] = [];
  const refused = { uid: 12345, pid: 1, relays: false, refusal: 'not in the socket group' };
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    conns.push(serveConnection(socket, ctx, { ...LIMITS, lingerMs: 300 }, refused));
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  // Half-open allowed: the client does not answer the server's FIN with its own.
  const client = net.connect({ path: socketPath, allowHalfOpen: true });
  try {
    const got: Buffer[] = [];
    client.on('data', (c: Buffer) => got.push(c));
    client.on('error', () => {});
    const replied = new Promise<void>((resolve) => client.on('end', () => resolve()));
    await new Promise<void>((resolve) => client.on('connect', resolve));
    const sent = performance.now();
    client.write('admin.Events dom0 name dom0\0'); // and never end()
    await replied;
    assert.match(Buffer.concat(got).toString('latin1'), /^2\0PermissionDenied\0/, 'the refusal came first, with the FIN of the server');
    assert.equal(conns.length, 1);
    const closedAt = await Promise.race([
      conns[0]!.finished.then(() => performance.now()),
      new Promise<number>((resolve) => setTimeout(() => resolve(-1), 5_000)),
    ]);
    assert.ok(closedAt > 0, 'the server closed the connection within 5 s');
    assert.ok(closedAt - sent >= 250, `closed after the linger (${Math.round(closedAt - sent)} ms), not at the reply`);
  } finally {
    client.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await fs.rm(dir, { recursive: true, force: true });
  }
});
