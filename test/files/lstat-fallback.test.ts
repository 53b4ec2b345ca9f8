/**
 * lstatInBatch when its thread is gone: the batch it was reading and every
 * later one are answered by fs.lstat, with the same answers. A file of its
 * own: the fallback lasts for the rest of the process.
 */
import { after, before, it } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { lstatBatchCounts, lstatInBatch, stopLstatThreadForTests } from '../../src/files/lstat-batch.js';

let dir = '';
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-lstat-fallback-'));
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

it('after the thread stops, reads in flight and later ones still get the right answers, read after they were asked', { timeout: 60_000 }, async () => {
  const file = path.join(dir, 'f');
  await fs.writeFile(file, 'hello');
  // The thread answers first (it is started by this read).
  assert.equal((await lstatInBatch(file))!.size, 5);

  // A batch sent, then the thread ended while (or after) it reads it.
  const inFlight = [lstatInBatch(file), lstatInBatch(path.join(dir, 'missing'))];
  await new Promise((resolve) => setImmediate(resolve));
  await stopLstatThreadForTests();
  const [st, missing] = await Promise.all(inFlight);
  assert.equal(st!.size, 5);
  assert.equal(missing, null);

  // Later reads: fs.lstat, fresh each time, errors with their code.
  const batches = lstatBatchCounts().batches;
  await fs.writeFile(file, 'hello, world');
  const again = await lstatInBatch(file);
  assert.equal(again!.size, 12, 'a read after the change');
  assert.ok(again!.ino > 0 && (again!.mode & 0o170000) === 0o100000, 'a regular file, with its inode');
  await assert.rejects(lstatInBatch(path.join(file, 'under')), (e: NodeJS.ErrnoException) => e.code === 'ENOTDIR');
  assert.ok(lstatBatchCounts().batches > batches, 'still counted as batches');
});
