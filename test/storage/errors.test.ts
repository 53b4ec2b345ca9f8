// The one mapping of OS errors to Qubes-named storage errors (storageError):
// what each storage errno becomes, from Node errors and from commands' exit
// statuses (rbd). The real errors on real filesystems: test/drivers/file-reflink/full-disk.test.ts
// (ENOSPC) and write-errors.test.ts (EROFS, EIO).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RbdError } from '../../src/drivers/rbd/librbd.js';
import {
  QubesValueError,
  StoragePoolException,
  storageErrnoError,
  storageError,
} from '../../src/storage/errors.js';

/** An error as Node's fs makes it. */
function sysError(code: string, errno: number, path?: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: something, open '${path ?? ''}'`), { code, errno: -errno, syscall: 'open', ...(path ? { path } : {}) });
}

const WHAT = 'volume appvms/work/private of pool p1: import failed';

test('each storage errno is said in words, naming the place, the action and the file', () => {
  const cases: [string, number, RegExp][] = [
    ['ENOSPC', 28, /^volume appvms\/work\/private of pool p1: import failed: not enough space left \(ENOSPC at \/p\/f\.img\)$/],
    ['EDQUOT', 122, /^volume appvms\/work\/private of pool p1: import failed: disk quota exceeded \(EDQUOT at \/p\/f\.img\)$/],
    ['EIO', 5, /^volume appvms\/work\/private of pool p1: import failed: I\/O error on \/p\/f\.img \(EIO\)$/],
    ['EROFS', 30, /^volume appvms\/work\/private of pool p1: import failed: the filesystem is read-only \(EROFS at \/p\/f\.img\)$/],
  ];
  for (const [code, errno, re] of cases) {
    const cause = sysError(code, errno, '/p/f.img');
    const e = storageError(WHAT, cause);
    assert.ok(e instanceof StoragePoolException, code);
    assert.equal(e.qubesName, 'StoragePoolException');
    assert.match(e.message, re);
    assert.equal(e.cause, cause);
    assert.ok(!e.message.includes('\n'), 'one line');
  }
});

test('an error without a path (a write through a file handle) names the file given', () => {
  const noPath = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  assert.match(storageError(WHAT, noPath, '/p/x-import.img').message, /not enough space left \(ENOSPC at \/p\/x-import\.img\)$/);
  assert.match(storageError(WHAT, Object.assign(new Error('EIO'), { code: 'EIO' })).message, /I\/O error on the storage \(EIO\)$/);
  // A copy names its source and destination: the destination is where the room was needed.
  const copy = Object.assign(new Error('ENOSPC: copyfile'), { code: 'ENOSPC', syscall: 'copyfile', path: '/src.img', dest: '/dst-tmp-1.img' });
  assert.match(storageError(WHAT, copy).message, /\(ENOSPC at \/dst-tmp-1\.img\)$/);
});

test("librbd's errno (rbd) is mapped by number, its message kept", () => {
  const full = new RbdError('pool r1: writing 4194304 bytes at 0 of image x', 28);
  const e = storageError(WHAT, full);
  assert.ok(e instanceof StoragePoolException);
  assert.notEqual(e, full);
  assert.match(e.message, /import failed: not enough space left \(ENOSPC\): pool r1: writing 4194304 bytes at 0 of image x/);
  assert.match(storageError(WHAT, new RbdError('x', 122)).message, /disk quota exceeded \(EDQUOT\)/);
  // Another errno is not a storage errno: the Qubes error passes as it is.
  const gone = new RbdError('pool r1: opening image x', 2);
  assert.equal(storageError(WHAT, gone), gone);
  assert.equal(storageErrnoError(WHAT, gone), null);
});

test('other errors: Qubes errors pass unchanged, other OS errors keep their code', () => {
  const v = new QubesValueError('bad size');
  assert.equal(storageError(WHAT, v), v);
  assert.equal(storageErrnoError(WHAT, v), null);
  assert.equal(storageErrnoError(WHAT, sysError('ENOENT', 2, '/x')), null);
  assert.equal(storageErrnoError(WHAT, new Error('plain')), null);
  assert.equal(storageErrnoError(WHAT, null), null);
  const e = storageError(WHAT, sysError('EACCES', 13, '/x'));
  assert.ok(e instanceof StoragePoolException);
  assert.match(e.message, /^volume appvms\/work\/private of pool p1: import failed: EACCES: /);
  // A mapped error mapped again stays as it is (nested wrappers do not stack).
  const once = storageError(WHAT, sysError('ENOSPC', 28, '/p'));
  assert.equal(storageError('outer', once), once);
  // 'constructor' and friends are not codes.
  assert.equal(storageErrnoError(WHAT, { code: 'constructor' }), null);
});
