/**
 * lstatInBatch (src/files/lstat-batch.ts), through which Info reads its
 * image: the same fields as lstat (a symlink not followed), null for a
 * missing file only, other errors thrown; every answer read after its caller
 * asked (a batch already sent is never joined); callers of one turn asking
 * for one path share one read. lstatEachInBatch: the same answers, in the
 * order asked, in one batch.
 */
import { it } from 'node:test';
import * as assert from 'node:assert/strict';
import { lstatSync, writeFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { lstatBatchCounts, lstatEachInBatch, lstatInBatch } from '../../src/files/lstat-batch.js';
import { describeEachFs } from '../helpers/filesystems.js';

/** The turn's batch is sent in the check phase; an immediate queued after it runs once it is sent, before its answer can arrive. */
const afterSend = () => new Promise<void>((r) => setImmediate(r));

describeEachFs('lstatInBatch', (_tfs, ctx) => {
  it('gives lstat fields of a file, a symlink (not followed) and a directory', async () => {
    const dir = await ctx.tempDir('batch');
    await fs.writeFile(path.join(dir, 'img'), Buffer.alloc(3 * 4096, 7));
    await fs.symlink('img', path.join(dir, 'link'));
    for (const name of ['img', 'link', '.']) {
      const p = path.join(dir, name);
      const st = await lstatInBatch(p);
      const want = lstatSync(p);
      assert.deepEqual(st, { dev: want.dev, ino: want.ino, mode: want.mode, size: want.size, blocks: want.blocks }, name);
    }
    assert.equal(((await lstatInBatch(path.join(dir, 'link')))!.mode & 0o170000), 0o120000, 'the link itself');
  });

  it('is null for a missing file and throws any other error (ENOTDIR) with its code and path', async () => {
    const dir = await ctx.tempDir('batch-missing');
    await fs.writeFile(path.join(dir, 'file'), 'x');
    assert.equal(await lstatInBatch(path.join(dir, 'nope')), null);
    const bad = path.join(dir, 'file', 'under');
    await assert.rejects(lstatInBatch(bad), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ENOTDIR');
      assert.equal(e.path, bad);
      return true;
    });
  });

  it('reads after the caller asked: a file made in the same turn is seen', async () => {
    const dir = await ctx.tempDir('batch-fresh');
    const p = path.join(dir, 'img');
    const answer = lstatInBatch(p);
    writeFileSync(p, 'data');
    assert.equal((await answer)?.size, 4);
  });

  it('never joins a batch already sent: a caller asking while it is read gets a read of its own', async () => {
    const dir = await ctx.tempDir('batch-inflight');
    const p = path.join(dir, 'img');
    const before = lstatBatchCounts();
    const first = lstatInBatch(p);
    await afterSend();
    writeFileSync(p, 'made while the first batch was out');
    const second = await lstatInBatch(p);
    await first;
    const after = lstatBatchCounts();
    assert.equal(after.reads - before.reads, 2, 'two reads of the path');
    assert.equal(after.batches - before.batches, 2);
    assert.equal(second?.size, 34, 'the second read sees the file made after the first was sent');
  });

  it('shares one read among the callers of one turn asking for one path', async () => {
    const dir = await ctx.tempDir('batch-share');
    const p = path.join(dir, 'img');
    await fs.writeFile(p, 'x');
    const before = lstatBatchCounts();
    const answers = await Promise.all(Array.from({ length: 10 }, () => lstatInBatch(p)));
    const other = await Promise.all([lstatInBatch(p), lstatInBatch(path.join(dir, 'nope'))]);
    const after = lstatBatchCounts();
    assert.equal(after.reads - before.reads, 3, 'one read for the ten, then one per path');
    assert.equal(after.batches - before.batches, 2);
    for (const a of answers) assert.equal(a?.ino, lstatSync(p).ino);
    assert.equal(other[1], null);
  });

  it("lstatEachInBatch: each path's answer in the order asked, in one batch, a path asked twice read once", async () => {
    const dir = await ctx.tempDir('batch-each');
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    await fs.writeFile(a, 'one');
    await fs.writeFile(b, 'three');
    const before = lstatBatchCounts();
    const got = await lstatEachInBatch([b, path.join(dir, 'nope'), a, b]);
    const after = lstatBatchCounts();
    assert.deepEqual(
      got.map((st) => st?.size ?? null),
      [5, null, 3, 5],
    );
    assert.equal(got[2]?.ino, lstatSync(a).ino);
    assert.equal(after.batches - before.batches, 1, 'one batch');
    assert.equal(after.reads - before.reads, 3, 'b read once for its two places');
    assert.deepEqual(await lstatEachInBatch([]), []);
  });

  it('lstatEachInBatch: any error but a missing file rejects the whole, with its code', async () => {
    const dir = await ctx.tempDir('batch-each-error');
    await fs.writeFile(path.join(dir, 'file'), 'x');
    await assert.rejects(lstatEachInBatch([path.join(dir, 'file'), path.join(dir, 'file', 'under')]), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ENOTDIR');
      return true;
    });
  });
});
