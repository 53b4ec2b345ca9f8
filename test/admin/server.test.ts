import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { PermissionDenied, QubesException, QubesValueError } from '../../src/storage/errors.js';
import { AdminClient, AdminServer, MAX_REQUEST_BYTES, PeerCredentialsError, parsePolicy } from '../../src/admin/index.js';
import { OK_HELLO, echo, rawExchange, slowProbe, startServer, tempDir, toyMethods, waitFor, type Harness } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');

describe('replies', () => {
  let h: Harness;
  before(async () => {
    h = await startServer();
  });
  after(() => h.stop());

  test('success: exact bytes', async () => {
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
    assert.deepEqual((await rawExchange(h.socketPath, b('test.Arg+foo dom0 name work\0'))).data, b('0\0foo|dom0|work'));
    assert.deepEqual((await rawExchange(h.socketPath, b('test.Arg+x dom0 keyword adminvm\0'))).data, b('0\0x|dom0|dom0'));
    assert.deepEqual((await rawExchange(h.socketPath, b('test.Void dom0 name dom0\0'))).data, b('0\0'));
    const bin = Buffer.from([0, 1, 2, 255, 0]);
    assert.deepEqual((await rawExchange(h.socketPath, Buffer.concat([b('test.Echo dom0 name dom0\0'), bin]))).data, Buffer.concat([b('0\0'), bin]));
  });

  test('QubesException: class name and message, empty traceback', async () => {
    assert.deepEqual((await rawExchange(h.socketPath, b('test.Fail dom0 name dom0\0'))).data, b('2\0QubesValueError\0\0bad value: x\0'));
  });

  test('other exceptions: generic QubesException, detail only in the log', async () => {
    const { data } = await rawExchange(h.socketPath, b('test.Crash dom0 name dom0\0'));
    assert.equal(data.subarray(0, 18).toString('latin1'), '2\0QubesException\0\0');
    assert.ok(!data.includes('secret'), 'no internal detail on the wire');
    assert.ok(!data.includes('.js:'), 'no stack trace on the wire');
    assert.ok(h.log.lines.some((l) => l.startsWith('error') && l.includes('secret internal detail')));
  });

  test('unknown method (and inherited property names): PermissionDenied', async () => {
    for (const m of ['test.Nope', 'constructor', '__proto__', 'toString']) {
      const { data } = await rawExchange(h.socketPath, b(`${m} dom0 name dom0\0`));
      assert.equal(data.subarray(0, 20).toString('latin1'), '2\0PermissionDenied\0\0', m);
    }
  });

  test('one log line per call with method, arg, source, dest, result, duration', async () => {
    const before = h.log.lines.length;
    await rawExchange(h.socketPath, b('test.Arg+a1 dom0 name work\0'));
    await rawExchange(h.socketPath, b('test.Fail dom0 name w2\0'));
    const lines = h.log.lines.slice(before);
    assert.equal(lines.length, 2, lines.join('\n'));
    assert.match(lines[0]!, /^info call method=test\.Arg arg=a1 source=dom0 dest=work result=ok duration_ms=\d+ uid=0 pid=\d+$/);
    assert.match(lines[1]!, /^warn call method=test\.Fail arg=- source=dom0 dest=w2 result=QubesValueError reason="bad value: x" duration_ms=\d+ uid=0 pid=\d+$/);
  });

  test('socket mode is 0660', async () => {
    const st = await fs.lstat(h.socketPath);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o660);
    assert.deepEqual((await fs.readdir(h.dir)).sort(), ['qubesd.sock'], 'no temporary directory left behind');
  });
});

