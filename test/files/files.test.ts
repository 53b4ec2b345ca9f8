/**
 * src/files/files.ts on real filesystems: reflink where XFS/btrfs can, sparse
 * copies on ext4, atomic replacement, sparse creation.
 */
import { it } from 'node:test';
import * as assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import {
  allocatedBytes,
  copyFileCow,
  createSparse,
  reflinkSupported,
  sparseCopy,
  writeFileAtomic,
} from '../../src/files/files.js';
import { describeEachFs } from '../helpers/filesystems.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  try {
    for await (const chunk of fh.createReadStream()) h.update(chunk as Buffer);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Writes `data` at `pos` of an existing file. */
async function writeAt(file: string, pos: number, data: Uint8Array): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, pos);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function readAt(file: string, pos: number, len: number): Promise<Buffer> {
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Bytes an unprivileged user may still allocate on the filesystem of `dir`, after syncfs. */
async function freeBytes(dir: string): Promise<number> {
  // syncfs first: btrfs and XFS account delayed allocations lazily.
  await promisify(execFile)('sync', ['-f', dir]);
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

/** 64 MiB sparse file: four 1 MiB random extents and an 8 MiB run of written zeros. */
async function makeSparseSource(file: string): Promise<{ data: number; zeros: number }> {
  await createSparse(file, 64 * MiB);
  for (const at of [0, 10, 33, 63]) await writeAt(file, at * MiB, randomBytes(MiB));
  await writeAt(file, 20 * MiB, Buffer.alloc(8 * MiB));
  return { data: 4 * MiB, zeros: 8 * MiB };
}

describeEachFs('files', (tfs, ctx) => {
  it(`reflinkSupported is ${tfs.reflink}`, async () => {
    const dir = await ctx.tempDir('probe');
    assert.equal(await reflinkSupported(dir), tfs.reflink);
    assert.deepEqual(await fs.readdir(dir), [], 'the probe files are removed');
  });

  if (tfs.reflink) {
    it('copyFileCow makes a reflink, with or without allowSparse', async () => {
      const dir = await ctx.tempDir('cow');
      const src = path.join(dir, 'src');
      await fs.writeFile(src, randomBytes(3 * MiB + 17), { mode: 0o644 });
      for (const allowSparse of [false, true]) {
        const dst = path.join(dir, `dst-${allowSparse}`);
        assert.equal(await copyFileCow(src, dst, { allowSparse }), 'reflink');
        assert.equal(await sha256(dst), await sha256(src));
        assert.equal((await fs.stat(dst)).mode & 0o777, 0o600);
      }
    });

    it('a reflink copy of 512 MiB takes almost no space and is copy-on-write', async () => {
      const dir = await ctx.tempDir('reflink-space');
      const src = path.join(dir, 'big');
      const dst = path.join(dir, 'big-copy');
      const block = randomBytes(MiB);
      const fh = await fs.open(src, 'wx', 0o600);
      try {
        for (let i = 0; i < 512; i++) {
          block.writeUInt32LE(i, 0); // every MiB differs
          await fh.write(block, 0, MiB, i * MiB);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      const before = await freeBytes(dir);
      assert.equal(await copyFileCow(src, dst, { allowSparse: false }), 'reflink');
      const after = await freeBytes(dir);
      assert.equal((await fs.stat(dst)).size, 512 * MiB);
      assert.ok(before - after < 32 * MiB, `free space fell by ${(before - after) / MiB} MiB for a 512 MiB reflink`);
      for (const i of [0, 200, 511]) assert.deepEqual(await readAt(dst, i * MiB, 64), await readAt(src, i * MiB, 64));
      // Writing the copy leaves the source alone.
      const src0 = await readAt(src, 0, MiB);
      await writeAt(dst, 0, Buffer.alloc(MiB, 0xab));
      assert.deepEqual(await readAt(src, 0, MiB), src0);
      assert.deepEqual(await readAt(dst, 0, MiB), Buffer.alloc(MiB, 0xab));
    });
  } else {
    it('copyFileCow refuses without allowSparse and leaves no copy', async () => {
      const dir = await ctx.tempDir('cow');
      const src = path.join(dir, 'src');
      const dst = path.join(dir, 'dst');
      await fs.writeFile(src, randomBytes(MiB));
      await assert.rejects(copyFileCow(src, dst, { allowSparse: false }), (e: NodeJS.ErrnoException) => {
        assert.ok(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL'].includes(e.code ?? ''), `code ${e.code}`);
        return true;
      });
      assert.deepEqual(await fs.readdir(dir), ['src']);
    });

    it('copyFileCow makes a sparse copy with allowSparse', async () => {
      const dir = await ctx.tempDir('cow');
      const src = path.join(dir, 'src');
      const dst = path.join(dir, 'dst');
      const { data, zeros } = await makeSparseSource(src);
      const seen: Array<[number, number]> = [];
      assert.equal(await copyFileCow(src, dst, { allowSparse: true, onProgress: (d, t) => seen.push([d, t]) }), 'sparse');
      assert.equal(await sha256(dst), await sha256(src));
      assert.equal((await fs.stat(dst)).mode & 0o777, 0o600);
      // The holes stay holes; the written zeros are data to lseek, copied as they are in the kernel.
      const used = await allocatedBytes(dst);
      assert.ok(used >= data && used <= data + zeros + MiB, `copy allocates ${used / MiB} MiB for ${data / MiB} MiB of data`);
      assert.deepEqual(seen.at(-1), [64 * MiB, 64 * MiB]);
    });
  }

  it('copyFileCow refuses an existing destination and keeps it', async () => {
    const dir = await ctx.tempDir('exists');
    const src = path.join(dir, 'src');
    const dst = path.join(dir, 'dst');
    await fs.writeFile(src, 'new');
    await fs.writeFile(dst, 'keep');
    for (const allowSparse of [false, true])
      await assert.rejects(copyFileCow(src, dst, { allowSparse }), { code: 'EEXIST' });
    assert.equal(await fs.readFile(dst, 'utf8'), 'keep');
  });

  it('a sparse copy of 64 MiB keeps the data and allocates only the data extents', async () => {
    const dir = await ctx.tempDir('sparse');
    const src = path.join(dir, 'src');
    const dst = path.join(dir, 'dst');
    const { data, zeros } = await makeSparseSource(src);
    const srcUsed = await allocatedBytes(src);
    assert.ok(srcUsed >= data + zeros, `the source allocates ${srcUsed / MiB} MiB, its zeros included`);
    await sparseCopy(src, dst);
    assert.equal((await fs.stat(dst)).size, 64 * MiB);
    assert.equal(await sha256(dst), await sha256(src));
    const used = await allocatedBytes(dst);
    // The 56 MiB of holes stay holes; the 8 MiB of written zeros are data to lseek, copied as they
    // are in the kernel (test/files/sparse-copy.test.ts: across filesystems they become holes).
    assert.ok(used >= data && used <= data + zeros + MiB, `copy allocates ${used / MiB} MiB for ${data / MiB} MiB of data`);
    assert.deepEqual(await readAt(dst, 20 * MiB, 8 * MiB), Buffer.alloc(8 * MiB));
  });

  it('a sparse copy keeps odd sizes, with data or a hole at the end', async () => {
    const dir = await ctx.tempDir('odd');
    for (const [name, size, tail] of [
      ['hole-end', 5 * MiB + 4097, false],
      ['data-end', 5 * MiB + 4097, true],
      ['tiny', 3, true],
      ['empty', 0, false],
    ] as const) {
      const src = path.join(dir, name);
      const dst = path.join(dir, `${name}.copy`);
      await createSparse(src, size);
      if (size > 0) await writeAt(src, 0, randomBytes(Math.min(size, 1000)));
      if (tail) await writeAt(src, size - 1, Buffer.from([0x5a]));
      await sparseCopy(src, dst);
      assert.equal((await fs.stat(dst)).size, size, name);
      assert.equal(await sha256(dst), await sha256(src), name);
    }
  });

  it('an aborted sparse copy removes the partial copy', async () => {
    const dir = await ctx.tempDir('abort');
    const src = path.join(dir, 'src');
    const dst = path.join(dir, 'dst');
    await fs.writeFile(src, randomBytes(8 * MiB));
    const ac = new AbortController();
    await assert.rejects(
      sparseCopy(src, dst, (done) => {
        if (done >= 2 * MiB) ac.abort();
      }, ac.signal),
      { name: 'AbortError' },
    );
    assert.deepEqual(await fs.readdir(dir), ['src']);
  });

  it('writeFileAtomic replaces the content and leaves no temporary files', async () => {
    const dir = await ctx.tempDir('atomic');
    const file = path.join(dir, 'state.json');
    await writeFileAtomic(file, 'first');
    assert.equal(await fs.readFile(file, 'utf8'), 'first');
    const before = (await fs.stat(file)).ino;
    await writeFileAtomic(file, new Uint8Array(Buffer.from('second, longer')), 0o600);
    assert.equal(await fs.readFile(file, 'utf8'), 'second, longer');
    assert.notEqual((await fs.stat(file)).ino, before, 'replaced by rename, not rewritten in place');
    assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
    await writeFileAtomic(file, 'x');
    assert.equal(await fs.readFile(file, 'utf8'), 'x', 'a shorter content leaves no tail');
    assert.deepEqual(await fs.readdir(dir), ['state.json']);
  });

  it('a failed writeFileAtomic leaves the target and no temporary files', async () => {
    const dir = await ctx.tempDir('atomic-fail');
    const target = path.join(dir, 'occupied');
    await fs.mkdir(target);
    await fs.writeFile(path.join(target, 'inside'), 'kept');
    await assert.rejects(writeFileAtomic(target, 'data'));
    assert.deepEqual(await fs.readdir(dir), ['occupied']);
    assert.equal(await fs.readFile(path.join(target, 'inside'), 'utf8'), 'kept');
  });

  it('createSparse allocates ~0 bytes and refuses an existing file', async () => {
    const dir = await ctx.tempDir('create');
    const file = path.join(dir, 'disk.img');
    await createSparse(file, 2 * 1024 * MiB);
    const st = await fs.stat(file);
    assert.equal(st.size, 2 * 1024 * MiB);
    assert.equal(st.mode & 0o777, 0o600);
    assert.ok((await allocatedBytes(file)) <= 64 * KiB, `allocated ${await allocatedBytes(file)} bytes`);
    await writeAt(file, 0, Buffer.from('mbr'));
    await assert.rejects(createSparse(file, MiB), { code: 'EEXIST' });
    assert.equal((await fs.stat(file)).size, 2 * 1024 * MiB);
    assert.deepEqual(await readAt(file, 0, 3), Buffer.from('mbr'));
  });

  it('allocatedBytes is 0 for a missing file', async () => {
    const dir = await ctx.tempDir('missing');
    assert.equal(await allocatedBytes(path.join(dir, 'nope')), 0);
  });
});
