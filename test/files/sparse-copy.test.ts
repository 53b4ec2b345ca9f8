/**
 * sparseCopy (src/files/files.ts) on real filesystems: a copy costs the data,
 * not the size. Holes are found with SEEK_DATA/SEEK_HOLE and never read, data
 * is copied in the kernel (copy_file_range), and where the kernel cannot copy
 * (another filesystem) the bytes are read and zero blocks stay holes.
 * Contents are compared with cmp(1), sizes with stat, never through the code
 * under test.
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { allocatedBytes, createSparse, sparseCopy } from '../../src/files/files.js';
import { describeEachFs, removeTree, tempDirOn, TEST_FILESYSTEMS } from '../helpers/filesystems.js';
import { describeEachSmallFs, fillFilesystem, unfill } from '../helpers/small-fs.js';
import { MiB, writeAt } from '../helpers/data.js';

const KiB = 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/** True when cmp(1) finds the two files identical (lengths included). */
async function identical(a: string, b: string): Promise<boolean> {
  try {
    await promisify(execFile)('cmp', ['--silent', a, b]);
    return true;
  } catch (e) {
    if ((e as { code?: unknown }).code === 1) return false;
    throw e;
  }
}

/** Bytes this process has read through read-like system calls so far (copy_file_range included), from /proc/self/io. */
function bytesReadByProcess(): number {
  const m = /^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
  if (!m) throw new Error('no rchar in /proc/self/io');
  return Number(m[1]);
}

/** A file shape: its size and the data written into it (offset, bytes). */
interface Shape {
  name: string;
  size: number;
  data: Array<[at: number, bytes: number]>;
}

const SHAPES: Shape[] = [
  {
    // data at several offsets, unaligned ones too, holes between, data at the very end, size not a multiple of 4096
    name: 'several-data-end',
    size: 40 * MiB + 1000,
    data: [[0, 64 * KiB], [5 * MiB, MiB], [17 * MiB + 12_345, 3000], [33 * MiB - 100, 200], [40 * MiB + 1000 - 777, 777]],
  },
  { name: 'hole-end', size: 20 * MiB + 123, data: [[MiB, 2 * MiB + 5]] },
  { name: 'data-start-only', size: 9 * MiB, data: [[0, 10]] },
  { name: 'all-data', size: 3 * MiB + 1, data: [[0, 3 * MiB + 1]] },
  { name: 'all-hole', size: 256 * MiB + 4095, data: [] },
  { name: 'tiny', size: 3, data: [[0, 3]] },
  { name: 'empty', size: 0, data: [] },
];

/** The allocation a copy of `shape` needs at most: its data rounded out to 4 KiB blocks at both ends. */
function dataBlocksBytes(shape: Shape): number {
  let n = 0;
  for (const [at, bytes] of shape.data) n += Math.ceil((at + bytes) / 4096) * 4096 - Math.floor(at / 4096) * 4096;
  return n;
}

async function makeShape(dir: string, shape: Shape): Promise<string> {
  const file = path.join(dir, shape.name);
  await createSparse(file, shape.size);
  for (const [at, bytes] of shape.data) {
    const buf = randomBytes(bytes);
    buf[0] = 0xff; // never a zero block at its start, whatever the random bytes
    await writeAt(file, at, buf);
  }
  return file;
}

