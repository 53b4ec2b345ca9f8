/**
 * Writes a stream of bytes, in order from offset 0, into an open file that
 * already reads as zeros (a fresh sparse file), leaving every all-zero block
 * unwritten: the copy keeps its holes. Made for streamed imports, where the
 * data arrives in socket-sized chunks at an offset that need not be aligned.
 *
 * - No copies: the chunks themselves (or slices of them) are written;
 *   neighbouring non-zero pieces are gathered into one `writev` of about
 *   `maxWriteBytes`.
 * - Writes run in the background, several at a time, while the caller keeps
 *   receiving; `push` returns false once `maxPendingBytes` are in flight and
 *   the caller waits for `drained()` before pushing more (bounded memory).
 * - Zero checks compare against a static zero buffer (memcmp in native code):
 *   first the whole chunk, then block by block only when it holds data.
 * - `syncEveryBytes` (optional) starts an fdatasync in the background after
 *   that many bytes were written since the last one began, so the disk
 *   writes overlap with receiving and the final fsync has less left to do.
 *
 * The sink need not be a file (SparseSink): a volume's import writer takes
 * the same writes. The caller owns the file handle; `finish()` waits for every write (and
 * reports the first failure), `settle()` waits without reporting (use it on
 * the failure path before closing the handle).
 */
import { read as fsRead } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export interface SparseWriterOptions {
  /** Zero-detection granularity in file offsets (a power of two); default 4 KiB. */
  readonly blockBytes?: number;
  /** A run of data is written once it has this many bytes (a chunk is never split); default 1 MiB. */
  readonly maxWriteBytes?: number;
  /** Bytes written or queued after which push() asks the caller to wait; default 16 MiB. */
  readonly maxPendingBytes?: number;
  /** Start a background fdatasync every this many written bytes; default never. */
  readonly syncEveryBytes?: number;
}

export interface SparseWriter {
  /** Bytes taken so far (written, queued or skipped as zeros): the offset of the next byte. */
  readonly position: number;
  /** Bytes actually handed to the file (non-zero blocks). */
  readonly dataBytes: number;
  /**
   * Takes the next bytes of the stream (kept by reference until written: the
   * caller must not reuse the buffer). False when the caller should wait for
   * drained(). Throws the first write failure, if one happened.
   */
  push(chunk: Buffer): boolean;
  /**
   * As push(), for bytes the caller knows hold data (its source already left
   * its zero blocks out, as an rbd export stream does): written as they are,
   * without the zero scan.
   */
  pushData(chunk: Buffer): boolean;
  /**
   * Moves past `bytes` the caller knows read as zeros (a hole of the source)
   * without looking at them: nothing is written for them.
   */
  skip(bytes: number): void;
  /** Resolves once fewer than half of maxPendingBytes are in flight; rejects on a write failure. */
  drained(): Promise<void>;
  /**
   * Starts writing what is gathered and resolves once every byte pushed so
   * far is written (background syncs not waited for): the caller may then
   * reuse those buffers. Rejects with the first failure.
   */
  flushed(): Promise<void>;
  /** Writes what is gathered, waits for every write and sync; rejects with the first failure. */
  finish(): Promise<void>;
  /** Waits for every write and sync started so far, ignoring failures. */
  settle(): Promise<void>;
}

/** Compared against; chunks longer than this are checked window by window. */
const ZERO = Buffer.alloc(256 * 1024);

/** True when `b[start, end)` holds only zero bytes. */
export function isZeroRange(b: Buffer, start: number, end: number): boolean {
  for (let o = start; o < end; o += ZERO.length) {
    const e = Math.min(end, o + ZERO.length);
    if (b.compare(ZERO, 0, e - o, o, e) !== 0) return false;
  }
  return true;
}

/**
 * Calls `onRun(start, end)` for each run of data in `b[start, end)`, whose
 * first byte is at file offset `at`: the blocks (of `block` bytes, aligned in
 * file offsets) holding a non-zero byte, neighbours joined. Cheap on either
 * kind of content: a 64 KiB window of zeros costs one memcmp, and a block
 * of data stops its memcmp at its first non-zero byte.
 */
