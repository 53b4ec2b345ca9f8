import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ProtocolError,
  QubesValueError,
  QubesVMInvalidUUIDError,
} from '../../src/storage/errors.js';
import {
  decodeAscii,
  decodeUtf8,
  parseBoolean,
  parseDestination,
  parseInteger,
  parseKeyValues,
  validateDomainName,
  validatePoolName,
  validateRevisionId,
  type IntegerRule,
} from '../../src/admin/protocol/validate.js';

type Expect<T> = { ok: T } | { err: new (...a: never[]) => Error };

const integerCases: Array<[string | Uint8Array, IntegerRule, Expect<number>]> = [
  ['0', {}, { ok: 0 }],
  ['7', {}, { ok: 7 }],
  ['2147483648', {}, { ok: 2147483648 }],
  ['9007199254740991', {}, { ok: Number.MAX_SAFE_INTEGER }],
  ['9007199254740992', {}, { err: ProtocolError }],
  ['1234567890123456789', {}, { err: ProtocolError }], // 19 digits but not safe
  ['12345678901234567890', {}, { err: ProtocolError }], // 20 digits
  ['00', {}, { err: ProtocolError }],
  ['01', {}, { err: ProtocolError }],
  ['007', {}, { err: ProtocolError }],
  ['', {}, { err: ProtocolError }],
  ['-', { allowNegative: true }, { err: ProtocolError }],
  ['-1', {}, { err: ProtocolError }],
  ['-1', { allowNegative: true }, { ok: -1 }],
  ['-0', { allowNegative: true }, { err: ProtocolError }],
  ['-01', { allowNegative: true }, { err: ProtocolError }],
  ['--1', { allowNegative: true }, { err: ProtocolError }],
  ['+1', {}, { err: ProtocolError }],
  [' 1', {}, { err: ProtocolError }],
  ['1 ', {}, { err: ProtocolError }],
  ['1\n', {}, { err: ProtocolError }],
  ['1\0', {}, { err: ProtocolError }],
  ['1e3', {}, { err: ProtocolError }],
  ['0x10', {}, { err: ProtocolError }],
  ['1.0', {}, { err: ProtocolError }],
  ['\u0661\u0662', {}, { err: ProtocolError }], // Arabic-Indic digits
  ['\uff11', {}, { err: ProtocolError }], // fullwidth 1
  [Buffer.from('42'), {}, { ok: 42 }],
  [Buffer.from([0x34, 0x32, 0xff]), {}, { err: ProtocolError }],
  ['-2', { allowNegative: true, min: -1 }, { err: QubesValueError }],
  ['-1', { allowNegative: true, min: -1 }, { ok: -1 }],
  ['11', { max: 10 }, { err: QubesValueError }],
];

test('parseInteger: table', () => {
  for (const [input, rule, expect] of integerCases) {
    const label = `${JSON.stringify(typeof input === 'string' ? input : [...input])} ${JSON.stringify(rule)}`;
    if ('ok' in expect) assert.equal(parseInteger(input, rule), expect.ok, label);
    else assert.throws(() => parseInteger(input, rule), expect.err, label);
  }
});

test('parseInteger: the message names the value', () => {
  assert.throws(() => parseInteger('01', { what: 'size' }), /size/);
});

test('parseBoolean: only True and False', () => {
  assert.equal(parseBoolean('True'), true);
  assert.equal(parseBoolean(Buffer.from('False')), false);
  for (const bad of ['true', 'false', '1', '0', '', 'True\n', 'TRUE', 'yes']) {
    assert.throws(() => parseBoolean(bad), ProtocolError, bad);
  }
});

