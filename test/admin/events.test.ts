import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { QubesVMNotFoundError } from '../../src/storage/errors.js';
import { AdminClient, AdminServer, EventBus, adminEventsMethod, type AdminEvent } from '../../src/admin/index.js';
import { collectingLog, startServer, tempDir, waitFor, type Harness } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');

/** A raw events connection that records every byte received. */
function rawEvents(socketPath: string, dest = 'dom0') {
  const sock = net.connect(socketPath);
  const chunks: Buffer[] = [];
  sock.on('connect', () => sock.end(b(`admin.Events dom0 name ${dest}\0`)));
  sock.on('data', (c: Buffer) => chunks.push(c));
  sock.on('error', () => {});
  return { sock, bytes: () => Buffer.concat(chunks) };
}

describe('admin.Events', () => {
  let h: Harness;
  before(async () => {
    h = await startServer({ lingerMs: 200 });
  });
  after(() => h.stop());

  test('exact frames on the wire: connection-established first', async () => {
    const r = rawEvents(h.socketPath);
    const first = b('1\0\0connection-established\0\0');
    await waitFor(() => r.bytes().length >= first.length);
    assert.deepEqual(r.bytes(), first);
    h.bus.emit('work', 'domain-start', { start_guid: 'True' });
    h.bus.emit('', 'pool-add', [['pool', 'p1']]);
    const want = Buffer.concat([first, b('1\0work\0domain-start\0start_guid\0True\0\0'), b('1\0\0pool-add\0pool\0p1\0\0')]);
    await waitFor(() => r.bytes().length >= want.length);
    assert.deepEqual(r.bytes(), want);
    r.sock.destroy();
    // The server learns of the close when it next writes.
    await waitFor(() => {
      h.bus.emit('work', 'tick');
      return h.bus.listenerCount === 0 && h.server.connectionCount === 0;
    });
  });

  test('client: all events for dom0, only the subject\'s events for a domain', async () => {
    const client = new AdminClient({ socketPath: h.socketPath });
    const all: AdminEvent[] = [];
    const work: AdminEvent[] = [];
    const a = client.events('dom0', (e) => all.push(e));
    const w = client.events('work', (e) => work.push(e));
    await Promise.all([a.established, w.established]);
    h.bus.emit('dom0', 'domain-add', { vm: 'work' });
    h.bus.emit('work', 'domain-pre-start');
    h.bus.emit('other', 'domain-start');
    h.bus.emit('work', 'property-set:label', { name: 'label', newvalue: 'red', oldvalue: 'blue' });
    await waitFor(() => all.length === 5 && work.length === 3);
    assert.deepEqual(
      all.map((e) => `${e.subject}/${e.event}`),
      ['/connection-established', 'dom0/domain-add', 'work/domain-pre-start', 'other/domain-start', 'work/property-set:label'],
    );
    assert.deepEqual(
      work.map((e) => `${e.subject}/${e.event}`),
      ['/connection-established', 'work/domain-pre-start', 'work/property-set:label'],
    );
    assert.deepEqual(work[2]!.pairs, [
      ['name', 'label'],
      ['newvalue', 'red'],
      ['oldvalue', 'blue'],
    ]);
    a.close();
    w.close();
    await a.done;
    // A subscription learns of its client's close on its next frame: 'work'
    // reaches both.
    await waitFor(() => {
      h.bus.emit('work', 'tick');
      return h.bus.listenerCount === 0;
    });
  });

  test('a client that does not read is dropped', async () => {
    const small = await startServer({ maxEventBacklogBytes: 4096 });
    try {
      const r = rawEvents(small.socketPath);
      r.sock.pause();
      await waitFor(() => small.bus.listenerCount === 1);
      const big = 'x'.repeat(8192);
      for (let i = 0; i < 2000; i++) small.bus.emit('work', 'blob', { data: big });
      await waitFor(() => small.bus.listenerCount === 0);
      assert.ok(small.log.lines.some((l) => l.includes('events client does not read')));
      r.sock.destroy();
    } finally {
      await small.stop();
    }
  });

  test('server close() ends the streams', async () => {
    const other = await startServer();
    const client = new AdminClient({ socketPath: other.socketPath });
    const handle = client.events('dom0', () => {});
    await handle.established;
    await other.server.close();
    await handle.done;
    assert.equal(other.bus.listenerCount, 0);
    await other.stop();
  });
});

test('admin.Events: an unknown destination is refused before streaming', async () => {
  const dir = await tempDir();
  const bus = new EventBus();
  const server = new AdminServer({
    socketPath: path.join(dir, 's'),
    log: collectingLog(),
    methods: {
      'admin.Events': adminEventsMethod(bus, {
        checkDest: (d) => {
          if (d !== 'dom0' && d !== 'work') throw new QubesVMNotFoundError(`No such domain: '${d}'`);
        },
      }),
    },
  });
  await server.listen();
  try {
    const client = new AdminClient({ socketPath: path.join(dir, 's') });
    const bad = client.events('nope', () => {});
    await assert.rejects(bad.established, (e: Error) => e instanceof QubesVMNotFoundError && /nope/.test(e.message));
    const good = client.events('work', () => {});
    await good.established;
    good.close();
  } finally {
    await server.close({ timeoutMs: 1000 });
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('EventBus: validates events, drops throwing listeners, unsubscribes', () => {
  const bus = new EventBus();
  const seen: string[] = [];
  const off = bus.subscribe((e) => seen.push(e.event));
  bus.subscribe(() => {
    throw new Error('bad listener');
  });
  bus.emit('', 'a');
  assert.equal(bus.listenerCount, 1);
  assert.throws(() => bus.emit('x\0', 'b'), TypeError);
  assert.throws(() => bus.emit('x', 'b', { k: 'v\0' }), TypeError);
  off();
  bus.emit('', 'c');
  assert.deepEqual(seen, ['a']);
  assert.equal(bus.listenerCount, 0);
});