describeEachFs('sparseCopy', (tfs, ctx) => {
  it('copies every shape exactly, allocating the data and not the size', async () => {
    const dir = await ctx.tempDir('shapes');
    for (const shape of SHAPES) {
      const src = await makeShape(dir, shape);
      const dst = `${src}.copy`;
      const seen: number[] = [];
      await sparseCopy(src, dst, (done, total) => {
        assert.equal(total, shape.size);
        seen.push(done);
      });
      const st = await fs.stat(dst);
      assert.equal(st.size, shape.size, `${shape.name}: size`);
      assert.equal(st.mode & 0o777, 0o600, `${shape.name}: mode`);
      assert.ok(await identical(src, dst), `${shape.name}: cmp finds a difference`);
      const used = await allocatedBytes(dst);
      const want = dataBlocksBytes(shape);
      // A reflinking copy_file_range (XFS, btrfs) may share whole extents: allow one more MiB there.
      const slack = tfs.reflink ? MiB : 16 * KiB;
      assert.ok(used <= want + slack, `${shape.name}: the copy allocates ${used} bytes for ${want} bytes of data blocks`);
      if (shape.size > 0) assert.equal(seen.at(-1), shape.size, `${shape.name}: progress ends at the size`);
      for (let k = 1; k < seen.length; k++) assert.ok(seen[k]! >= seen[k - 1]!, `${shape.name}: progress never goes back`);
    }
  });

  it('does not read the holes: a 1 TiB file holding 1 MiB copies reading about 1 MiB', async () => {
    const dir = await ctx.tempDir('tib');
    const src = path.join(dir, 'huge');
    const dst = path.join(dir, 'huge.copy');
    await createSparse(src, TiB);
    const data = randomBytes(MiB);
    await writeAt(src, 700 * GiB + 12_288, data);
    await writeAt(src, TiB - 4096, data.subarray(0, 4096));
    // The bytes this process reads (read and copy_file_range alike) while copying; a copy that
    // reads the holes is stopped as soon as it has read 64 MiB, instead of reading a TiB.
    const ac = new AbortController();
    const before = bytesReadByProcess();
    let most = 0;
    try {
      await sparseCopy(src, dst, () => {
        most = Math.max(most, bytesReadByProcess() - before);
        if (most > 64 * MiB) ac.abort();
      }, ac.signal);
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
    const read = Math.max(most, bytesReadByProcess() - before);
    assert.ok(read <= 8 * MiB, `copying 1 MiB + 4 KiB of data out of 1 TiB read ${(read / MiB).toFixed(1)} MiB`);
    assert.equal((await fs.stat(dst)).size, TiB);
    const used = await allocatedBytes(dst);
    assert.ok(used <= 2 * MiB + (tfs.reflink ? MiB : 0), `the copy allocates ${used / MiB} MiB`);
    // Compared where the data is (cmp of a TiB of zeros would take minutes), with the source read by fs, not the code under test.
    for (const at of [700 * GiB + 12_288, TiB - 4096, 0, 350 * GiB]) {
      const a = Buffer.alloc(MiB);
      const b = Buffer.alloc(MiB);
      const fa = await fs.open(src, 'r');
      const fb = await fs.open(dst, 'r');
      try {
        const ra = await fa.read(a, 0, MiB, at);
        const rb = await fb.read(b, 0, MiB, at);
        assert.equal(rb.bytesRead, ra.bytesRead, `bytes at ${at}`);
        assert.ok(a.equals(b), `the copy differs at offset ${at}`);
      } finally {
        await fa.close();
        await fb.close();
      }
    }
  });

  it('a copy aborted between kernel copies leaves no partial copy', async () => {
    const dir = await ctx.tempDir('abort');
    const src = path.join(dir, 'src');
    const dst = path.join(dir, 'dst');
    await createSparse(src, 512 * MiB);
    // 96 MiB in three regions: more than one kernel copy call.
    for (const at of [0, 200, 400]) await writeAt(src, at * MiB, Buffer.alloc(32 * MiB, 0x6b));
    const ac = new AbortController();
    let calls = 0;
    await assert.rejects(
      sparseCopy(src, dst, () => {
        calls++;
        ac.abort();
      }, ac.signal),
      { name: 'AbortError' },
    );
    assert.ok(calls >= 1);
    assert.deepEqual(await fs.readdir(dir), ['src']);
  });
});

describeEachSmallFs('sparseCopy on a full filesystem', (small) => {
  // On a reflink filesystem a copy within it shares extents and needs no room: the source is then
  // elsewhere (the system's temporary directory), so every byte must be written here.
  const where = small.reflink ? 'from another filesystem' : 'within it';
  it(`a copy (${where}) that runs out of space mid-way fails with ENOSPC and leaves no partial copy`, async () => {
    const dir = await fs.mkdtemp(path.join(small.root, 'sparse-copy-'));
    const srcDir = small.reflink ? await fs.mkdtemp(path.join(os.tmpdir(), 'sparse-copy-src-')) : dir;
    const fillers: string[] = [];
    try {
      const src = path.join(srcDir, 'src');
      await createSparse(src, 256 * MiB);
      for (const at of [0, 100, 200]) await writeAt(src, at * MiB, Buffer.alloc(8 * MiB, 0x3c));
      await fillFilesystem(dir, fillers, 12 * MiB); // room for part of the 24 MiB the copy needs
      await assert.rejects(sparseCopy(src, path.join(dir, 'dst')), { code: 'ENOSPC' });
      const left = srcDir === dir ? ['src'] : [];
      assert.deepEqual((await fs.readdir(dir)).sort(), [...left, ...fillers.map((f) => path.basename(f))].sort());
    } finally {
      await unfill(fillers);
      await removeTree(dir);
      if (srcDir !== dir) await removeTree(srcDir);
    }
  });
});

// Another filesystem: copy_file_range refuses (EXDEV), the bytes are read and zero blocks become holes.
const ext4 = TEST_FILESYSTEMS.find((f) => f.name === 'ext4')!;
const other = TEST_FILESYSTEMS.find((f) => f.name !== 'ext4' && f.root !== null);
describe('sparseCopy across filesystems', { skip: (!other && 'no second test filesystem') || (ext4.skip ?? false) }, () => {
  it('reads what the kernel cannot copy and leaves its zero blocks as holes', async () => {
    const from = await tempDirOn(other!, 'sparse-copy-from');
    const to = await tempDirOn(ext4, 'sparse-copy-to');
    try {
      const src = path.join(from, 'src');
      const dst = path.join(to, 'dst');
      await createSparse(src, 64 * MiB + 3);
      await writeAt(src, 0, randomBytes(MiB));
      await writeAt(src, 10 * MiB, Buffer.alloc(8 * MiB)); // written zeros: data to lseek, zeros to the reader
      await writeAt(src, 40 * MiB + 5, randomBytes(MiB));
      await writeAt(src, 64 * MiB, Buffer.from([1, 2, 3]));
      await sparseCopy(src, dst);
      assert.equal((await fs.stat(dst)).size, 64 * MiB + 3);
      assert.ok(await identical(src, dst), 'cmp finds a difference');
      const used = await allocatedBytes(dst);
      assert.ok(used <= 2 * MiB + 32 * KiB, `the copy allocates ${used / MiB} MiB for 2 MiB of data (8 MiB of zeros must stay holes)`);
    } finally {
      await removeTree(from);
      await removeTree(to);
    }
  });
});
