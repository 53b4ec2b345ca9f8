/**
 * The two system calls that make a copy cost the data, not the size:
 *
 * - lseek(2) with SEEK_DATA / SEEK_HOLE (Linux 3.1+) says where a file's data
 *   is. ext4, XFS, btrfs and tmpfs answer from their extent maps; a
 *   filesystem without its own answer reports the whole file as data, which
 *   is still correct (sparse-copy.ts then notices and looks for zeros).
 * - copy_file_range(2) copies a range between two files inside the kernel:
 *   no user-space buffer, no trip through the event loop per chunk; ext4
 *   copies the pages, XFS and btrfs may share the extents.
 *
 * Node has neither, so libc's are called through the koffi FFI (already a
 * pinned runtime dependency for SO_PEERCRED, src/admin/peer.ts), loaded on
 * first use. lseek is a few microseconds and called synchronously;
 * copy_file_range runs in koffi's worker threads (its `async` form), so a
 * long copy never blocks the event loop.
 *
 * Anything missing (not Linux, not a 64-bit off_t, koffi or its prebuilt
 * binary absent) leaves `fileExtents()` a reason instead; the copy then reads
 * and writes in JavaScript as before: slower, never wrong.
 */
import { getSystemErrorName } from 'node:util';

export type DataRegion = readonly [start: number, end: number];

export interface FileExtents {
  /**
   * The data regions of the open file `fd` from `from` up to `size` (the size
   * the caller stat'ed), in order, each [start, end) with start < end; what
   * lies between them reads as zeros. Computed lazily, one region per step.
   */
  dataRegions(fd: number, size: number, from?: number): Generator<DataRegion>;
  /**
   * copy_file_range of up to `length` bytes from `offset` of `fdIn` to the
   * same offset of `fdOut`, in a worker thread. Resolves with the bytes
   * copied (0 at the end of the source); rejects with an error carrying the
   * errno's `code` (for instance EXDEV, EOPNOTSUPP, ENOSPC), or `code`
   * 'UNKNOWN' when the errno was lost.
   */
  copyRange(fdIn: number, fdOut: number, offset: number, length: number): Promise<number>;
  /** The file offset of `fd` (lseek SEEK_CUR); throws with the errno's code on failure (a pipe: ESPIPE). */
  position(fd: number): number;
  /** Sets the file offset of `fd` (lseek SEEK_SET), which reads from the current offset then use. */
  seek(fd: number, offset: number): void;
}

type Koffi = Pick<typeof import('koffi'), 'load' | 'errno' | 'sizeof'>;
type Lseek = (fd: number, offset: number, whence: number) => number;
type CopyFileRange = {
  async: (
    fdIn: number, offIn: BigInt64Array, fdOut: number, offOut: BigInt64Array, len: number, flags: number,
    done: (err: unknown, copied: number) => void,
  ) => void;
};

const SEEK_SET = 0;
const SEEK_CUR = 1;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** lseek's SEEK_DATA at or past the last data: the rest is a hole. */
const ENXIO = 6;

let loaded: Promise<FileExtents | string> | undefined;

/** The two calls, or why they cannot be had (the caller then reads everything). */
export function fileExtents(): Promise<FileExtents | string> {
  loaded ??= load();
  return loaded;
}

async function load(): Promise<FileExtents | string> {
  if (process.platform !== 'linux') return `SEEK_DATA/SEEK_HOLE and copy_file_range are used on Linux only, not ${process.platform}`;
  let koffi: Koffi;
  try {
    koffi = await import('koffi');
  } catch (e) {
    return `cannot load koffi: ${(e as Error).message}`;
  }
  try {
    // off_t and ssize_t are 64 bits where long is (LP64); a 32-bit build would need lseek64.
    if (koffi.sizeof('long') !== 8) return 'lseek and copy_file_range are called on 64-bit systems only';
    // The process's own symbols (dlopen(NULL)) include libc's, glibc or musl alike.
    const libc = koffi.load(null);
    const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as Lseek;
    const copyFileRange = libc.func(
      'int64_t copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned int flags)',
    ) as unknown as CopyFileRange;
    return {
      dataRegions: (fd, size, from = 0) => regions(koffi, lseek, fd, size, from),
      copyRange: (fdIn, fdOut, offset, length) => copyRange(koffi, copyFileRange, fdIn, fdOut, offset, length),
      position: (fd) => checkedSeek(koffi, lseek, fd, 0, SEEK_CUR),
      seek: (fd, offset) => void checkedSeek(koffi, lseek, fd, offset, SEEK_SET),
    };
  } catch (e) {
    return `cannot find lseek or copy_file_range in libc through koffi: ${(e as Error).message}`;
  }
}

function checkedSeek(koffi: Koffi, lseek: Lseek, fd: number, offset: number, whence: number): number {
  const r = lseek(fd, offset, whence);
  if (r >= 0) return r;
  const errno = koffi.errno();
  const code = errno > 0 ? getSystemErrorName(-errno) : 'UNKNOWN';
  throw Object.assign(new Error(`lseek of descriptor ${fd} to ${offset}: ${code}`), { code, errno: -errno, syscall: 'lseek' });
}

/** Note: lseek with SEEK_DATA and SEEK_HOLE moves the descriptor's offset; callers reading from the current offset seek first. */
function* regions(koffi: Koffi, lseek: Lseek, fd: number, size: number, from: number): Generator<DataRegion> {
  for (let at = from; at < size; ) {
    const start = lseek(fd, at, SEEK_DATA);
    if (start < 0) {
      if (koffi.errno() === ENXIO) return; // only a hole is left
      yield [at, size]; // the filesystem cannot say: all of the rest may be data
      return;
    }
    if (start >= size) return;
    let end = lseek(fd, start, SEEK_HOLE);
    // A failure, a hole past the size (the file grew meanwhile) or no data
    // where data was just found (it changed meanwhile): the rest may be data.
    if (end <= start || end > size) end = size;
    yield [start, end];
    at = end;
  }
}

function copyRange(koffi: Koffi, fn: CopyFileRange, fdIn: number, fdOut: number, offset: number, length: number): Promise<number> {
  // The kernel reads and advances these; they stay referenced until the call returns.
  const offIn = new BigInt64Array([BigInt(offset)]);
  const offOut = new BigInt64Array([BigInt(offset)]);
  return new Promise((resolve, reject) => {
    fn.async(fdIn, offIn, fdOut, offOut, length, 0, (err, copied) => {
      if (err) reject(err instanceof Error ? err : new Error(`copy_file_range at offset ${offset} failed in koffi`));
      else if (copied >= 0) resolve(copied);
      else {
        // koffi hands the worker's errno back with the result; 0 means it was lost.
        const errno = koffi.errno();
        const code = errno > 0 ? getSystemErrorName(-errno) : 'UNKNOWN';
        reject(Object.assign(new Error(`copy_file_range at offset ${offset}: ${code}`), { code, errno: -errno, syscall: 'copy_file_range' }));
      }
      void offIn;
      void offOut;
    });
  });
}