export function forEachDataRun(b: Buffer, start: number, end: number, at: number, block: number, onRun: (start: number, end: number) => void): void {
  const win = Math.max(block, 64 * 1024);
  let runStart = -1;
  let o = start;
  while (o < end) {
    const f = at + (o - start);
    const wEnd = Math.min(end, o + (win - (f % win)));
    if (b.compare(ZERO, 0, wEnd - o, o, wEnd) === 0) {
      if (runStart >= 0) onRun(runStart, o);
      runStart = -1;
      o = wEnd;
      continue;
    }
    while (o < wEnd) {
      const bEnd = Math.min(wEnd, o + (block - ((at + (o - start)) % block)));
      if (b.compare(ZERO, 0, bEnd - o, o, bEnd) === 0) {
        if (runStart >= 0) onRun(runStart, o);
        runStart = -1;
      } else if (runStart < 0) runStart = o;
      o = bEnd;
    }
  }
  if (runStart >= 0) onRun(runStart, end);
}

/** Where copyToSparse reads: like read(2), 0 at the end. */
export interface ByteSource {
  read(buf: Buffer, offset: number, length: number): Promise<number>;
}

/** A file descriptor read from its current offset (a regular file, a pipe in blocking mode, a device). */
export function fdSource(fd: number): ByteSource {
  return {
    read: (buf, offset, length) =>
      new Promise((resolve, reject) => fsRead(fd, buf, offset, length, null, (e, n) => (e ? reject(e) : resolve(n)))),
  };
}

export interface CopyToSparseOptions {
  /** Bytes already taken from the source (after a size line): they come first. */
  readonly first?: Buffer;
  /** Zero-detection granularity in file offsets (a power of two); default 4 KiB. */
  readonly blockBytes?: number;
  /** Bytes read at a time, into each of two buffers allocated once; default 4 MiB (or the length of `buffers`). */
  readonly readBytes?: number;
  /** The two buffers to read into in turn, kept by a caller that copies many ranges; default two made for this call. */
  readonly buffers?: readonly [Buffer, Buffer];
  /** File offset in `dst` of the first byte (default 0): blocks are aligned in file offsets. */
  readonly at?: number;
  /** Stops the copy (rejects with its reason) before the next read is written. */
  readonly signal?: AbortSignal;
  /** Called with the bytes taken so far once each read is handed to the writes. */
  readonly onProgress?: (copied: number) => void;
  /** Told of every byte written (background fdatasyncs, see backgroundSync); the caller waits for it. */
  readonly sync?: BackgroundSync;
  /** Read one byte more at `size` to tell whether the source was longer (`more`); default true. */
  readonly probeEnd?: boolean;
}

export interface CopyToSparseResult {
  /** Bytes taken from the source (at most `size`). */
  readonly copied: number;
  /** Bytes written (the blocks that hold data). */
  readonly dataBytes: number;
  /** The source had more than `size` bytes. */
  readonly more: boolean;
}

/**
 * Background fdatasyncs of a file while it is written: one starts once
 * `everyBytes` were written since the last began (never two at once), so
 * the disk writes overlap with the copy and the final fsync has little left.
 * The first failure is kept and thrown by done().
 */
export interface BackgroundSync {
  /** `bytes` more were written. */
  wrote(bytes: number): void;
  /** Waits for the sync running, if any, ignoring its failure (the failure path, before closing the file). */
  settle(): Promise<void>;
  /** Waits for the sync running, if any; throws the first failure. */
  done(): Promise<void>;
}

/**
 * What createSparseWriter writes to: an open file (a FileHandle is one) or
 * any other sink of positioned writes, e.g. a volume's import writer
 * (src/storage/import-writer.ts) over a Ceph image.
 */
export interface SparseSink {
  /** Writes the concatenation of `bufs` at byte offset `at`; may write less (the rest is written again). */
  writev(bufs: Buffer[], at: number): Promise<{ bytesWritten: number }>;
  /** Makes what was written durable (fdatasync). */
  datasync(): Promise<void>;
}

/** `onFailure`: told of the first failure as it happens (a writer that stops at once); done() still throws it. */
export function backgroundSync(fh: Pick<SparseSink, 'datasync'>, everyBytes: number, onFailure?: (error: unknown) => void): BackgroundSync {
  let unsynced = 0;
  let running: Promise<void> | undefined;
  let failure: { error: unknown } | undefined;
  const settle = async () => {
    while (running) await running;
  };
  return {
    wrote(bytes) {
      unsynced += bytes;
      if (unsynced < everyBytes || running || failure) return;
      unsynced = 0;
      running = fh
        .datasync()
        .catch((e: unknown) => {
          if (failure) return;
          failure = { error: e };
          onFailure?.(e);
        })
        .finally(() => (running = undefined));
    },
    settle,
    async done() {
      await settle();
      if (failure) throw failure.error;
    },
  };
}

