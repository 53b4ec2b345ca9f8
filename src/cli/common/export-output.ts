/**
 * Where `qvm-volume export` writes: a regular file made under a temporary
 * name and renamed into place once complete, or a stream (stdout, a FIFO, a
 * device) written in order. Apart from qvm-volume.ts so that its other
 * sub-commands do not load the file primitives (imported when exporting).
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { storageErrnoError } from '../../storage/errors.js';
import { declareFailpoint, failpoint } from '../../files/failpoint.js';
import { copyFileCow, fsyncDir, lstatOrNull, randomSuffix, unlinkIfExists, writeAll } from '../../files/files.js';
import { createSparseWriter } from '../../files/sparse-writer.js';
import type { Progress } from './progress.js';
import { CliError } from './tool.js';

const FP_EXPORT_BEFORE_RENAME = declareFailpoint('cli.export.before-rename');

/**
 * Where an export goes. A regular file (new, or replaced) is made under a
 * temporary name beside it and renamed over it only once complete and
 * fsynced: a failure or Ctrl-C removes the temporary file, a crash leaves the
 * old file whole (and at worst the temporary file). Anything else (stdout, a
 * FIFO, a device) is written in place, every byte, in order.
 */
export type ExportOutput =
  | { readonly kind: 'file'; readonly target: string; readonly temp: string }
  | { readonly kind: 'stream'; readonly sink: Writable; readonly owned: boolean };

/** How many symbolic links an output path may go through (the kernel's limit). */
const MAX_LINKS = 40;