describe('framing errors drop the connection without a reply', () => {
  let h: Harness;
  before(async () => {
    h = await startServer({ headerTimeoutMs: 300, requestTimeoutMs: 300 });
  });
  after(() => h.stop());

  const cases: Array<[string, Buffer]> = [
    ['missing NUL', b('test.Echo dom0 name dom0')],
    ['empty request', b('')],
    ['bad destination type', b('test.Echo dom0 uuid dom0\0')],
    ['bad keyword', b('test.Echo dom0 keyword dom0\0')],
    ['three fields', b('test.Echo dom0 dom0\0')],
    ['non-ASCII header', Buffer.concat([b('test.Echo d'), Buffer.from([0xc3, 0xb6]), b('m0 name dom0\0')])],
    ['garbage', Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x00, 0x01])],
    ['NUL first', b('\0test.Echo dom0 name dom0')],
    ['oversize payload', Buffer.concat([b('test.Echo dom0 name dom0\0'), Buffer.alloc(MAX_REQUEST_BYTES, 0x61)])],
    ['oversize header', Buffer.alloc(MAX_REQUEST_BYTES + 10, 0x61)],
  ];
  for (const [name, bytes] of cases) {
    test(name, async () => {
      const { data } = await rawExchange(h.socketPath, bytes);
      assert.equal(data.length, 0, `no reply expected, got ${JSON.stringify(data.toString('latin1').slice(0, 40))}`);
      assert.deepEqual(await echo(h.socketPath), OK_HELLO, 'the next call still works');
    });
  }

  test('exactly 64 KiB is accepted', async () => {
    const head = b('test.Echo dom0 name dom0\0');
    const payload = Buffer.alloc(MAX_REQUEST_BYTES - head.length, 0x62);
    const { data } = await rawExchange(h.socketPath, Buffer.concat([head, payload]));
    assert.equal(data.length, 2 + payload.length);
    assert.deepEqual(data.subarray(0, 2), b('0\0'));
  });

  test('slow client: header timeout drops it', async () => {
    const { data, ms } = await rawExchange(h.socketPath, b('test.Echo dom0 na'), { end: false, timeoutMs: 3000 });
    assert.equal(data.length, 0);
    assert.ok(ms >= 250, `dropped after ${ms} ms, before the timeout`);
    assert.ok(h.log.lines.some((l) => l.includes('header timeout')));
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
  });

  test('streamed payload: a client that stops sending is dropped after the request timeout', async () => {
    const before = h.log.lines.length;
    const { data } = await rawExchange(h.socketPath, Buffer.concat([b('test.Count dom0 name dom0\0'), Buffer.alloc(100_000, 1)]), {
      end: false,
      timeoutMs: 5000,
    });
    assert.equal(data.length, 0);
    assert.ok(h.log.lines.slice(before).some((l) => l.includes('client stalled while sending its payload')));
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
  });

  test('streamed payload: a client that keeps sending for longer than the timeout is not dropped', async () => {
    // Silence is what counts, not the length of the call: 10 pieces 50 ms apart (the timeout is 300 ms).
    const sock = net.connect(h.socketPath);
    const reply: Buffer[] = [];
    sock.on('data', (c: Buffer) => reply.push(c));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    await new Promise<void>((r) => sock.on('connect', () => r()));
    sock.write(b('test.Count dom0 name dom0\0'));
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 50));
      sock.write(Buffer.alloc(1000, 1));
    }
    sock.end();
    await closed;
    assert.deepEqual(Buffer.concat(reply), b('0\x0010000'));
  });

  test('client that never half-closes: request timeout drops it', async () => {
    const { data } = await rawExchange(h.socketPath, b('test.Echo dom0 name dom0\0abc'), { end: false, timeoutMs: 3000 });
    assert.equal(data.length, 0);
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
  });
});

describe('clients that go away', () => {
  let h: Harness;
  before(async () => {
    h = await startServer();
  });
  after(() => h.stop());

  test('disconnect during a call: the reply goes nowhere, the server goes on', async () => {
    // After the client's half-close the kernel reports its full close only to
    // a write, so the method runs to its end and the reply write fails.
    h.probe.current = slowProbe();
    const sock = net.connect(h.socketPath);
    sock.on('error', () => {});
    sock.on('connect', () => sock.end(b('test.Slow dom0 name dom0\0')));
    await h.probe.current.started.promise;
    sock.destroy();
    await new Promise((r) => setTimeout(r, 20));
    h.probe.current.release.resolve('x'.repeat(300_000));
    await waitFor(() => h.server.connectionCount === 0);
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
    assert.ok(h.log.lines.some((l) => l.startsWith('info call method=test.Slow')));
  });

  test('disconnect in the middle of the payload', async () => {
    const sock = net.connect(h.socketPath);
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.on('connect', () => r()));
    sock.write(b('test.Echo dom0 name dom0\0partial'));
    await new Promise((r) => setTimeout(r, 50));
    sock.destroy();
    await waitFor(() => h.server.connectionCount === 0);
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
  });

  test('disconnect in the middle of a streamed payload', async () => {
    // A full close reads as EOF: the method sees a short payload (imports
    // check the byte count), and its reply goes nowhere.
    const before = h.log.lines.length;
    const sock = net.connect(h.socketPath);
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.on('connect', () => r()));
    sock.write(Buffer.concat([b('test.Count dom0 name dom0\0'), Buffer.alloc(100_000)]));
    await new Promise((r) => setTimeout(r, 50));
    sock.destroy();
    await waitFor(() => h.log.lines.slice(before).some((l) => l.startsWith('info call method=test.Count')));
    await waitFor(() => h.server.connectionCount === 0);
    assert.deepEqual(await echo(h.socketPath), OK_HELLO);
  });
});

