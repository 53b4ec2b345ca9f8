import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_POLICY, PolicyError, findAllowingRule, isAllowed, matchPattern, mayRelay, parsePolicy } from '../../src/admin/policy.js';

test('matchPattern: table', () => {
  const cases: Array<[string, string, boolean]> = [
    ['*', '', true],
    ['*', 'anything', true],
    ['admin.pool.List', 'admin.pool.List', true],
    ['admin.pool.List', 'admin.pool.ListDrivers', false],
    ['admin.pool.*', 'admin.pool.Info', true],
    ['admin.pool.*', 'admin.vm.List', false],
    ['*.List', 'admin.pool.List', true],
    ['*.List', 'admin.pool.ListDrivers', false],
    ['a*b*c', 'abc', true],
    ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'acb', false],
    ['ab*ba', 'aba', false],
    ['a.b', 'aXb', false],
  ];
  for (const [p, v, want] of cases) assert.equal(matchPattern(p, v), want, `${p} ~ ${v}`);
});

test('parsePolicy: comments, blank lines, optional DEST', () => {
  const p = parsePolicy('# header\n\ndom0 *\n  mgmt\tadmin.pool.*   # pools only\nmgmt admin.vm.volume.Info+private work\n', 'test.policy');
  assert.deepEqual(
    p.rules.map((r) => [r.source, r.method, r.dest, r.line]),
    [
      ['dom0', '*', '*', 3],
      ['mgmt', 'admin.pool.*', '*', 4],
      ['mgmt', 'admin.vm.volume.Info+private', 'work', 5],
    ],
  );
  const q = (source: string, method: string, arg: string, dest: string) => isAllowed(p, { source, method, arg, dest });
  assert.equal(q('dom0', 'admin.vm.Remove', '', 'work'), true);
  assert.equal(q('mgmt', 'admin.pool.Info', 'p', 'dom0'), true);
  assert.equal(q('mgmt', 'admin.vm.volume.Info', 'private', 'work'), true);
  assert.equal(q('mgmt', 'admin.vm.volume.Info', 'root', 'work'), false);
  assert.equal(q('mgmt', 'admin.vm.volume.Info', 'private', 'other'), false);
  assert.equal(q('mgmt', 'admin.vm.List', '', 'dom0'), false);
  assert.equal(q('other', 'admin.pool.List', '', 'dom0'), false);
  assert.equal(findAllowingRule(p, { source: 'mgmt', method: 'admin.pool.List', arg: '', dest: 'dom0' })?.line, 4);
});

test('parsePolicy: an empty policy denies everything', () => {
  assert.equal(isAllowed(parsePolicy(''), { source: 'dom0', method: 'admin.pool.List', arg: '', dest: 'dom0' }), false);
});

test('parsePolicy: errors name the line', () => {
  assert.throws(() => parsePolicy('dom0 *\nonlyone\n', 'f'), (e: Error) => e instanceof PolicyError && /f:2/.test(e.message));
  assert.throws(() => parsePolicy('a b c d'), PolicyError);
  assert.throws(() => parsePolicy('dom0 admin/x'), PolicyError);
  assert.throws(() => parsePolicy('dom0 admin.?'), PolicyError);
});

test('DEFAULT_POLICY: dom0 may call anything, every other source nothing', () => {
  const q = (source: string, method: string) => isAllowed(DEFAULT_POLICY, { source, method, arg: '', dest: 'work' });
  assert.equal(q('dom0', 'admin.vm.Create.AppVM'), true);
  assert.equal(q('dom0', 'admin.vm.volume.Import'), true);
  assert.equal(q('sys-net', 'admin.vm.Create.AppVM'), false);
  assert.equal(q('evilvm', 'admin.pool.List'), false);
  assert.equal(q('dom0x', 'admin.pool.List'), false);
  assert.deepEqual(DEFAULT_POLICY.relays, []);
});

test('parsePolicy: @relay lines name a uid and the sources it may claim; they are not rules', () => {
  const p = parsePolicy('dom0 *\n@relay uid:1000 mgmt*\n@relay\tuid:0 backup # root relays anyway\n', 'r.policy');
  assert.equal(p.rules.length, 1);
  assert.deepEqual(
    p.relays.map((r) => [r.uid, r.source, r.line]),
    [
      [1000, 'mgmt*', 2],
      [0, 'backup', 3],
    ],
  );
  assert.equal(mayRelay(p, 1000, 'mgmt'), true);
  assert.equal(mayRelay(p, 1000, 'mgmt-2'), true);
  assert.equal(mayRelay(p, 1000, 'backup'), false);
  assert.equal(mayRelay(p, 1001, 'mgmt'), false);
  // A relay line allows no call by itself.
  assert.equal(isAllowed(p, { source: 'mgmt', method: 'admin.pool.List', arg: '', dest: 'dom0' }), false);
  for (const bad of ['@relay mgmt', '@relay 1000 mgmt', '@relay uid:x mgmt', '@relay uid:01 mgmt', '@relay uid:4294967296 mgmt', '@relays uid:1 a', '@anyvm admin.pool.List'])
    assert.throws(() => parsePolicy(bad, 'f'), (e: Error) => e instanceof PolicyError && /f:1/.test(e.message), bad);
});