/**
 * Copies up to `size` bytes of `src` into `dst` from offset `at` (default
 * 0), where `dst` already reads as zeros (a fresh sparse file, or the range
 * past a truncate), writing only the blocks that hold data: the import of a
 * file or pipe of this host, and the copy of files where the kernel cannot
 * copy (sparseCopy's fallback). Reads of `readBytes` into two buffers taken
 * in turns, so the next read runs while the data of the last one is written
 * (pwrite, several at once); no allocation per chunk; syncs only through
 * `sync`: the caller syncs at the end. Stops at `size` bytes or at the
 * source's end, whichever comes first, then (unless `probeEnd` is false)
 * reads one more byte to tell whether the source was longer (`more`). Every
 * read and write has settled when it returns or throws: the caller may
 * close both.
 */
export async function copyToSparse(src: ByteSource, dst: FileHandle, size: number, opts: CopyToSparseOptions = {}): Promise<CopyToSparseResult> {
  const block = opts.blockBytes ?? 4096;
  if (!(block > 0 && (block & (block - 1)) === 0)) throw new RangeError(`blockBytes must be a power of two, not ${block}`);
  const bufs = opts.buffers ?? [Buffer.allocUnsafeSlow(Math.max(block, opts.readBytes ?? 4 << 20)), Buffer.allocUnsafeSlow(Math.max(block, opts.readBytes ?? 4 << 20))];
  const readBytes = Math.min(bufs[0].length, bufs[1].length);
  if (readBytes < block) throw new RangeError(`read buffers of ${readBytes} bytes are shorter than a block (${block})`);
  const base = opts.at ?? 0;
  let pos = 0;
  let dataBytes = 0;
  let more = false;

  const writeAt = async (b: Buffer, start: number, end: number, at: number): Promise<void> => {
    const bytes = end - start;
    while (start < end) {
      const { bytesWritten } = await dst.write(b, start, end - start, at);
      if (bytesWritten <= 0) throw new Error(`write at offset ${at} made no progress`);
      start += bytesWritten;
      at += bytesWritten;
    }
    opts.sync?.wrote(bytes);
  };
  /** Writes the data of `b[start, end)` (file offset `at`); resolves once all of it is written. */
  const writeData = (b: Buffer, start: number, end: number, at: number): Promise<unknown> => {
    const writes: Promise<void>[] = [];
    forEachDataRun(b, start, end, at, block, (s, e) => {
      dataBytes += e - s;
      writes.push(writeAt(b, s, e, at + (s - start)));
    });
    return writes.length === 1 ? writes[0]! : Promise.all(writes);
  };
  /** Reads into `b` until `want` bytes or the source's end. */
  const fill = async (b: Buffer, want: number): Promise<number> => {
    let n = 0;
    while (n < want) {
      const got = await src.read(b, n, want - n);
      if (got <= 0) break;
      n += got;
    }
    return n;
  };

  let writing: Promise<unknown> = Promise.resolve();
  let reading: Promise<number> = Promise.resolve(0);
  try {
    const first = opts.first ?? Buffer.alloc(0);
    if (first.length > size) more = true;
    const head = first.subarray(0, Math.min(size, first.length));
    if (head.length) {
      writing = writeData(head, 0, head.length, base);
      pos = head.length;
    }
    let i = 0;
    reading = pos < size ? fill(bufs[i], Math.min(readBytes, size - pos)) : Promise.resolve(0);
    for (;;) {
      const n = await reading;
      if (n === 0) break;
      opts.signal?.throwIfAborted();
      const cur = bufs[i];
      const at = pos;
      pos += n;
      // The other buffer is free once its writes are done; then it takes the next read.
      await writing;
      // A short fill: the source has ended.
      const ended = n < Math.min(readBytes, size - at);
      i ^= 1;
      reading = pos < size && !ended ? fill(bufs[i], Math.min(readBytes, size - pos)) : Promise.resolve(0);
      writing = writeData(cur, 0, n, base + at);
      opts.onProgress?.(pos);
    }
    await writing;
    if (!more && pos === size && opts.probeEnd !== false) more = (await fill(bufs[0], 1)) > 0;
    return { copied: pos, dataBytes, more };
  } finally {
    // On a failure, nothing may still use the buffers or the descriptors once this returns.
    await Promise.allSettled([reading, writing]);
  }
}

