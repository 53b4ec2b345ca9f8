/**
 * A call's abort signal is made only when a method asks for it
 * (lazyAbort in src/admin/dispatch.ts). A call aborted before its method
 * first looks must still see an aborted signal: when the server gives up on
 * it at shutdown, and when the server cuts a client that stalls its
 * streamed payload.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { method, streamingMethod, lazyAbort, type AdminStreamCall } from '../../src/admin/dispatch.js';
import { deferred, startServer } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');

/** A method that first waits for `release`, then reports whether its signal is aborted. */
function lateLooker() {
  const started = deferred();
  const release = deferred();
  const seen = deferred<boolean>();
  const handler = async (c: { signal: AbortSignal }) => {
    started.resolve();
    await release.promise;
    seen.resolve(c.signal.aborted);
    return '';
  };
  return { started, release, seen, handler };
}

function closedByServer(sock: net.Socket): Promise<void> {
  return new Promise((r) => sock.once('close', () => r()));
}

test('lazyAbort: a signal asked for after the abort is aborted; one asked for before is aborted later, once', () => {
  const late = lazyAbort();
  late.abort();
  assert.equal(late.signal.aborted, true);
  const early = lazyAbort();
  const s = early.signal;
  let events = 0;
  s.addEventListener('abort', () => events++);
  assert.equal(s.aborted, false);
  early.abort();
  early.abort();
  assert.equal(s.aborted, true);
  assert.equal(events, 1);
  assert.equal(early.signal, s, 'the same signal every time');
});

test('a call the server gives up on at shutdown sees an aborted signal when it first looks', async () => {
  const m = lateLooker();
  const h = await startServer({ methods: { 'test.Late': method(m.handler) } });
  const sock = net.connect(h.socketPath);
  sock.on('error', () => {});
  const gone = closedByServer(sock);
  sock.on('connect', () => sock.end(b('test.Late dom0 name dom0\0')));
  await m.started.promise;
  const closing = h.server.close({ timeoutMs: 20 });
  await gone; // dropped after its abort
  m.release.resolve();
  assert.equal(await m.seen.promise, true);
  await closing;
  await h.stop();
});

test('a streamed call whose stalled client the server cuts sees an aborted signal when it first looks', async () => {
  const m = lateLooker();
  // Released when the server destroys the payload stream, which it does when the socket has closed.
  const handler = (c: AdminStreamCall) => {
    c.payload.once('close', () => m.release.resolve());
    return m.handler(c);
  };
  const h = await startServer({
    methods: { 'test.LateStream': streamingMethod(handler) },
    minStreamBytesPerWindow: 1 << 20,
    minStreamWindowMs: 50,
  });
  try {
    const sock = net.connect(h.socketPath);
    sock.on('error', () => {});
    const gone = closedByServer(sock);
    sock.on('connect', () => sock.write(b('test.LateStream dom0 name dom0\0a few bytes, then nothing')));
    await m.started.promise;
    await gone; // cut for sending too slowly
    assert.equal(await m.seen.promise, true);
  } finally {
    await h.stop();
  }
});

test('a call that ends normally sees a signal that is not aborted', async () => {
  const m = lateLooker();
  const h = await startServer({ methods: { 'test.Late': method(m.handler) } });
  try {
    const sock = net.connect(h.socketPath);
    sock.on('error', () => {});
    sock.on('connect', () => sock.end(b('test.Late dom0 name dom0\0')));
    await m.started.promise;
    m.release.resolve();
    assert.equal(await m.seen.promise, false);
    sock.resume();
    await closedByServer(sock);
  } finally {
    await h.stop();
  }
});