function cannotWrite(dest: string, e: unknown): CliError {
  return fullOrFailing(dest, e) ?? new CliError(`cannot write '${dest}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
}

/** A destination that is full, over quota, read-only or failing, said as the daemon says it of a pool; null for other errors. */
export function fullOrFailing(dest: string, e: unknown): CliError | null {
  const mapped = storageErrnoError(`cannot write the export to ${dest}`, e, dest);
  return mapped && new CliError(mapped.message);
}

/** `dest` with its symbolic links followed, as opening it would (it may not exist). */
async function followLinks(dest: string): Promise<string> {
  let p = path.resolve(dest);
  for (let i = 0; i <= MAX_LINKS; i++) {
    const st = await lstatOrNull(p);
    if (!st?.isSymbolicLink()) return p;
    p = path.resolve(path.dirname(p), await fsp.readlink(p));
  }
  throw Object.assign(new Error('too many symbolic links'), { code: 'ELOOP' });
}

/**
 * A FIFO to write to, as a libuv pipe: writes wait in the event
 * loop, never in a worker thread that a reader which stopped reading would
 * hold forever (and that the exit after Ctrl-C would wait for). Opening waits
 * for a reader, as a blocking open does, but in steps that Ctrl-C stops.
 */
async function openPipe(dest: string, signal: AbortSignal): Promise<Writable> {
  for (let wait = 10; ; wait = Math.min(wait * 2, 200)) {
    signal.throwIfAborted();
    try {
      const fd = fs.openSync(dest, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      return new net.Socket({ fd, readable: false, writable: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e; // ENXIO: no reader yet
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}

/**
 * Checks that `dest` can be written, as opening it did (same errors), while
 * the export is asked for (before it, for a FIFO, whose reader may be long
 * in coming). A regular file is not touched here: a temporary name beside
 * it is tried and removed again.
 */
export async function openExportOutput(dest: string, signal: AbortSignal): Promise<ExportOutput> {
  if (dest === '-') return { kind: 'stream', sink: process.stdout, owned: false };
  try {
    const st = await fsp.stat(dest).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null; // a new file (maybe through a dangling link)
      throw e;
    });
    if (st?.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    if (st?.isFIFO()) return { kind: 'stream', sink: await openPipe(dest, signal), owned: true };
    if (st && !st.isFile()) {
      // A device: every byte in order (holes would leave its old data). A socket file fails here (ENXIO).
      const fh = await fsp.open(dest, fs.constants.O_WRONLY);
      return { kind: 'stream', sink: fh.createWriteStream(), owned: true };
    }
    const target = await followLinks(dest);
    if (st) await fsp.access(target, fs.constants.W_OK);
    const temp = path.join(path.dirname(target), `.${path.basename(target)}.tmp-${randomSuffix()}`);
    const probe = await fsp.open(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    try {
      await probe.close();
    } finally {
      await fsp.unlink(temp); // the copy makes it again (a reflink needs a new file)
    }
    return { kind: 'file', target, temp };
  } catch (e) {
    if (signal.aborted) throw e;
    throw cannotWrite(dest, e);
  }
}

/** Copies a regular file by reflink where the filesystem can, else sparse; then renames it into place. */
export async function exportToFile(src: string, out: { target: string; temp: string }, bar: Progress, signal: AbortSignal): Promise<void> {
  await intoPlace(out, signal, async () => {
    const st = await fsp.stat(src);
    if (st.isFile()) {
      const how = await copyFileCow(src, out.temp, { allowSparse: true, onProgress: (d) => bar.update(d), signal });
      if (how === 'reflink') bar.update(st.size);
    } else {
      // A pipe (a driver may hand out one): read it to its end, zero blocks left as holes.
      await withNewFile(out.temp, async (fh) => {
        const zero = Buffer.alloc(BLOCK);
        let at = 0;
        await readExport(src, bar, signal, async (b) => {
          if (!(b.length === BLOCK && b.equals(zero))) await writeAll(fh, b, at);
          at += b.length;
        });
        await fh.truncate(at);
      });
    }
  });
}

/** The data pieces of an export streamed by the daemon (what no piece covers is zeros, left as holes). */
export interface ExportPieces {
  readonly size: number;
  readonly pieces: AsyncIterable<{ readonly offset: number; readonly bytes: Buffer }>;
  /** When given: a function to call once the pieces got until now are written (their memory is then read into again). */
  readonly releaser?: () => () => void;
}

/** Bytes gathered before one write: big writes cost far less per byte than the socket's 64 KiB pieces. */
const GATHER = 4 << 20;
/** A background fdatasync starts every this many bytes written. */
const SYNC_EVERY = 64 << 20;

/**
 * Writes streamed pieces into a new sparse file of the export's size, then
 * renames it into place: through the sparse writer the imports use
 * (gathered writes running while the next pieces arrive, background syncs),
 * the gaps between pieces skipped.
 */
export async function exportPiecesToFile(data: ExportPieces, out: { target: string; temp: string }, bar: Progress, signal: AbortSignal): Promise<void> {
  await intoPlace(out, signal, async () => {
    await withNewFile(out.temp, async (fh) => {
      await fh.truncate(data.size);
      const w = createSparseWriter(fh, { maxWriteBytes: GATHER, syncEveryBytes: SYNC_EVERY });
      let released = 0;
      try {
        for await (const { offset, bytes } of data.pieces) {
          signal.throwIfAborted();
          w.skip(offset - w.position);
          // The daemon sends data runs only (its zero blocks left out): no second scan here.
          if (!w.pushData(bytes)) await w.drained();
          bar.update(w.position);
          if (data.releaser && w.position - released >= GATHER) {
            // Once what was pushed until now is written, its socket buffers are read into again (no fresh memory).
            released = w.position;
            w.flushed().then(data.releaser(), () => undefined);
          }
        }
        await w.finish();
      } finally {
        await w.settle(); // no write or sync may run when the file closes
      }
      bar.update(data.size);
    });
  });
}

/** Streamed pieces into a stream (stdout, a pipe, a device), every byte in order: the gaps as zeros. Pieces are released (`releaser`) as their writes complete. */
export async function exportPiecesToStream(data: ExportPieces, out: { sink: Writable; owned: boolean }, bar: Progress, signal: AbortSignal): Promise<void> {
  const { sink } = out;
  const zero = Buffer.alloc(GATHER);
  let at = 0;
  let released = 0;
  const put = async (b: Buffer, written?: () => void) => {
    signal.throwIfAborted();
    const cb = written && ((err?: Error | null) => err || written());
    if (!sink.write(b, cb)) await once(sink, 'drain'); // rejects on 'error' (EPIPE: the reader left)
  };
  const zerosTo = async (end: number) => {
    while (at < end) {
      const n = Math.min(zero.length, end - at);
      await put(n === zero.length ? zero : zero.subarray(0, n));
      at += n;
      bar.update(at);
    }
  };
  for await (const { offset, bytes } of data.pieces) {
    await zerosTo(offset);
    // A stream's writes complete in order: once this one is done, so are the pieces got until now,
    // and their socket buffers are read into again (no fresh memory).
    let written: (() => void) | undefined;
    if (data.releaser && at + bytes.length - released >= GATHER) {
      released = at + bytes.length;
      written = data.releaser();
    }
    await put(bytes, written);
    at += bytes.length;
    bar.update(at);
  }
  await zerosTo(data.size);
  if (out.owned) await finished(sink.end());
}

/** Makes out.temp through `fill`, then renames it over the target and syncs the directory; a failure leaves no temporary file. */
async function intoPlace(out: { target: string; temp: string }, signal: AbortSignal, fill: () => Promise<void>): Promise<void> {
  signal.throwIfAborted(); // interrupted before the copy began: make nothing
  try {
    await fill();
    signal.throwIfAborted();
    failpoint(FP_EXPORT_BEFORE_RENAME);
    await fsp.rename(out.temp, out.target);
  } catch (e) {
    await unlinkIfExists(out.temp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(path.dirname(out.target));
}

/** Creates `file` (new, no symbolic link followed), runs `fill` on it, then fsyncs and closes it. */
async function withNewFile(file: string, fill: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  const fh = await fsp.open(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    await fill(fh);
    await fh.sync();
  } finally {
    await fh.close();
  }
}


const BLOCK = 64 * 1024;

/** Reads `src` to its end in 64 KiB pieces, handing each to `write`. */
async function readExport(src: string, bar: Progress, signal: AbortSignal, write: (b: Buffer) => Promise<void>): Promise<void> {
  let done = 0;
  for await (const c of fs.createReadStream(src, { highWaterMark: BLOCK, signal })) {
    await write(c as Buffer);
    done += (c as Buffer).length;
    bar.update(done);
  }
}

/** Every byte of `src`, in order, into a stream (stdout, a pipe, a device); ends the stream if it is ours. */
export async function exportToStream(src: string, out: { sink: Writable; owned: boolean }, bar: Progress, signal: AbortSignal): Promise<void> {
  const { sink } = out;
  await readExport(src, bar, signal, async (b) => {
    if (!sink.write(b)) await once(sink, 'drain'); // rejects on 'error' (EPIPE: the reader left)
  });
  if (out.owned) await finished(sink.end());
}

