import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as errors from '../../src/storage/errors.js';
import { AdminClient, QubesDaemonCommunicationError, errorFromReply } from '../../src/admin/index.js';
import { slowProbe, startServer, tempDir } from './helpers.js';

test('errorFromReply: every class of storage/errors maps to itself, others to QubesException', () => {
  let n = 0;
  for (const [name, value] of Object.entries(errors)) {
    if (typeof value !== 'function' || !(value === errors.QubesException || value.prototype instanceof errors.QubesException)) continue;
    const e = errorFromReply(name, 'msg');
    assert.equal(e.constructor, value, name);
    assert.equal(e.qubesName, name);
    assert.equal(e.message, 'msg');
    n++;
  }
  assert.ok(n >= 18, `only ${n} error classes`);
  for (const name of ['QubesSomethingNew', 'Error', 'storageError', 'Object', '__proto__']) {
    const e = errorFromReply(name, 'm');
    assert.equal(e.constructor, errors.QubesException, name);
  }
});

test('callStream: a payload far over 64 KiB', async () => {
  const h = await startServer();
  try {
    const client = new AdminClient({ socketPath: h.socketPath });
    const chunks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(65536, i));
    assert.equal((await client.callStream('test.Count', 'dom0', '', Readable.from(chunks))).toString(), String(64 * 65536));
    // An ordinary call with the same payload is dropped: no reply.
    await assert.rejects(client.call('test.Echo', 'dom0', '', Buffer.concat(chunks)), QubesDaemonCommunicationError);
  } finally {
    await h.stop();
  }
});

test('client: no server, a dropped call, a timeout', async () => {
  const dir = await tempDir();
  try {
    const nobody = new AdminClient({ socketPath: path.join(dir, 'none.sock') });
    await assert.rejects(nobody.call('test.Echo', 'dom0'), QubesDaemonCommunicationError);

    // A server that accepts and closes without answering.
    const mute = net.createServer((s) => s.destroy());
    const mutePath = path.join(dir, 'mute.sock');
    await new Promise<void>((r) => mute.listen(mutePath, () => r()));
    await assert.rejects(new AdminClient({ socketPath: mutePath }).call('test.Echo', 'dom0'), /without a reply/);
    await new Promise<void>((r) => mute.close(() => r()));

    // Bad reply bytes.
    const junk = net.createServer((s) => {
      s.resume();
      s.end(Buffer.from('hello'));
    });
    const junkPath = path.join(dir, 'junk.sock');
    await new Promise<void>((r) => junk.listen(junkPath, () => r()));
    await assert.rejects(new AdminClient({ socketPath: junkPath }).call('test.Echo', 'dom0'), errors.ProtocolError);
    await new Promise<void>((r) => junk.close(() => r()));

    const h = await startServer();
    try {
      h.probe.current = slowProbe();
      const impatient = new AdminClient({ socketPath: h.socketPath, timeoutMs: 100 });
      await assert.rejects(impatient.call('test.Slow', 'dom0'), /in time/);
      h.probe.current.release.resolve('');
    } finally {
      await h.stop();
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('client: header fields are checked before anything is sent', async () => {
  const client = new AdminClient({ socketPath: '/nonexistent/socket' });
  assert.throws(() => client.call('bad method', 'dom0'), /bad method/);
  assert.throws(() => client.call('test.Echo', 'two words'), /bad destination/);
});
