// Data helpers for storage tests: write at offsets, hash, list files.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

export const MiB = 1024 * 1024;

/** Writes `data` at `offset` into an existing file without truncating it. */
export async function writeAt(file: string, offset: number, data: string | Buffer): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    await fh.write(buf, 0, buf.length, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function readAt(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

export async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * MiB);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Deterministic pseudo-random bytes (so hashes can be compared across processes). */
export function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

/** Every file below `dir`, relative, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    for (const e of entries) {
      const r = rel ? path.join(rel, e.name) : e.name;
      if (e.isDirectory()) await walk(r);
      else out.push(r);
    }
  };
  await walk('');
  return out.sort();
}

export async function allocated(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

export async function freeBytes(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * Space taken below `dir`, as a counter that grows: on the reflink test
 * filesystems (loop mounts of their own) the filesystem's used space, since
 * shared extents make per-file sums meaningless; elsewhere (ext4 is the
 * machine's own, shared with whatever else runs) the files' allocated bytes.
 */
export async function spaceTaken(dir: string, reflink: boolean): Promise<number> {
  if (reflink) return -(await freeBytes(dir));
  let sum = 0;
  const seen = new Set<number>(); // hard links: count each inode once
  for (const f of await listFiles(dir)) {
    const st = await fs.stat(path.join(dir, f));
    if (!seen.has(st.ino)) sum += st.blocks * 512;
    seen.add(st.ino);
  }
  return sum;
}

/**
 * A digest of the names and contents of every file under `dir` (none when
 * `dir` does not exist): equal digests mean nothing was made, removed or
 * changed there.
 */
export async function treeDigest(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    const entries = await fs.readdir(d, { withFileTypes: true }).catch(() => []);
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      h.update(`${path.relative(dir, p)}\0`);
      if (e.isDirectory()) await walk(p);
      else h.update(await fs.readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}
