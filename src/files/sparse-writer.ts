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
 * The caller owns the file handle; `finish()` waits for every write (and
 * reports the first failure), `settle()` waits without reporting (use it on
 * the failure path before closing the handle).
 */
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

export function createSparseWriter(fh: FileHandle, opts: SparseWriterOptions = {}): SparseWriter {
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
  const inFlight = new Set<Promise<void>>();
  /** The writes among inFlight (not the syncs). */
  const writes = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  let unsynced = 0;
  let syncing: Promise<void> | undefined;

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
    unsynced += bytes;
    if (unsynced >= syncEvery && !syncing && !failure) {
      unsynced = 0;
      const s = fh.datasync().finally(() => (syncing = undefined));
      syncing = s;
      track(s);
    }
  }

  const flushRun = () => {
    if (runBytes === 0) return;
    pendingBytes += runBytes;
    const w: Promise<void> = writeRun(run, runStart, runBytes).finally(() => writes.delete(w));
    writes.add(w);
    track(w);
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
      if (isZeroRange(chunk, 0, len)) {
        flushRun();
      } else {
        let o = 0;
        while (o < len) {
          // The piece up to the next block boundary in file offsets.
          const at = position + o;
          const end = Math.min(len, o + (block - (at & (block - 1))));
          if (isZeroRange(chunk, o, end)) flushRun();
          else {
            // Gather the following data pieces too: one slice per run in the chunk.
            let e = end;
            while (e < len) {
              const next = Math.min(len, e + block);
              if (isZeroRange(chunk, e, next)) break;
              e = next;
            }
            addData(chunk, o, e, at);
            o = e;
            continue;
          }
          o = end;
        }
      }
      position += len;
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
      await Promise.allSettled([...writes]);
      if (failure) throw failure.error;
    },
    async finish(): Promise<void> {
      if (!failure) flushRun();
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      if (failure) throw failure.error;
    },
    async settle(): Promise<void> {
      run = [];
      runBytes = 0;
      while (inFlight.size > 0) await Promise.all([...inFlight]);
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
