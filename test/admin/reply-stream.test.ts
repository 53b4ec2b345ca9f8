/**
 * Reply-stream methods (admin.vm.volume.ExportStream's kind) over a real
 * Unix socket: the reply arrives whole through a slow reader (the method
 * waits for the socket), an error before the first byte is an ordinary
 * error reply, the client ends the call by closing its side and the client
 * library waits until the daemon has ended it, a client that stops reading
 * is dropped, the server's shutdown ends the call, and such a method cannot
 * run in-process. A write resolves only once the socket is done with its
 * bytes (the method may reuse them), and an export read to its `end` is
 * closed without waiting for the daemon. The client reads into reused
 * buffers only once they are released (ReplyReadBuffers).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  AdminClient,
  AdminServer,
  ReplyReadBuffers,
  createDispatchContext,
  replyStreamMethod,
  runCall,
  unwrapReply,
  type MethodShape,
  type MethodTable,
} from '../../src/admin/index.js';
import { QubesClient } from '../../src/client/index.js';
import { exportLine } from '../../src/admin/protocol/export-stream.js';
import { QubesVMNotFoundError } from '../../src/storage/errors.js';
import { collectingLog, tempDir, waitFor, type LogLines } from './helpers.js';

const SHAPE: MethodShape = { arg: 'none', argNames: '', payload: 'none', dest: 'dom0', scope: 'global', access: 'read' };
const VOLUME_SHAPE: MethodShape = { arg: 'required', argNames: 'volume', payload: 'none', dest: 'domain', lookupDest: () => undefined, scope: 'local', access: 'write' };
const MiB = 1024 * 1024;
/** Chunk k of test.Stream: 1 MiB of the byte k. */
const chunk = (k: number) => Buffer.alloc(MiB, k & 0xff);
const CHUNKS = 32;
/** test.Reuse: REUSE_WRITES writes of one 4 KiB buffer, write k filled with the byte k (small writes: below the socket's high-water mark). */
const REUSE_WRITES = 2048;
const REUSE_BYTES = 4096;

