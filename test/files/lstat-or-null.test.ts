/**
 * lstatOrNull (src/files/files.ts), which Info calls twice per call: a file's
 * own stats (a symlink not followed), null for a missing file only, every
 * other error thrown.
 */
import { it } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { lstatOrNull } from '../../src/files/files.js';
import { describeEachFs } from '../helpers/filesystems.js';

describeEachFs('lstatOrNull', (_tfs, ctx) => {
  it('gives the stats of a file: its size and allocated blocks', async () => {
    const dir = await ctx.tempDir('lstat');
    const file = path.join(dir, 'img');
    await fs.writeFile(file, Buffer.alloc(3 * 4096, 7));
    const st = await lstatOrNull(file);
    assert.ok(st, 'an existing file has stats');
    assert.ok(st.isFile());
    assert.equal(st.size, 3 * 4096);
    assert.ok(st.blocks * 512 >= 3 * 4096, `${st.blocks} blocks hold the 12 KiB written`);
  });

  it('does not follow a symlink', async () => {
    const dir = await ctx.tempDir('lstat-link');
    await fs.writeFile(path.join(dir, 'target'), 'x');
    await fs.symlink('target', path.join(dir, 'link'));
    const st = await lstatOrNull(path.join(dir, 'link'));
    assert.ok(st?.isSymbolicLink());
    // a dangling link exists too
    await fs.symlink('nowhere', path.join(dir, 'dangling'));
    assert.ok((await lstatOrNull(path.join(dir, 'dangling')))?.isSymbolicLink());
  });

  it('is null for a missing file', async () => {
    const dir = await ctx.tempDir('lstat-missing');
    assert.equal(await lstatOrNull(path.join(dir, 'nope')), null);
  });

  it('throws the error of any other failure (ENOTDIR), naming the path', async () => {
    const dir = await ctx.tempDir('lstat-notdir');
    await fs.writeFile(path.join(dir, 'file'), 'x');
    const bad = path.join(dir, 'file', 'under');
    await assert.rejects(lstatOrNull(bad), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ENOTDIR');
      assert.equal(e.path, bad);
      return true;
    });
  });
});