test('pool names and revision ids: table', () => {
  const pools: Array<[string, boolean]> = [
    ['default', true],
    ['varlibqubes', true],
    ['lvm_pool-1.x', true],
    ['', false],
    ['a b', false],
    ['a/b', false],
    ['a:b', false],
    ['p\0', false],
    ['pool\u00e9', false],
  ];
  for (const [name, ok] of pools) {
    if (ok) assert.equal(validatePoolName(name), name);
    else assert.throws(() => validatePoolName(name), ProtocolError, JSON.stringify(name));
  }
  const revs: Array<[string, boolean]> = [
    ['1700000000-back', true],
    ['2023-01-01T00:00:00', true],
    ['a_b.c', true],
    ['', false],
    ['a/b', false],
    ['../x', false],
    ['a b', false],
  ];
  for (const [rev, ok] of revs) {
    if (ok) assert.equal(validateRevisionId(rev), rev);
    else assert.throws(() => validateRevisionId(rev), ProtocolError, JSON.stringify(rev));
  }
});

test('domain names: table', () => {
  const cases: Array<[string, boolean]> = [
    ['work', true],
    ['sys-net', true],
    ['a', true],
    ['A1_b.c-d', true],
    ['a'.repeat(31), true],
    ['a'.repeat(32), false],
    ['', false],
    ['1work', false],
    ['-work', false],
    ['_work', false],
    ['wo rk', false],
    ['wo/rk', false],
    ['w\u00f6rk', false],
    ['Domain-0', false],
    ['none', false],
    ['default', false],
    ['work-dm', false],
    ['work-dmx', true],
    ['work\0', false],
  ];
  for (const [name, ok] of cases) {
    if (ok) assert.equal(validateDomainName(name), name);
    else assert.throws(() => validateDomainName(name), QubesValueError, JSON.stringify(name));
  }
});

test('destinations: names and uuid:UUID', () => {
  assert.deepEqual(parseDestination('work'), { kind: 'name', name: 'work' });
  assert.deepEqual(parseDestination('uuid:0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0'), {
    kind: 'uuid',
    uuid: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0',
  });
  for (const bad of ['uuid:', 'uuid:1234', 'uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg', 'uuid:0f1e2d3c4b5a69788796a5b4c3d2e1f0']) {
    assert.throws(() => parseDestination(bad), QubesVMInvalidUUIDError, bad);
  }
});

test('decodeAscii / decodeUtf8', () => {
  assert.equal(decodeAscii(Buffer.from('abc')), 'abc');
  assert.throws(() => decodeAscii(Buffer.from([0x61, 0x80])), ProtocolError);
  assert.throws(() => decodeAscii(Buffer.from([0x61, 0x00])), ProtocolError);
  assert.equal(decodeUtf8(Buffer.from('w\u00f6rk')), 'w\u00f6rk');
  assert.throws(() => decodeUtf8(Buffer.from([0xc3])), ProtocolError);
  assert.throws(() => decodeUtf8(Buffer.from([0x61, 0x00])), ProtocolError);
});

test('parseKeyValues: line and space payloads', () => {
  const pool = parseKeyValues(Buffer.from('name=p\ndir_path=/x=y\n'), { keys: ['name', 'dir_path'], separator: 'line' });
  assert.deepEqual({ ...pool }, { name: 'p', dir_path: '/x=y' });
  assert.equal(Object.getPrototypeOf(pool), null);
  const create = parseKeyValues('name=w2 label=red pool=default', {
    keys: (k) => ['name', 'label', 'pool'].includes(k) || k.startsWith('pool:'),
    separator: 'space',
  });
  assert.deepEqual({ ...create }, { name: 'w2', label: 'red', pool: 'default' });
  assert.deepEqual({ ...parseKeyValues('', { keys: [], separator: 'line' }) }, {});
  assert.deepEqual({ ...parseKeyValues('a=', { keys: ['a'], separator: 'line' }) }, { a: '' });
});

test('parseKeyValues: refusals are ProtocolError', () => {
  const rule = { keys: ['name', 'label'], separator: 'space' as const };
  const bad: Array<string | Buffer> = [
    'name=a color=red', // unknown key
    'name=a name=b', // repeated
    'name', // no '='
    '=a', // empty key
    'name=\u00e9', // not ASCII
    Buffer.from([0x6e, 0x3d, 0xff]),
    Buffer.from('name=a\0'),
    '__proto__=x',
    'constructor=x',
  ];
  for (const p of bad) assert.throws(() => parseKeyValues(p, rule), ProtocolError, JSON.stringify(String(p)));
});