describe('reply-stream methods over a socket', () => {
  let dir: string;
  let socketPath: string;
  let server: AdminServer;
  let log: LogLines;
  /** What test.Hold saw: its signal aborted, then it returned. */
  const hold = { aborted: false, returned: false, writesFalse: 0 };
  /** How many writes of test.Stream resolved only after a wait (the socket was full). */
  let waited = 0;
  /** The test ExportStream's last step (letting go of a snapshot): held until open() is called. */
  const afterEnd = { gate: Promise.resolve(), open: () => undefined as void, returned: false };
  const closeAfterEnd = () => {
    afterEnd.returned = false;
    afterEnd.gate = new Promise<void>((resolve) => (afterEnd.open = resolve));
  };

  const methods: MethodTable = {
    'test.Stream': replyStreamMethod(SHAPE, async (_call, write) => {
      for (let k = 0; k < CHUNKS; k++) {
        let settled = false;
        const p = write(chunk(k)).finally(() => (settled = true));
        await Promise.resolve();
        if (!settled) waited++;
        assert.equal(await p, true);
      }
    }),
    'test.FailFirst': replyStreamMethod(SHAPE, async () => {
      throw new QubesVMNotFoundError("no such domain: 'ghost'");
    }),
    'test.Hold': replyStreamMethod(SHAPE, async (call, write) => {
      await write(Buffer.from('held\n'));
      await new Promise<void>((resolve) => call.signal.addEventListener('abort', () => resolve(), { once: true }));
      hold.aborted = true;
      // Writing after the client's end is refused, not queued.
      if (!(await write(Buffer.from('late')))) hold.writesFalse++;
      await new Promise((r) => setTimeout(r, 200)); // ending an export takes a moment: the client must wait for it
      hold.returned = true;
    }),
    'test.Reuse': replyStreamMethod(SHAPE, async (_call, write) => {
      // One buffer for every write, refilled as soon as the last write resolved.
      const buf = Buffer.alloc(REUSE_BYTES);
      for (let k = 0; k < REUSE_WRITES; k++) {
        buf.fill(k & 0xff);
        assert.equal(await write(buf), true);
      }
    }),
    // An export whose data is complete (`end` sent), the method then busy until `afterEnd.open()`.
    'admin.vm.volume.ExportStream': replyStreamMethod(VOLUME_SHAPE, async (call, write) => {
      for (const b of [exportLine.size(8), exportLine.data(0, 4), Buffer.from('data'), exportLine.end()]) assert.equal(await write(b), true);
      await new Promise<void>((resolve) => call.signal.addEventListener('abort', () => resolve(), { once: true }));
      await afterEnd.gate;
      afterEnd.returned = true;
    }),
    'test.Flood': replyStreamMethod(SHAPE, async (_call, write) => {
      // Writes until the connection is gone: a client that reads nothing is dropped.
      while (await write(chunk(1)));
      hold.writesFalse++;
    }),
  };

  before(async () => {
    dir = await tempDir();
    socketPath = path.join(dir, 's.sock');
    log = collectingLog();
    server = new AdminServer({ socketPath, methods, log, lingerMs: 500, requestTimeoutMs: 600 });
    await server.listen();
  });
  after(async () => {
    try {
      await server.close({ timeoutMs: 2000 });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  const client = () => new AdminClient({ socketPath });

  test('the whole reply arrives through a slow reader, the method waiting for the socket', { timeout: 60_000 }, async () => {
    waited = 0;
    const got: Buffer[] = [];
    for await (const c of client().replyStream('test.Stream', 'dom0')) {
      got.push(c);
      await new Promise((r) => setTimeout(r, 1)); // slower than the daemon
    }
    const all = Buffer.concat(got);
    assert.equal(all.length, CHUNKS * MiB);
    for (let k = 0; k < CHUNKS; k++) assert.ok(all.subarray(k * MiB, (k + 1) * MiB).equals(chunk(k)), `chunk ${k}`);
    assert.ok(waited > 0, 'the method never waited for the socket: its writes are not paced by the reader');
    await waitFor(() => log.lines.some((l) => /call method=test\.Stream .*result=ok/.test(l)));
  });

  /** The reply of test.Stream, checked chunk by chunk of the method's. */
  const checkStream = (all: Buffer) => {
    assert.equal(all.length, CHUNKS * MiB);
    for (let k = 0; k < CHUNKS; k++) assert.ok(all.subarray(k * MiB, (k + 1) * MiB).equals(chunk(k)), `chunk ${k}`);
  };

  test('read into reused buffers: released ones are read into again, and the reply arrives whole', { timeout: 60_000 }, async () => {
    const buffers = new ReplyReadBuffers(256 * 1024);
    const memory = new Set<ArrayBufferLike>();
    const got: Buffer[] = [];
    let chunks = 0;
    for await (const c of client().replyStream('test.Stream', 'dom0', '', { buffers })) {
      chunks++;
      memory.add(c.buffer);
      got.push(Buffer.from(c)); // copied: done with it
      buffers.releaser()();
      await new Promise((r) => setTimeout(r, 1));
    }
    checkStream(Buffer.concat(got));
    assert.ok(memory.size * 4 < chunks, `${chunks} chunks read into ${memory.size} buffers`);
  });

  test('read into reused buffers: chunks never released stay as they came', { timeout: 60_000 }, async () => {
    const buffers = new ReplyReadBuffers(256 * 1024);
    const kept: Buffer[] = [];
    for await (const c of client().replyStream('test.Stream', 'dom0', '', { buffers })) kept.push(c);
    checkStream(Buffer.concat(kept));
  });

  test('a write resolves once the socket is done with its bytes: the method may refill them at once', { timeout: 60_000 }, async () => {
    const got: Buffer[] = [];
    for await (const c of client().replyStream('test.Reuse', 'dom0')) {
      got.push(c);
      await new Promise((r) => setTimeout(r, 1)); // slower than the daemon: its writes queue in the socket
    }
    const all = Buffer.concat(got);
    assert.equal(all.length, REUSE_WRITES * REUSE_BYTES);
    for (let k = 0; k < REUSE_WRITES; k++) {
      const w = all.subarray(k * REUSE_BYTES, (k + 1) * REUSE_BYTES);
      assert.ok(w.equals(Buffer.alloc(REUSE_BYTES, k & 0xff)), `write ${k} arrived as written, not as the buffer was refilled after it (first byte ${w[0]})`);
    }
  });

  test('an export read to its end is closed at once; one ended early waits for the daemon', { timeout: 20_000 }, async () => {
    const q = QubesClient.overSocket(socketPath);
    // Read to `end`: end() returns while the daemon still lets go of what it held.
    closeAfterEnd();
    let opened = await q.openExport('work', 'private');
    assert.equal(opened.kind, 'data');
    if (opened.kind !== 'data') return;
    const pieces: string[] = [];
    for await (const p of opened.pieces) pieces.push(`${p.offset}:${p.bytes.toString()}`);
    assert.deepEqual(pieces, ['0:data']);
    const ending = opened.end();
    const first = await Promise.race([ending.then(() => 'ended'), new Promise((r) => setTimeout(() => r('still waiting'), 3000))]);
    assert.equal(first, 'ended', 'end() after a complete export does not wait for the daemon');
    assert.equal(afterEnd.returned, false, 'the daemon was still busy then');
    afterEnd.open();
    await ending;
    await waitFor(() => afterEnd.returned);
    // Ended before its `end` came (the size only): end() waits until the daemon has ended the call.
    closeAfterEnd();
    opened = await q.openExport('work', 'private');
    setTimeout(() => afterEnd.open(), 200);
    await opened.end();
    assert.equal(afterEnd.returned, true, 'an early end() returned only after the daemon had ended the export');
    await q.close();
  });

  test('an error before the first byte is the error reply, as its class', { timeout: 20_000 }, async () => {
    await assert.rejects(
      (async () => {
        for await (const _ of client().replyStream('test.FailFirst', 'dom0')) assert.fail('no data expected');
      })(),
      (e: unknown) => e instanceof QubesVMNotFoundError && /ghost/.test((e as Error).message),
    );
  });

  test('the client ends the call by closing its side, and its end returns once the method has returned', { timeout: 20_000 }, async () => {
    Object.assign(hold, { aborted: false, returned: false, writesFalse: 0 });
    const it = client().replyStream('test.Hold', 'dom0');
    const first = await it.next();
    assert.equal(first.value?.toString(), 'held\n');
    assert.equal(hold.aborted, false, 'the call runs while the client holds it');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(hold.aborted, false, 'still held');
    await it.return(undefined);
    assert.equal(hold.aborted, true, 'the method saw its signal aborted');
    assert.equal(hold.returned, true, 'the end returned only after the method had (its connection closed)');
    assert.equal(hold.writesFalse, 1, 'a write after the client ended is refused');
  });

  test('a client that stops reading is dropped after requestTimeoutMs; the method learns it', { timeout: 20_000 }, async () => {
    hold.writesFalse = 0;
    const sock = net.connect(socketPath);
    sock.on('error', () => undefined);
    await new Promise<void>((resolve) => sock.once('connect', resolve));
    sock.pause(); // reads nothing
    sock.write('test.Flood dom0 name dom0\0');
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    sock.resume();
    sock.pause();
    await waitFor(() => log.lines.some((l) => /dropped connection \(test\.Flood from dom0\): client stopped reading the reply/.test(l)), 10_000);
    await waitFor(() => hold.writesFalse === 1, 5000);
    sock.destroy();
    await closed;
  });

  test('payload after the header drops the connection', { timeout: 20_000 }, async () => {
    const sock = net.connect(socketPath);
    sock.on('error', () => undefined);
    const got: Buffer[] = [];
    sock.on('data', (c: Buffer) => got.push(c));
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    await new Promise<void>((resolve) => sock.once('connect', resolve));
    sock.write('test.Hold dom0 name dom0\0x');
    await closed;
    assert.ok(Buffer.concat(got).length <= 'held\n'.length + 2, 'at most the first bytes');
    await waitFor(() => log.lines.some((l) => /dropped connection \(test\.Hold from dom0\): test\.Hold takes no payload/.test(l)));
  });

  test('the server shutting down ends a held call', { timeout: 20_000 }, async () => {
    Object.assign(hold, { aborted: false, returned: false });
    const s2 = path.join(dir, 's2.sock');
    const other = new AdminServer({ socketPath: s2, methods, log: collectingLog(), lingerMs: 500 });
    await other.listen();
    const it = new AdminClient({ socketPath: s2 }).replyStream('test.Hold', 'dom0');
    assert.equal((await it.next()).value?.toString(), 'held\n');
    await other.close({ timeoutMs: 5000 });
    assert.equal(hold.returned, true, 'close() waited for the held call, which it ended');
    assert.equal((await it.next()).done, true, 'the client sees the end');
  });

  test('in-process, a reply-stream method is refused: it needs a connection', async () => {
    const ctx = createDispatchContext({ methods, log: collectingLog() });
    assert.throws(() => unwrapReply(Buffer.alloc(0)));
    const reply = await runCall(ctx, { method: 'test.Stream', dest: 'dom0' });
    assert.throws(() => unwrapReply(reply), /test\.Stream streams its reply and needs a connection/);
  });
});

test('ReplyReadBuffers: a buffer is handed out again only once released, never while it holds the last chunk yielded', () => {
  const rb = new ReplyReadBuffers(16);
  const a = rb.next();
  const early = rb.releaser(); // taken before a was yielded: frees nothing of it
  rb.yielding(a.subarray(0, 4));
  early();
  const b = rb.next();
  assert.notEqual(b.buffer, a.buffer, 'a was never released');
  rb.releaser()(); // a is the last chunk yielded: its records may still be handed out
  const c = rb.next();
  assert.ok(c.buffer !== a.buffer && c.buffer !== b.buffer, 'the last chunk yielded is kept');
  rb.yielding(b.subarray(0, 8));
  rb.yielding(Buffer.from('a copy the stream made')); // not ours: nothing to free
  rb.releaser()();
  assert.equal(rb.next().buffer, a.buffer, 'a, released with b after it, is read into again');
  assert.notEqual(rb.next().buffer, b.buffer, 'b, the last one yielded, is not');
});
