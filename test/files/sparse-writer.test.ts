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
import * as fsSync from 'node:fs';
import { backgroundSync, copyToSparse, createSparseWriter, fdSource, forEachDataRun, isZeroRange, type ByteSource } from '../../src/files/sparse-writer.js';
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

  it('pushData writes its bytes as they are (zeros too), between skips and scanned pushes', async () => {
    const dir = await fsx.tempDir('sw-data');
    const total = 64 * BLOCK;
    const fh = await freshFile(dir, 'out.img', total);
    // [0, 8 blocks): data with an all-zero block inside, via pushData; 8 blocks skipped;
    // [16, 24): scanned (its zero half left as a hole); [24, 40): pushData in two pieces; the rest skipped.
    const a = Buffer.alloc(8 * BLOCK, 0xa1);
    a.fill(0, 3 * BLOCK, 4 * BLOCK);
    const c = Buffer.alloc(8 * BLOCK, 0);
    c.fill(0xc3, 4 * BLOCK);
    const d = Buffer.alloc(16 * BLOCK, 0xd4);
    const expected = Buffer.alloc(total);
    a.copy(expected, 0);
    c.copy(expected, 16 * BLOCK);
    d.copy(expected, 24 * BLOCK);
    try {
      const w = createSparseWriter(fh, { maxWriteBytes: 4 * BLOCK });
      w.pushData(a);
      w.skip(8 * BLOCK);
      w.push(c);
      w.pushData(d.subarray(0, 5 * BLOCK));
      w.pushData(d.subarray(5 * BLOCK));
      assert.equal(w.position, 40 * BLOCK);
      w.skip(total - w.position);
      await w.finish();
      assert.equal(w.dataBytes, 8 * BLOCK + 4 * BLOCK + 16 * BLOCK, 'pushData wrote every byte; push only the data half');
      await fh.sync();
    } finally {
      await fh.close();
    }
    assert.equal(hash(await fs.readFile(path.join(dir, 'out.img'))), hash(expected));
  });

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

  it('syncEveryBytes: fdatasyncs run while data is written; a failed one is reported by finish', async () => {
    const dir = await fsx.tempDir('sw-sync');
    const fh = await freshFile(dir, 'out.img', 2 * MiB);
    // The real handle, its datasync counted (and made to fail in the second round).
    let syncs = 0;
    let failSync = false;
    const counted = Object.create(fh, {
      datasync: {
        value: async () => {
          syncs++;
          if (failSync) throw Object.assign(new Error('injected fdatasync failure'), { code: 'EIO' });
          return fh.datasync();
        },
      },
    }) as fs.FileHandle;
    try {
      const w = createSparseWriter(counted, { maxWriteBytes: 64 * 1024, syncEveryBytes: 128 * 1024 });
      for (const c of cut(Buffer.alloc(MiB, 7), 64 * 1024)) if (!w.push(c)) await w.drained();
      await w.finish();
      assert.ok(syncs > 0, 'no background fdatasync ran for 1 MiB written with syncEveryBytes 128 KiB');

      failSync = true;
      const w2 = createSparseWriter(counted, { maxWriteBytes: 64 * 1024, syncEveryBytes: 128 * 1024 });
      w2.skip(MiB);
      for (const c of cut(Buffer.alloc(MiB, 9), 64 * 1024)) if (!w2.push(c)) await w2.drained();
      await assert.rejects(w2.finish(), { code: 'EIO', message: /injected fdatasync failure/ });
      await w2.settle();
    } finally {
      await fh.close();
    }
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

/** The data of copyToSparse's test image: [offset, bytes]; the rest zeros. Block 11 is a zero block between data. */
const EXTENTS: readonly (readonly [number, number])[] = [
  [100, 10],
  [3 * BLOCK - 7, 20],
  [5 * BLOCK, 3 * BLOCK],
  [9 * BLOCK, 2 * BLOCK],
  [12 * BLOCK + 1, 300 * 1024 + 5],
  [64 * 1024 * 9 - 1, 2], // across a 64 KiB window
];

function extentImage(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (const [at, len] of EXTENTS) randomBytes(len).copy(b, at);
  b.fill(7, size - 3); // the last bytes
  return b;
}

/** 4 KiB blocks with data in extentImage(size), counted from EXTENTS (not by the code under test). */
function extentBlocks(size: number): number {
  const blocks = new Set<number>();
  for (const [at, len] of [...EXTENTS, [size - 3, 3] as const])
    for (let b = Math.floor(at / BLOCK); b <= Math.floor((at + len - 1) / BLOCK); b++) blocks.add(b);
  return blocks.size;
}

/** A source that hands out `b` in reads of at most `step` bytes (a pipe's short reads). */
function bufferSource(b: Buffer, step: number): ByteSource & { reads: number } {
  let at = 0;
  const s = {
    reads: 0,
    read(buf: Buffer, offset: number, length: number): Promise<number> {
      s.reads++;
      const n = b.copy(buf, offset, at, Math.min(b.length, at + Math.min(step, length)));
      at += n;
      return Promise.resolve(n);
    },
  };
  return s;
}

describe('forEachDataRun', () => {
  it('gives the blocks with data, joined, in file offsets (a buffer starting mid-block)', () => {
    const b = Buffer.alloc(40 * BLOCK);
    // The buffer starts at file offset 1000: block k of the file is b[k*BLOCK - 1000, ...).
    b[BLOCK - 1000] = 1; // file block 1
    b[2 * BLOCK - 1000 + 5] = 1; // file block 2: joined with 1
    b[30 * BLOCK - 1000 - 1] = 1; // the last byte of file block 29
    const runs: Array<[number, number]> = [];
    forEachDataRun(b, 0, b.length, 1000, BLOCK, (s, e) => runs.push([s, e]));
    assert.deepEqual(runs, [
      [BLOCK - 1000, 3 * BLOCK - 1000],
      [29 * BLOCK - 1000, 30 * BLOCK - 1000],
    ]);
  });
});

describeEachFs('copyToSparse', (_tfs, fsx) => {
  const size = 2 * MiB + 12_345;
  const data = extentImage(size);

  const cases: Array<[string, number, { readBytes?: number; first?: number }]> = [
    ['4 MiB reads (one)', size, {}],
    ['64 KiB reads', size, { readBytes: 65_536 }],
    ['reads of an odd length', size, { readBytes: 100_003 }],
    ['a pipe: short reads', 1000, { readBytes: 65_536 }],
    ['bytes already read first (after a size line), odd length', size, { first: 5_001, readBytes: 65_536 }],
  ];
  for (const [name, step, o] of cases) {
    it(`${name}: same bytes, zero blocks left as holes`, async () => {
      const dir = await fsx.tempDir('cts');
      const fh = await freshFile(dir, 'out.img', size);
      let r;
      try {
        const first = o.first ? data.subarray(0, o.first) : undefined;
        const src = bufferSource(o.first ? data.subarray(o.first) : data, step);
        r = await copyToSparse(src, fh, size, { ...(first ? { first } : {}), ...(o.readBytes ? { readBytes: o.readBytes } : {}) });
        await fh.sync();
      } finally {
        await fh.close();
      }
      assert.deepEqual(r, { copied: size, dataBytes: r.dataBytes, more: false });
      assert.equal(r.dataBytes, extentBlocks(size) * BLOCK - (BLOCK - (size % BLOCK)), 'only the data blocks written (the last one short)');
      const out = await fs.readFile(path.join(dir, 'out.img'));
      assert.equal(hash(out), hash(data));
      const st = await fs.stat(path.join(dir, 'out.img'));
      assert.ok(st.blocks * 512 <= extentBlocks(size) * BLOCK + 64 * 1024, `${st.blocks * 512} bytes allocated for ${extentBlocks(size)} data blocks`);
    });
  }

  it("at an offset (sparseCopy's ranges): the caller's buffers, progress, every written byte told to the syncs, no probe past size", async () => {
    const dir = await fsx.tempDir('cts-at');
    const off = 5 * BLOCK + 123; // not block-aligned: blocks are aligned in file offsets
    const fh = await freshFile(dir, 'out.img', off + size);
    const progress: number[] = [];
    let told = 0;
    let r;
    try {
      const real = backgroundSync(fh, 256 * 1024);
      const sync = { ...real, wrote: (n: number) => ((told += n), real.wrote(n)) };
      const buffers = [Buffer.alloc(65_536), Buffer.alloc(65_536)] as const;
      // One byte more than size in the source: not read (probeEnd false), so `more` stays false.
      const src = bufferSource(Buffer.concat([data, Buffer.from('x')]), 70_000);
      r = await copyToSparse(src, fh, size, { at: off, buffers, sync, probeEnd: false, onProgress: (n) => progress.push(n) });
      await sync.done();
      await fh.sync();
    } finally {
      await fh.close();
    }
    assert.deepEqual(r, { copied: size, dataBytes: r.dataBytes, more: false });
    assert.equal(told, r.dataBytes);
    assert.equal(progress.at(-1), size);
    assert.equal(progress.length, Math.ceil(size / 65_536));
    assert.ok(progress.every((n, i) => i === 0 || n > progress[i - 1]!), progress.join(' '));
    const out = await fs.readFile(path.join(dir, 'out.img'));
    assert.equal(out.length, off + size);
    assert.equal(hash(out), hash(Buffer.concat([Buffer.alloc(off), data])));
    const st = await fs.stat(path.join(dir, 'out.img'));
    assert.ok(st.blocks * 512 <= (extentBlocks(size) + 2) * BLOCK + 64 * 1024, `${st.blocks * 512} bytes allocated for ${extentBlocks(size)} data blocks`);
  });

  it('a file descriptor, read from its current offset', async () => {
    const dir = await fsx.tempDir('cts-fd');
    await fs.writeFile(path.join(dir, 'src.img'), Buffer.concat([Buffer.alloc(777, 9), data]));
    const fd = fsSync.openSync(path.join(dir, 'src.img'), 'r');
    const fh = await freshFile(dir, 'out.img', size);
    try {
      fsSync.readSync(fd, Buffer.alloc(777), 0, 777, null);
      assert.deepEqual((await copyToSparse(fdSource(fd), fh, size, { readBytes: 65_536 })).copied, size);
    } finally {
      await fh.close();
      fsSync.closeSync(fd);
    }
    assert.equal(hash(await fs.readFile(path.join(dir, 'out.img'))), hash(data));
  });

  it('a source longer than size: size bytes copied, more is true; shorter: copied says how much', async () => {
    const dir = await fsx.tempDir('cts-len');
    const fh = await freshFile(dir, 'out.img', size);
    try {
      assert.deepEqual(await copyToSparse(bufferSource(Buffer.concat([data, Buffer.from('x')]), 70_000), fh, size, { readBytes: 65_536 }), {
        copied: size,
        dataBytes: extentBlocks(size) * BLOCK - (BLOCK - (size % BLOCK)),
        more: true,
      });
      const short = await copyToSparse(bufferSource(data.subarray(0, MiB + 3), 70_000), fh, size, { readBytes: 65_536 });
      assert.equal(short.copied, MiB + 3);
      assert.equal(short.more, false);
      // first longer than size
      assert.equal((await copyToSparse(bufferSource(Buffer.alloc(0), 1), fh, 10, { first: Buffer.alloc(11, 1) })).more, true);
    } finally {
      await fh.close();
    }
  });

  it('a failed write rejects with its error once every read and write has settled', async () => {
    const dir = await fsx.tempDir('cts-fail');
    await (await freshFile(dir, 'ro.img', MiB)).close();
    const fh = await fs.open(path.join(dir, 'ro.img'), 'r'); // writes fail with EBADF
    try {
      await assert.rejects(copyToSparse(bufferSource(Buffer.alloc(MiB, 1), MiB), fh, MiB, { readBytes: 65_536 }), { code: 'EBADF' });
    } finally {
      await fh.close();
    }
    assert.equal((await fs.stat(path.join(dir, 'ro.img'))).blocks, 0);
  });

  it('an aborted signal stops it before the next read', async () => {
    const dir = await fsx.tempDir('cts-abort');
    const fh = await freshFile(dir, 'out.img', size);
    const src = bufferSource(data, 65_536);
    try {
      const abort = new AbortController();
      abort.abort(new Error('stop here'));
      await assert.rejects(copyToSparse(src, fh, size, { readBytes: 65_536, signal: abort.signal }), /stop here/);
    } finally {
      await fh.close();
    }
    assert.ok(src.reads <= 2, `${src.reads} reads after the abort`);
  });
});
