/**
 * src/files/sparse-writer.ts on real filesystems: the bytes land where they
 * belong whatever the chunking (unaligned, 1 byte, larger than a write), zero
 * blocks stay holes, writes are bounded and a failed write is reported.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { createSparseWriter, isZeroRange } from '../../src/files/sparse-writer.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB } from '../helpers/data.js';

const BLOCK = 4096;
const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `size` bytes: zeros with data extents of odd lengths at odd offsets, and one zero block inside data. */
function image(size: number): Buffer {
  const b = Buffer.alloc(size);
  const put = (at: number, len: number) => randomBytes(len).copy(b, at);
  put(100, 10); // a few bytes inside the first block
  put(3 * BLOCK - 7, 20); // across a block boundary
  put(5 * BLOCK, 3 * BLOCK); // aligned blocks
  put(9 * BLOCK, 300 * 1024 + 5); // a long run, longer than small writes
  b.fill(0, 20 * BLOCK, 21 * BLOCK); // a zero block inside it
  put(size - 3, 3); // the last bytes
  return b;
}

/** Blocks of `b` that hold a non-zero byte. */
function dataBlocks(b: Buffer): number {
  let n = 0;
  for (let o = 0; o < b.length; o += BLOCK) if (!isZeroRange(b, o, Math.min(b.length, o + BLOCK))) n++;
  return n;
}

function* cut(b: Buffer, step: number): Generator<Buffer> {
  for (let o = 0; o < b.length; o += step) yield Buffer.from(b.subarray(o, Math.min(b.length, o + step)));
}

async function freshFile(dir: string, name: string, size: number): Promise<fs.FileHandle> {
  const fh = await fs.open(path.join(dir, name), 'wx+');
  await fh.truncate(size);
  return fh;
}

describe('isZeroRange', () => {
  it('sees one non-zero byte anywhere, also beyond its comparison window', () => {
    const b = Buffer.alloc(600 * 1024);
    assert.ok(isZeroRange(b, 0, b.length));
    for (const at of [0, 4095, 262_143, 262_144, b.length - 1]) {
      b[at] = 1;
      assert.ok(!isZeroRange(b, 0, b.length), `byte ${at}`);
      assert.ok(isZeroRange(b, 0, at) && isZeroRange(b, at + 1, b.length));
      b[at] = 0;
    }
  });
});

describeEachFs('createSparseWriter', (_tfs, fsx) => {
  const size = 2 * MiB + 12_345;
  const data = image(size);

  // step: how the stream is cut; opts: writer limits (small ones force many writes and waits).
  const cases: Array<[string, number, Parameters<typeof createSparseWriter>[1]]> = [
    ['one chunk', size, {}],
    ['64 KiB chunks', 65_536, {}],
    ['unaligned chunks', 100_003, {}],
    ['chunks smaller than a block', 1_000, {}],
    ['1-byte chunks at the start', 1, {}],
    ['small writes, little in flight, frequent syncs', 65_537, { maxWriteBytes: BLOCK, maxPendingBytes: 4 * BLOCK, syncEveryBytes: 64 * 1024 }],
  ];
  for (const [name, step, opts] of cases) {
    it(`${name}: same bytes, zero blocks left as holes`, async () => {
      const dir = await fsx.tempDir('sw');
      const fh = await freshFile(dir, 'out.img', size);
      const src = step === 1 ? data.subarray(0, 64 * 1024) : data; // 1-byte chunks: the first 64 KiB only
      let waits = 0;
      try {
        const w = createSparseWriter(fh, opts);
        for (const c of cut(src, step)) {
          if (!w.push(c)) {
            waits++;
            await w.drained();
          }
        }
        if (step === 1) w.push(Buffer.from(data.subarray(64 * 1024)));
        await w.finish();
        assert.equal(w.position, size);
        await fh.sync();
      } finally {
        await fh.close();
      }
      const out = await fs.readFile(path.join(dir, 'out.img'));
      assert.equal(hash(out), hash(data));
      const st = await fs.stat(path.join(dir, 'out.img'));
      // (plus room for the filesystem's own extent blocks, which ext4 counts in st_blocks)
      assert.ok(st.blocks * 512 <= dataBlocks(data) * BLOCK + 64 * 1024, `${st.blocks * 512} bytes allocated for ${dataBlocks(data)} data blocks`);
      if (opts?.maxPendingBytes) assert.ok(waits > 0, 'the small in-flight limit made the caller wait');
    });
  }

  it('a failed write is reported by push, drained and finish; settle waits quietly', async () => {
    const dir = await fsx.tempDir('sw-fail');
    await (await freshFile(dir, 'ro.img', MiB)).close();
    const fh = await fs.open(path.join(dir, 'ro.img'), 'r'); // writes fail with EBADF
    try {
      const w = createSparseWriter(fh, { maxWriteBytes: BLOCK, maxPendingBytes: 2 * BLOCK });
      assert.equal(w.push(Buffer.alloc(8 * BLOCK, 1)), false);
      await assert.rejects(w.drained(), { code: 'EBADF' });
      assert.throws(() => w.push(Buffer.alloc(BLOCK, 1)), { code: 'EBADF' });
      await assert.rejects(w.finish(), { code: 'EBADF' });
      await w.settle();
    } finally {
      await fh.close();
    }
    assert.equal((await fs.stat(path.join(dir, 'ro.img'))).blocks, 0);
  });

  it('only zeros: nothing is written', async () => {
    const dir = await fsx.tempDir('sw-zero');
    const fh = await freshFile(dir, 'z.img', 4 * MiB);
    try {
      const w = createSparseWriter(fh);
      for (const c of cut(Buffer.alloc(4 * MiB), 65_536)) assert.ok(w.push(c));
      await w.finish();
      assert.equal(w.dataBytes, 0);
    } finally {
      await fh.close();
    }
    assert.equal((await fs.stat(path.join(dir, 'z.img'))).blocks, 0);
  });

  it('refuses a block size that is not a power of two', async () => {
    const dir = await fsx.tempDir('sw-opt');
    const fh = await freshFile(dir, 'o.img', BLOCK);
    try {
      assert.throws(() => createSparseWriter(fh, { blockBytes: 3000 }), RangeError);
    } finally {
      await fh.close();
    }
  });
});
