import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { PermissionDenied, ProtocolError, QubesValueError } from '../../src/storage/errors.js';
import {
  EventBus,
  FramingError,
  MAX_REQUEST_BYTES,
  bufferedLog,
  createDispatchContext,
  parsePolicy,
  runCall,
  unwrapReply,
} from '../../src/admin/index.js';
import { collectingLog, echo, slowProbe, startServer, toyMethods } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');

function ctx(policy?: string) {
  const log = collectingLog();
  return {
    log,
    ctx: createDispatchContext({
      methods: toyMethods(new EventBus(), { current: slowProbe() }),
      log,
      policy: policy === undefined ? undefined : parsePolicy(policy),
    }),
  };
}

test('runCall: the same reply bytes as over the socket', async () => {
  const { ctx: c } = ctx();
  const h = await startServer();
  try {
    assert.deepEqual(await runCall(c, { method: 'test.Echo', dest: 'dom0' }, 'hello'), await echo(h.socketPath));
  } finally {
    await h.stop();
  }
  assert.deepEqual(await runCall(c, { method: 'test.Arg', arg: 'a', dest: 'work' }), b('0\0a|dom0|work'));
  assert.deepEqual(await runCall(c, { method: 'test.Fail', dest: 'dom0' }), b('2\0QubesValueError\0\0bad value: x\0'));
  assert.deepEqual(await runCall(c, { method: 'test.Nope', dest: 'dom0' }), b('2\0PermissionDenied\0\0no such method: test.Nope\0'));
});

test('runCall: framing errors throw, as the socket would drop', async () => {
  const { ctx: c } = ctx();
  await assert.rejects(runCall(c, { method: 'test Echo', dest: 'dom0' }), FramingError);
  await assert.rejects(runCall(c, { method: 'test.Echo', dest: 'a/b' }), FramingError);
  await assert.rejects(runCall(c, { method: 'test.Echo', dest: 'dom0' }, Buffer.alloc(MAX_REQUEST_BYTES)), FramingError);
  await assert.rejects(
    runCall(c, { method: 'test.Echo', dest: 'dom0' }, Readable.from([Buffer.alloc(MAX_REQUEST_BYTES)])),
    FramingError,
  );
});

test('runCall: streaming methods take a stream of any size', async () => {
  const { ctx: c } = ctx();
  const chunks = Array.from({ length: 40 }, () => Buffer.alloc(65536, 1));
  assert.deepEqual(await runCall(c, { method: 'test.Count', dest: 'dom0' }, Readable.from(chunks)), b(`0\0${40 * 65536}`));
  assert.deepEqual(await runCall(c, { method: 'test.Count', dest: 'dom0' }, Buffer.alloc(100_000)), b('0\x00100000'));
});

test('runCall: policy and source apply in-process too', async () => {
  const { ctx: c, log } = ctx('mgmt test.Arg\n');
  assert.deepEqual(await runCall(c, { method: 'test.Arg', source: 'mgmt', dest: 'dom0' }), b('0\0|mgmt|dom0'));
  const denied = await runCall(c, { method: 'test.Arg', dest: 'dom0' });
  assert.throws(() => unwrapReply(denied), PermissionDenied);
  assert.ok(log.lines.some((l) => /source=dom0 .*result=PermissionDenied/.test(l)));
});

test('runCall: an events method needs a connection', async () => {
  const { ctx: c } = ctx();
  assert.throws(() => unwrapReply(Buffer.from([])), /without a reply/);
  const reply = await runCall(c, { method: 'admin.Events', dest: 'dom0' });
  assert.throws(() => unwrapReply(reply), ProtocolError);
});

test('debug: traceback sent and the internal message logged with its stack', async () => {
  const log = collectingLog();
  const c = createDispatchContext({ methods: toyMethods(new EventBus(), { current: slowProbe() }), log, debug: true });
  const reply = await runCall(c, { method: 'test.Fail', dest: 'dom0' });
  const [, name, trace, message] = reply.toString('utf8').split('\0');
  assert.equal(name, 'QubesValueError');
  assert.match(trace!, /QubesValueError: bad value: x\n\s+at /);
  assert.equal(message, 'bad value: x');
  try {
    unwrapReply(reply);
    assert.fail('should throw');
  } catch (e) {
    assert.ok(e instanceof QubesValueError);
    assert.match((e as { remoteTraceback?: string }).remoteTraceback ?? '', /at /);
  }
});

test('bufferedLog: the lines of one turn in one write, at once past the limit or on an error', async () => {
  const writes: string[] = [];
  const log = bufferedLog((t) => writes.push(t), 100);
  log.info('a');
  log.warn('b');
  assert.deepEqual(writes, [], 'nothing written during the turn');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(writes, ['qubesd: a\nqubesd: warning: b\n']);
  log.info('x'.repeat(120));
  assert.equal(writes.length, 2, 'past maxPendingBytes: written at once');
  log.info('c');
  log.error('d');
  assert.deepEqual(writes.slice(2), ['qubesd: c\nqubesd: error: d\n'], 'an error goes out at once, with what waited');
  log.info('e');
  log.flush();
  assert.deepEqual(writes.slice(3), ['qubesd: e\n']);
  await new Promise((r) => setImmediate(r));
  assert.equal(writes.length, 4, 'nothing written twice');
});
