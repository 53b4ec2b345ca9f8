import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProtocolError } from '../../src/storage/errors.js';
import {
  EventStreamDecoder,
  FramingError,
  decodeReply,
  encodeError,
  encodeEvent,
  encodeHeader,
  encodeOk,
  encodeRequest,
  parseHeader,
  parseRequest,
  type RequestHeader,
} from '../../src/admin/protocol/index.js';

const b = (s: string) => Buffer.from(s, 'latin1');

test('parseHeader: accepted headers', () => {
  const cases: Array<[string, RequestHeader]> = [
    ['admin.vm.volume.Info+private dom0 name work', { method: 'admin.vm.volume.Info', arg: 'private', source: 'dom0', dest: 'work' }],
    ['admin.pool.List dom0 name dom0', { method: 'admin.pool.List', arg: '', source: 'dom0', dest: 'dom0' }],
    ['admin.pool.List dom0 keyword adminvm', { method: 'admin.pool.List', arg: '', source: 'dom0', dest: 'dom0' }],
    ['admin.vm.Create.AppVM+ dom0 name dom0', { method: 'admin.vm.Create.AppVM', arg: '', source: 'dom0', dest: 'dom0' }],
    ['m+a+b mgmt name uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', { method: 'm', arg: 'a+b', source: 'mgmt', dest: 'uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0' }],
  ];
  for (const [text, want] of cases) assert.deepEqual(parseHeader(b(text)), want, text);
});

test('parseHeader: framing errors', () => {
  const bad = [
    '',
    'admin.pool.List',
    'admin.pool.List dom0 name',
    'admin.pool.List dom0 name dom0 extra',
    'admin.pool.List  dom0 name dom0',
    'admin.pool.List dom0 uuid dom0',
    'admin.pool.List dom0 keyword dom0',
    'admin.pool.List dom0 keyword default',
    'admin.pool.List dom0 name ',
    'admin.pool.List  name dom0',
    '+arg dom0 name dom0',
    'admin/pool dom0 name dom0',
    'admin.pool.List dom0 name wo/rk',
    'admin.pool.List\tdom0 name dom0',
    'admin.pool.List dom0 name dom0\n',
    'admin.pool.List d\u00f6m0 name dom0',
    'admin.pool.List dom0 name dom0\x7f',
  ];
  for (const text of bad) assert.throws(() => parseHeader(b(text)), FramingError, JSON.stringify(text));
});

test('parseRequest: splits at the first NUL; no NUL is a framing error', () => {
  const { header, payload } = parseRequest(b('test.Echo dom0 name dom0\0a\0b'));
  assert.equal(header.method, 'test.Echo');
  assert.deepEqual(payload, b('a\0b'));
  assert.throws(() => parseRequest(b('test.Echo dom0 name dom0')), FramingError);
});

test('encodeRequest: the stock clients\' spelling', () => {
  assert.deepEqual(
    encodeRequest({ method: 'admin.vm.volume.Resize', arg: 'private', source: 'dom0', dest: 'work' }, '2147483648'),
    b('admin.vm.volume.Resize+private dom0 name work\x002147483648'),
  );
  assert.deepEqual(encodeHeader({ method: 'admin.pool.List', arg: '', source: 'dom0', dest: 'dom0' }), b('admin.pool.List dom0 name dom0\0'));
  assert.throws(() => encodeHeader({ method: 'a b', arg: '', source: 'dom0', dest: 'dom0' }), FramingError);
});