describe('streaming payloads', () => {
  let h: Harness;
  before(async () => {
    h = await startServer();
  });
  after(() => h.stop());

  test('no 64 KiB limit for a streaming method', async () => {
    const size = 5 * 1024 * 1024 + 3;
    const { data } = await rawExchange(h.socketPath, Buffer.concat([b('test.Count dom0 name dom0\0'), Buffer.alloc(size, 7)]), { timeoutMs: 10_000 });
    assert.deepEqual(data, b(`0\0${size}`));
  });

  test('empty streamed payload', async () => {
    assert.deepEqual((await rawExchange(h.socketPath, b('test.Count dom0 name dom0\0'))).data, b('0\x000'));
  });
});

test('64 concurrent clients', async () => {
  const h = await startServer();
  try {
    const client = new AdminClient({ socketPath: h.socketPath });
    const results = await Promise.all(
      Array.from({ length: 64 }, (_, i) => client.call('test.Echo', 'dom0', '', `payload-${i}-${'x'.repeat(i * 100)}`)),
    );
    results.forEach((r, i) => assert.equal(r.toString(), `payload-${i}-${'x'.repeat(i * 100)}`));
    const raw = await Promise.all(Array.from({ length: 64 }, (_, i) => rawExchange(h.socketPath, b(`test.Arg+n${i} dom0 name dom0\0`))));
    raw.forEach((r, i) => assert.deepEqual(r.data, b(`0\0n${i}|dom0|dom0`)));
  } finally {
    await h.stop();
  }
});

test('access policy: allowed calls pass, others are PermissionDenied and logged', async () => {
  const policy = parsePolicy('dom0 test.Echo\nmgmt test.Arg+x*  work\n', 'test.policy');
  const h = await startServer({ policy });
  try {
    const dom0 = new AdminClient({ socketPath: h.socketPath });
    const mgmt = new AdminClient({ socketPath: h.socketPath, source: 'mgmt' });
    assert.equal((await dom0.call('test.Echo', 'dom0', '', 'hi')).toString(), 'hi');
    await assert.rejects(dom0.call('test.Arg', 'work', 'x1'), PermissionDenied);
    assert.equal((await mgmt.call('test.Arg', 'work', 'xyz')).toString(), 'xyz|mgmt|work');
    await assert.rejects(mgmt.call('test.Arg', 'work', 'y'), PermissionDenied);
    await assert.rejects(mgmt.call('test.Arg', 'other', 'x'), PermissionDenied);
    await assert.rejects(mgmt.call('test.Echo', 'dom0'), PermissionDenied);
    // A method that is not in the table looks the same as a denied one.
    await assert.rejects(mgmt.call('test.Nope', 'dom0'), PermissionDenied);
    assert.ok(h.log.lines.some((l) => l.startsWith('warn call method=test.Arg arg=y source=mgmt dest=work result=PermissionDenied')));
    // A denied streaming method with a big payload still gets its answer.
    const { data } = await rawExchange(h.socketPath, Buffer.concat([b('test.Count mgmt name dom0\0'), Buffer.alloc(200_000)]));
    assert.equal(data.subarray(0, 20).toString('latin1'), '2\0PermissionDenied\0\0');
    // A denied events call is answered at once.
    await assert.rejects(mgmt.events('dom0', () => {}).established, PermissionDenied);
    // No policy: the default, only dom0 may call.
    h.server.setPolicy(undefined);
    await assert.rejects(mgmt.call('test.Echo', 'dom0', '', 'no'), PermissionDenied);
    assert.equal((await dom0.call('test.Echo', 'dom0', '', 'ok')).toString(), 'ok');
  } finally {
    await h.stop();
  }
});