export function createSparseWriter(fh: SparseSink, opts: SparseWriterOptions = {}): SparseWriter {
  const block = opts.blockBytes ?? 4096;
  if (!(block > 0 && (block & (block - 1)) === 0)) throw new RangeError(`blockBytes must be a power of two, not ${block}`);
  const maxWrite = Math.max(block, opts.maxWriteBytes ?? 1 << 20);
  const maxPending = Math.max(maxWrite, opts.maxPendingBytes ?? 16 << 20);
  const syncEvery = opts.syncEveryBytes ?? Infinity;

  let position = 0;
  let dataBytes = 0;
  /** The run of non-zero bytes being gathered: it starts at runStart and is runBytes long. */
  let run: Buffer[] = [];
  let runStart = 0;
  let runBytes = 0;
  let pendingBytes = 0;
  /** The writes running (each settles without rejecting: a failure goes to `failure`). */
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];

  const wake = () => {
    if (!failure && pendingBytes >= maxPending / 2) return;
    const ws = waiters;
    waiters = [];
    for (const w of ws) {
      if (failure) w.reject(failure.error);
      else w.resolve();
    }
  };
  const fail = (e: unknown) => {
    failure ??= { error: e };
    wake();
  };
  const track = (p: Promise<void>) => {
    const t: Promise<void> = p.catch(fail).finally(() => inFlight.delete(t));
    inFlight.add(t);
  };
  // The background fdatasyncs: one mechanism with copyToSparse's callers; a failed one stops the writer as a failed write does.
  const syncs = backgroundSync(fh, syncEvery, fail);

  async function writeRun(bufs: Buffer[], at: number, bytes: number): Promise<void> {
    try {
      let done = 0;
      while (done < bytes) {
        const { bytesWritten } = await fh.writev(bufs, at + done);
        if (bytesWritten <= 0) throw new Error(`write at offset ${at + done} made no progress`);
        done += bytesWritten;
        if (done < bytes) bufs = dropFront(bufs, bytesWritten);
      }
    } catch (e) {
      failure ??= { error: e }; // before the waiters wake: they must see it
      throw e;
    } finally {
      pendingBytes -= bytes;
      wake();
    }
    dataBytes += bytes;
    if (!failure) syncs.wrote(bytes);
  }

  const flushRun = () => {
    if (runBytes === 0) return;
    pendingBytes += runBytes;
    track(writeRun(run, runStart, runBytes));
    run = [];
    runBytes = 0;
  };

  /** Adds `b[start, end)`, which holds data, at file offset `at`. */
  const addData = (b: Buffer, start: number, end: number, at: number) => {
    if (runBytes > 0 && runStart + runBytes !== at) flushRun();
    if (runBytes === 0) runStart = at;
    const last = run.length > 0 ? run[run.length - 1]! : undefined;
    // Extend the last slice when this piece follows it in the same memory.
    if (last && last.buffer === b.buffer && last.byteOffset + last.length === b.byteOffset + start) {
      run[run.length - 1] = Buffer.from(b.buffer, last.byteOffset, last.length + end - start);
    } else run.push(b.subarray(start, end));
    runBytes += end - start;
    if (runBytes >= maxWrite) flushRun();
  };

  return {
    get position() {
      return position;
    },
    get dataBytes() {
      return dataBytes;
    },
    push(chunk: Buffer): boolean {
      if (failure) throw failure.error;
      const len = chunk.length;
      if (len === 0) return pendingBytes < maxPending;
      // The data runs of the chunk (the one zero scan, as copyToSparse's); a zero block ends the run gathered.
      let tail = 0;
      forEachDataRun(chunk, 0, len, position, block, (s, e) => {
        addData(chunk, s, e, position + s);
        tail = e;
      });
      if (tail < len) flushRun();
      position += len;
      return pendingBytes < maxPending;
    },
    pushData(chunk: Buffer): boolean {
      if (failure) throw failure.error;
      if (chunk.length > 0) addData(chunk, 0, chunk.length, position);
      position += chunk.length;
      return pendingBytes < maxPending;
    },
    skip(bytes: number): void {
      if (failure) throw failure.error;
      if (!(Number.isSafeInteger(bytes) && bytes >= 0)) throw new RangeError(`cannot skip ${bytes} bytes`);
      if (bytes === 0) return;
      flushRun();
      position += bytes;
    },
    drained(): Promise<void> {
      if (failure) return Promise.reject(failure.error);
      if (pendingBytes < maxPending / 2) return Promise.resolve();
      return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
    },
    async flushed(): Promise<void> {
      if (!failure) flushRun();
      await Promise.all([...inFlight]);
      if (failure) throw failure.error;
    },
    async finish(): Promise<void> {
      if (!failure) flushRun();
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      await syncs.settle();
      if (failure) throw failure.error;
    },
    async settle(): Promise<void> {
      run = [];
      runBytes = 0;
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      await syncs.settle();
    },
  };
}

/** `bufs` without its first `n` bytes. */
function dropFront(bufs: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n > 0 ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}
