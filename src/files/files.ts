/**
 * Crash-safe file primitives. Every state change in file-based drivers is
 * made of these: write under a temporary name, fsync, rename (or link) into
 * place, fsync the directory. Copies are reflinks where the filesystem can
 * (instant, shared extents) and sparse copies elsewhere (holes kept, zero
 * blocks not written).
 */
import { constants as fsc, lstat as lstatCallback, type Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { backgroundSync, copyToSparse, type ByteSource } from './sparse-writer.js';
import { fileExtents, type DataRegion, type FileExtents } from './extents.js';
import { runOnCopyThread, type JobEnd, type ThreadJob } from './copy-threads.js';

export type CopyMethod = 'reflink' | 'sparse';

export interface CopyProgress {
  (done: number, total: number): void;
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A random suffix for temporary names. */
export function randomSuffix(): string {
  return randomBytes(6).toString('hex');
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * lstat that returns null for a missing file. Through the callback API, not
 * fs/promises: on every admin.vm.volume.Info (two of these, one usually
 * missing), the promise lstat cost about 30 us of CPU for a file and 45-55
 * for a missing one (its error carries an async stack trace), the callback
 * one about 18 either way (docs/benchmarks.md, issue 16 item 5).
 */
export function lstatOrNull(p: string): Promise<Stats | null> {
  return new Promise((resolve, reject) =>
    lstatCallback(p, (err, st) => {
      if (!err) resolve(st);
      else if (err.code === 'ENOENT') resolve(null);
      else reject(err);
    }),
  );
}

/** unlink that ignores a missing file; returns whether something was removed. */
export async function unlinkIfExists(p: string): Promise<boolean> {
  try {
    await fs.unlink(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/** The temporary name writeFileAtomic writes `file` under (before renaming it into place). */
function atomicTempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${randomSuffix()}`);
}

/**
 * Removes the temporaries writeFileAtomic left for `file` (a crash between
 * creating and renaming one): exactly `.NAME.tmp-` and 12 hex digits, nothing
 * else. Only for files whose writers are excluded by a lock the caller holds,
 * or a writer's temporary could vanish under it. Returns the names removed.
 */
export async function sweepAtomicTemps(file: string): Promise<string[]> {
  const dir = path.dirname(file);
  const prefix = `.${path.basename(file)}.tmp-`;
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const removed: string[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix) || !/^[0-9a-f]{12}$/.test(n.slice(prefix.length))) continue;
    if (await unlinkIfExists(path.join(dir, n))) removed.push(n);
  }
  if (removed.length) await fsyncDir(dir);
  return removed;
}

/** Writes `data` to `file` atomically and durably (temp, fsync, rename, fsync dir); `mode` is set when the temporary is created. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = path.dirname(file);
  const tmp = atomicTempName(file);
  try {
    const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (e) {
    await unlinkIfExists(tmp);
    throw e;
  }
  await fsyncDir(dir);
}

/** Creates a new sparse file of `size` bytes (fails if it exists); fsynced when `durable`. */
export async function createSparse(file: string, size: number, durable = true): Promise<void> {
  const fh = await fs.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    await fh.truncate(size);
    if (durable) await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Bytes really allocated to a file (its blocks), 0 if it is missing. */
export async function allocatedBytes(file: string): Promise<number> {
  const st = await lstatOrNull(file);
  return st ? st.blocks * 512 : 0;
}

const NO_REFLINK = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS']);

/**
 * Copies `src` to the new file `dst`: a reflink when possible; otherwise, when
 * `allowSparse`, a sparse copy. The copy is fsynced before it returns.
 */
export async function copyFileCow(
  src: string,
  dst: string,
  opts: { allowSparse: boolean; onProgress?: CopyProgress; signal?: AbortSignal; durable?: boolean },
): Promise<CopyMethod> {
  const durable = opts.durable ?? true;
  try {
    await fs.copyFile(src, dst, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE_FORCE);
    await fs.chmod(dst, 0o600);
    if (durable) await fsyncFile(dst);
    return 'reflink';
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    // EEXIST: `dst` is someone else's file (COPYFILE_EXCL); never remove it.
    if (code === 'EEXIST') throw e;
    if (!NO_REFLINK.has(code)) {
      await unlinkIfExists(dst).catch(() => undefined);
      throw e;
    }
    if (!opts.allowSparse) throw e;
  }
  await unlinkIfExists(dst);
  await sparseCopy(src, dst, opts.onProgress, opts.signal, durable);
  return 'sparse';
}

/** Read size: big reads cost far less per byte than small ones. */
const CHUNK = 8 << 20;
/** Zero detection granularity: an all-zero block this long is left a hole. */
const BLOCK = 4 << 10;
/** A durable copy starts a background fdatasync every this many bytes written. */
const SYNC_EVERY = 64 << 20;
/** Bytes per copy_file_range call: the unit of progress reports and of cancellation. */
const KERNEL_CHUNK = 32 << 20;
/** copy_file_range errors that mean "not here" (another filesystem, not supported, filtered): read and write instead. */
const NO_KERNEL_COPY = new Set(['EXDEV', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOSYS', 'EPERM', 'EBADF', 'UNKNOWN']);

/**
 * Copies `src` to the new file `dst` at the cost of its data, not its size:
 *
 * - only the source's data regions are visited (SEEK_DATA/SEEK_HOLE, see
 *   extents.ts): holes are skipped unread and stay holes;
 * - a data region is copied by copy_file_range, inside the kernel, in
 *   KERNEL_CHUNK pieces (cancellation between them), on a copy thread that
 *   walks the regions itself (copy-threads.ts: no hand-off per region), or
 *   through koffi's async calls when both threads are busy;
 * - where the filesystem cannot tell data from holes (no lseek through
 *   koffi, or it reports more data than the file has blocks) or cannot copy
 *   in the kernel (EXDEV, EOPNOTSUPP, ...), the bytes are read and only
 *   their non-zero 4 KiB blocks written (copyToSparse, the same copy a
 *   local import makes), so holes and zero blocks stay unallocated, as
 *   `cp --sparse=always` leaves them. Reading the next chunk overlaps with
 *   writing the last one (two buffers in turn, made once per copy).
 *
 * A data region's zero blocks are copied as they are by copy_file_range:
 * finding them would mean reading every byte into JavaScript and writing it
 * back (2-3x `cp`'s time in a prototype run, see docs/benchmarks.md). The length
 * is set by truncate first. A durable copy syncs in the background every
 * SYNC_EVERY bytes, so the final fsync has little left. `onProgress` gets
 * the offset reached (holes count as done). A failure removes the partial
 * copy.
 */
export async function sparseCopy(
  src: string,
  dst: string,
  onProgress?: CopyProgress,
  signal?: AbortSignal,
  durable = true,
): Promise<void> {
  const inFh = await fs.open(src, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  let outFh: fs.FileHandle | undefined;
  /** The background fdatasyncs of the copy (kernel copies and read-and-write alike). */
  let sync: ReturnType<typeof backgroundSync> | undefined;
  try {
    outFh = await fs.open(dst, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    const out = outFh;
    const st = await inFh.stat();
    const size = st.size;
    // The length first: holes and skipped zeros must read back as zeros.
    await out.truncate(size);
    const syncs = backgroundSync(out, durable ? SYNC_EVERY : Infinity);
    sync = syncs;
    const ext = await fileExtents();
    const map = typeof ext === 'string' ? undefined : ext;
    let kernel = map;
    /** Where the map may be trusted about holes: it never reports more data than the file has blocks. */
    const allocated = st.blocks * 512;
    let reported = 0;

    /** Read-and-write's two buffers, made at its first use and kept for every range. */
    let bufs: [Buffer, Buffer] | undefined;
    /** Reads [from, end) and writes its non-zero blocks (copyToSparse, the import's copy, at offset `from`). */
    const readAndWrite = async (from: number, end: number) => {
      let pos = from;
      const source: ByteSource = {
        read: async (buf, offset, length) => {
          const { bytesRead } = await inFh.read(buf, offset, length, pos);
          pos += bytesRead;
          return bytesRead; // 0: the file shrank meanwhile, and the rest reads as zeros
        },
      };
      signal?.throwIfAborted();
      bufs ??= [Buffer.allocUnsafeSlow(CHUNK), Buffer.allocUnsafeSlow(CHUNK)];
      await copyToSparse(source, out, end - from, {
        at: from,
        blockBytes: BLOCK,
        buffers: bufs,
        sync: syncs,
        probeEnd: false,
        ...(signal ? { signal } : {}),
        ...(onProgress ? { onProgress: (copied: number) => onProgress(from + copied, size) } : {}),
      });
    };
    /** Copies [from, end) in the kernel; returns where it stopped (short of `end` when the kernel cannot). */
    const kernelCopy = async (k: FileExtents, from: number, end: number): Promise<number> => {
      let pos = from;
      while (pos < end) {
        signal?.throwIfAborted();
        let n: number;
        try {
          n = await k.copyRange(inFh.fd, out.fd, pos, Math.min(KERNEL_CHUNK, end - pos));
        } catch (e) {
          if (NO_KERNEL_COPY.has((e as NodeJS.ErrnoException).code ?? '')) {
            kernel = undefined; // not on these files: the rest is read and written
            return pos;
          }
          throw Object.assign(e as Error, { path: src, dest: dst });
        }
        if (n === 0) return end; // the file shrank meanwhile: the rest reads as zeros
        pos += n;
        syncs.wrote(n);
        onProgress?.(pos, size);
      }
      return pos;
    };

    /** Where the loop below starts: past what a copy thread did. */
    let from = 0;
    if (kernel) {
      // The first data region, found here: a file without data needs no thread.
      const first = kernel.dataRegions(inFh.fd, size).next();
      if (first.done) from = size;
      else {
        const stopped = await copyOnThread(inFh.fd, out.fd, first.value[0], size, allocated, syncs, onProgress, signal);
        if (stopped) {
          if (stopped.how === 'failed') throw Object.assign(new Error(stopped.message), { code: stopped.code, errno: stopped.errno, syscall: 'copy_file_range', path: src, dest: dst });
          // nokernel: the kernel cannot copy these files (EXDEV, ...); nomap: the map knows no holes; either way, read from here.
          if (stopped.how !== 'end') kernel = undefined;
          from = stopped.at;
          reported = stopped.reported;
        }
      }
    }
    const regions: Iterable<DataRegion> = from >= size ? [] : map ? map.dataRegions(inFh.fd, size, from) : [[0, size]];
    for (const [start, end] of regions) {
      signal?.throwIfAborted();
      reported += end - start;
      let pos = start;
      // A map reporting more data than there are blocks knows no holes (a
      // filesystem without SEEK_HOLE): from here on, look for zeros.
      if (kernel && reported <= allocated + BLOCK) pos = await kernelCopy(kernel, start, end);
      if (pos < end) await readAndWrite(pos, end);
    }
    signal?.throwIfAborted(); // an abort asked during the last chunk still counts
    await syncs.done();
    if (durable) await out.sync();
    if (size > 0) onProgress?.(size, size); // a hole at the end is done too
  } catch (e) {
    await sync?.settle();
    await outFh?.close().catch(() => undefined);
    outFh = undefined;
    await unlinkIfExists(dst).catch(() => undefined);
    throw e;
  } finally {
    await inFh.close();
    await outFh?.close();
  }
}

/** Bytes between two progress messages of a copy thread: also the granularity of a durable copy's background syncs. */
const THREAD_PROGRESS_EVERY = 16 << 20;

/**
 * Copies the data regions of [from, size) on a copy thread (copy-threads.ts);
 * progress and written bytes from its messages. Resolves with where and why
 * it stopped, always after the thread is done with the descriptors;
 * undefined when no thread is free (the caller copies itself). Throws the
 * abort's reason when aborted.
 */
async function copyOnThread(
  fdIn: number, fdOut: number, from: number, size: number, allocated: number,
  syncs: ReturnType<typeof backgroundSync>, onProgress: CopyProgress | undefined, signal: AbortSignal | undefined,
): Promise<{ how: 'end' | 'nokernel' | 'nomap' | 'aborted'; at: number; reported: number }
  | { how: 'failed'; code: string; errno: number; message: string } | undefined> {
  signal?.throwIfAborted();
  const abort = new Int32Array(new SharedArrayBuffer(4));
  const job: ThreadJob = {
    fdIn, fdOut, from, size, allocated, reported: 0, block: BLOCK, chunk: KERNEL_CHUNK,
    progressEvery: THREAD_PROGRESS_EVERY, noKernelCopy: [...NO_KERNEL_COPY], abort,
  };
  /** A throw from onProgress (or the syncs): the thread is stopped, and it is thrown once the thread is done. */
  let thrown: { error: unknown } | undefined;
  const running = runOnCopyThread(job, (at, wrote) => {
    if (thrown) return;
    try {
      syncs.wrote(wrote);
      onProgress?.(at, size);
    } catch (e) {
      thrown = { error: e };
      Atomics.store(abort, 0, 1);
    }
  });
  if (!running) return undefined;
  const onAbort = () => Atomics.store(abort, 0, 1);
  signal?.addEventListener('abort', onAbort, { once: true });
  let end: JobEnd;
  try {
    end = await running; // settles only once the thread is done with fdIn and fdOut
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  if (thrown) throw thrown.error;
  if (end.kind === 'unavailable') return undefined;
  if (end.wrote > 0) syncs.wrote(end.wrote);
  if (end.kind === 'failed') return { how: 'failed', code: end.code, errno: end.errno, message: end.message };
  if (end.how === 'aborted') signal?.throwIfAborted();
  // Where it stopped counts as done (at the end: the size), reported before the caller's last abort check, as a kernel copy's.
  if (end.at > from) onProgress?.(end.at, size);
  return { how: end.how, at: end.at, reported: end.reported };
}

export async function writeAll(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

/** True when `dir`'s filesystem makes reflink copies (tried with two files in it). */
export async function reflinkSupported(dir: string): Promise<boolean> {
  const a = path.join(dir, `.reflink-probe-${randomSuffix()}`);
  const b = `${a}-copy`;
  try {
    await fs.writeFile(a, 'probe', { flag: 'wx', mode: 0o600 });
    await fs.copyFile(a, b, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE_FORCE);
    return true;
  } catch (e) {
    if (NO_REFLINK.has((e as NodeJS.ErrnoException).code ?? '')) return false;
    throw e;
  } finally {
    await unlinkIfExists(a);
    await unlinkIfExists(b);
  }
}

/** Resolves `rel` under `root` and refuses anything that would leave it. */
export function resolveInside(root: string, rel: string): string {
  const full = path.resolve(root, rel);
  const r = path.resolve(root);
  if (full !== r && !full.startsWith(r + path.sep))
    throw new Error(`path '${rel}' leaves '${root}'`);
  return full;
}