test('reply encoding: exact bytes', () => {
  assert.deepEqual(encodeOk(), Buffer.from([0x30, 0]));
  assert.deepEqual(encodeOk('p1\np2\n'), b('0\0p1\np2\n'));
  assert.deepEqual(encodeOk(Buffer.from([1, 0, 2])), Buffer.from([0x30, 0, 1, 0, 2]));
  assert.deepEqual(encodeOk('w\u00f6rk'), Buffer.concat([b('0\0'), Buffer.from('w\u00f6rk', 'utf8')]));
  assert.deepEqual(encodeError('QubesVMNotFoundError', 'No such domain: x'), b('2\0QubesVMNotFoundError\0\0No such domain: x\0'));
  assert.deepEqual(encodeError('QubesException', 'm', 'tb'), b('2\0QubesException\0tb\0m\0'));
  // NUL cannot travel inside a field; a non-identifier class name is not sent.
  assert.deepEqual(encodeError('X\0Y', 'a\0b'), Buffer.concat([b('2\0QubesException\0\0a'), Buffer.from('\ufffd', 'utf8'), b('b\0')]));
});

test('event encoding: exact bytes', () => {
  assert.deepEqual(encodeEvent('', 'connection-established'), b('1\0\0connection-established\0\0'));
  assert.deepEqual(
    encodeEvent('work', 'property-set:label', { name: 'label', newvalue: 'red', oldvalue: '' }),
    b('1\0work\0property-set:label\0name\0label\0newvalue\0red\0oldvalue\0\0\0'),
  );
  assert.deepEqual(encodeEvent('dom0', 'domain-add', [['vm', 'w2']]), b('1\0dom0\0domain-add\0vm\0w2\0\0'));
  assert.throws(() => encodeEvent('a\0', 'e'), TypeError);
  assert.throws(() => encodeEvent('a', ''), TypeError);
  assert.throws(() => encodeEvent('a', 'e', { '': 'v' }), TypeError);
  assert.throws(() => encodeEvent('a', 'e', { k: 'v\0' }), TypeError);
});

test('decodeReply: ok, error, malformed', () => {
  assert.deepEqual(decodeReply(b('0\0abc')), { kind: 'ok', result: b('abc') });
  assert.deepEqual(decodeReply(b('2\0PermissionDenied\0\0no\0')), {
    kind: 'error',
    name: 'PermissionDenied',
    traceback: '',
    message: 'no',
  });
  for (const bad of ['', '0', '0x', '2\0A\0\0', '2\0A\0\0m\0extra', '3\0', '1\0\0e\0\0']) {
    assert.throws(() => decodeReply(b(bad)), ProtocolError, JSON.stringify(bad));
  }
});

test('EventStreamDecoder: frames split at every byte boundary', () => {
  const stream = Buffer.concat([
    encodeEvent('', 'connection-established'),
    encodeEvent('work', 'domain-start', { start_guid: 'True' }),
    encodeEvent('dom0', 'domain-add', { vm: 'w\u00f6rk' }),
  ]);
  const want = [
    { subject: '', event: 'connection-established', pairs: [] },
    { subject: 'work', event: 'domain-start', pairs: [['start_guid', 'True']] },
    { subject: 'dom0', event: 'domain-add', pairs: [['vm', 'w\u00f6rk']] },
  ];
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new EventStreamDecoder();
    const items = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    assert.deepEqual(
      items.map((i) => (i.kind === 'event' ? i.event : i)),
      want,
      `cut at ${cut}`,
    );
    assert.equal(d.end(), undefined);
  }
  // One byte at a time.
  const d = new EventStreamDecoder();
  const items = [...stream].flatMap((byte) => d.push(Buffer.from([byte])));
  assert.equal(items.length, 3);
});

test('EventStreamDecoder: error reply, garbage, oversize, truncation', () => {
  const d = new EventStreamDecoder();
  assert.deepEqual(d.push(b('2\0PermissionDenied\0\0nope\0')), [
    { kind: 'error', name: 'PermissionDenied', traceback: '', message: 'nope' },
  ]);
  assert.throws(() => new EventStreamDecoder().push(b('9\0')), ProtocolError);
  assert.throws(() => new EventStreamDecoder().push(b('1x')), ProtocolError);
  assert.throws(() => new EventStreamDecoder(16).push(b(`1\0${'a'.repeat(32)}`)), ProtocolError);
  const t = new EventStreamDecoder();
  t.push(b('1\0work\0dom'));
  assert.throws(() => t.end(), ProtocolError);
});