describe('socket file handling', () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  /** Leaves a socket file nobody listens on (as after a crash). */
  async function makeStaleSocket(p: string): Promise<void> {
    const tmp = path.join(dir, 'bind.sock');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(tmp, () => r()));
    await fs.rename(tmp, p);
    await new Promise<void>((r) => srv.close(() => r()));
    assert.ok((await fs.lstat(p)).isSocket());
  }

  function server(p: string): AdminServer {
    const probe = { current: slowProbe() };
    return new AdminServer({ socketPath: p, methods: toyMethods(undefined as never, probe), log: { info() {}, warn() {}, error() {} } });
  }

  test('a stale socket is removed and replaced', async () => {
    const p = path.join(dir, 'stale.sock');
    await makeStaleSocket(p);
    const s = server(p);
    await s.listen();
    try {
      assert.deepEqual(await echo(p), OK_HELLO);
    } finally {
      await s.close();
    }
    await assert.rejects(fs.lstat(p), { code: 'ENOENT' });
  });

  test('a live server is not displaced', async () => {
    const p = path.join(dir, 'live.sock');
    const first = server(p);
    await first.listen();
    try {
      await assert.rejects(server(p).listen(), /another server/);
      assert.deepEqual(await echo(p), OK_HELLO);
    } finally {
      await first.close();
    }
  });

  test('a regular file, a directory or a symlink is never touched', async () => {
    const file = path.join(dir, 'file.sock');
    await fs.writeFile(file, 'keep me');
    await assert.rejects(server(file).listen(), /not a socket/);
    assert.equal(await fs.readFile(file, 'utf8'), 'keep me');

    const sub = path.join(dir, 'dir.sock');
    await fs.mkdir(sub);
    await assert.rejects(server(sub).listen(), /not a socket/);
    assert.ok((await fs.lstat(sub)).isDirectory());

    const target = path.join(dir, 'target.sock');
    await makeStaleSocket(target);
    const link = path.join(dir, 'link.sock');
    await fs.symlink(target, link);
    await assert.rejects(server(link).listen(), /not a socket/);
    assert.ok((await fs.lstat(link)).isSymbolicLink());
    assert.ok((await fs.lstat(target)).isSocket());
  });

  test('close() does not remove a socket file that is no longer ours', async () => {
    const p = path.join(dir, 'replaced.sock');
    const s = server(p);
    await s.listen();
    await fs.unlink(p);
    await makeStaleSocket(p);
    await s.close();
    assert.ok((await fs.lstat(p)).isSocket());
  });
});

describe('close()', () => {
  test('finishes an in-flight call, refuses new ones, then removes the socket', async () => {
    const h = await startServer();
    try {
      h.probe.current = slowProbe();
      const client = new AdminClient({ socketPath: h.socketPath });
      const inFlight = client.call('test.Slow', 'dom0');
      await h.probe.current.started.promise;
      // A connection that has not sent its header yet is dropped at close.
      const idle = rawExchange(h.socketPath, b('test.Ec'), { end: false });
      await waitFor(() => h.server.connectionCount === 2);
      let closed = false;
      const closing = h.server.close().then(() => (closed = true));
      assert.equal((await idle).data.length, 0);
      await assert.rejects(client.call('test.Echo', 'dom0', '', 'x'), QubesException);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(closed, false, 'close() waits for the call in flight');
      assert.ok((await fs.lstat(h.socketPath)).isSocket());
      h.probe.current.release.resolve('finished');
      assert.equal((await inFlight).toString(), 'finished');
      await closing;
      await assert.rejects(fs.lstat(h.socketPath), { code: 'ENOENT' });
    } finally {
      await h.stop();
    }
  });

  test('with a timeout, a call that does not finish is aborted', async () => {
    const h = await startServer();
    try {
      h.probe.current = slowProbe();
      const client = new AdminClient({ socketPath: h.socketPath });
      const stuck = client.call('test.Slow', 'dom0').then(
        () => undefined,
        (e: unknown) => e,
      );
      await h.probe.current.started.promise;
      await h.server.close({ timeoutMs: 100 });
      await h.probe.current.aborted.promise;
      assert.ok((await stuck) instanceof QubesException, 'the client gets no reply');
      await assert.rejects(fs.lstat(h.socketPath), { code: 'ENOENT' });
    } finally {
      h.probe.current.release.resolve('');
      await h.stop();
    }
  });
});

test('client maps error classes', async () => {
  const h = await startServer();
  try {
    const client = new AdminClient({ socketPath: h.socketPath });
    await assert.rejects(client.call('test.Fail', 'dom0'), (e: Error) => e instanceof QubesValueError && e.message === 'bad value: x');
    await assert.rejects(client.call('test.Crash', 'dom0'), (e: Error) => e.constructor === QubesException);
  } finally {
    await h.stop();
  }
});

test('fail closed: a caller whose credentials cannot be read is refused, whatever it asks, and logged', async () => {
  const h = await startServer({
    peerCredentials: () => {
      throw new PeerCredentialsError('getsockopt(SO_PEERCRED) failed: errno 9');
    },
  });
  try {
    const { data } = await rawExchange(h.socketPath, b('test.Echo dom0 name dom0\0hi'));
    assert.equal(data.toString('latin1'), "2\0PermissionDenied\0\0cannot read the caller's credentials: getsockopt(SO_PEERCRED) failed: errno 9\0");
    await waitFor(() => h.log.lines.some((l) => l.includes('method=test.Echo')));
    assert.ok(h.log.lines.some((l) => /^warn call method=test\.Echo .*result=PermissionDenied .* uid=- pid=-$/.test(l)), h.log.lines.join('\n'));
  } finally {
    await h.stop();
  }
});
