/**
 * The thread behind copy-threads.ts: walks a file's data regions (lseek
 * SEEK_DATA/SEEK_HOLE) and copies each with synchronous copy_file_range
 * calls, in a loop, one job at a time. A job is one message in, a few
 * progress messages and one final message out: the event loop is not woken
 * per region, which is what made a copy of many small regions cost more
 * than `cp` (docs/benchmarks.md, "Issue 16 item 1").
 *
 * The descriptors are the main thread's (threads share them); it keeps them
 * open until this thread's final message for the job has arrived.
 */
import { getSystemErrorName } from 'node:util';
import { parentPort } from 'node:worker_threads';
import koffi from 'koffi';
import type { ThreadJob, ThreadMessage } from './copy-threads.js';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

const libc = koffi.load(null);
const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as (fd: number, offset: number, whence: number) => number;
const copyFileRange = libc.func(
  'int64_t copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned int flags)',
) as (fdIn: number, offIn: BigInt64Array, fdOut: number, offOut: BigInt64Array, len: number, flags: number) => number;
const offIn = new BigInt64Array(1);
const offOut = new BigInt64Array(1);

function post(m: ThreadMessage): void {
  parentPort!.postMessage(m);
}

function run(job: ThreadJob): ThreadMessage {
  const { fdIn, fdOut, size, allocated, chunk, progressEvery, noKernelCopy, abort } = job;
  let reported = job.reported;
  let unreported = 0;
  let at = job.from;
  const stop = (how: 'end' | 'nokernel' | 'nomap' | 'aborted', where: number): ThreadMessage =>
    ({ kind: 'done', how, at: where, wrote: unreported, reported });
  while (at < size) {
    let start = lseek(fdIn, at, SEEK_DATA);
    let end: number;
    if (start < 0) {
      if (koffi.errno() === ENXIO) break; // only a hole is left
      start = at; // the filesystem cannot say: all of the rest may be data
      end = size;
    } else {
      if (start >= size) break;
      end = lseek(fdIn, start, SEEK_HOLE);
      // A failure, a hole past the size (the file grew) or no data where data was just found: the rest may be data.
      if (end <= start || end > size) end = size;
    }
    // A map reporting more data than the file has blocks knows no holes: the main thread reads from here.
    if (reported + (end - start) > allocated + job.block) return stop('nomap', start);
    reported += end - start;
    for (let pos = start; pos < end; ) {
      if (Atomics.load(abort, 0) !== 0) return stop('aborted', pos);
      offIn[0] = BigInt(pos);
      offOut[0] = BigInt(pos);
      const n = copyFileRange(fdIn, offIn, fdOut, offOut, Math.min(chunk, end - pos), 0);
      if (n < 0) {
        const errno = koffi.errno();
        const code = errno > 0 ? getSystemErrorName(-errno) : 'UNKNOWN';
        if (noKernelCopy.includes(code)) return stop('nokernel', pos);
        return { kind: 'failed', at: pos, wrote: unreported, reported, code, errno: -errno, message: `copy_file_range at offset ${pos}: ${code}` };
      }
      if (n === 0) break; // the file shrank meanwhile: the rest reads as zeros
      pos += n;
      unreported += n;
      if (unreported >= progressEvery) {
        post({ kind: 'progress', at: pos, wrote: unreported });
        unreported = 0;
      }
    }
    at = end;
  }
  return stop('end', size);
}

parentPort!.on('message', (job: ThreadJob) => {
  let answer: ThreadMessage;
  try {
    answer = run(job);
  } catch (e) {
    answer = { kind: 'failed', at: job.from, wrote: 0, reported: job.reported, code: 'UNKNOWN', errno: 0, message: `copy thread: ${(e as Error).message}` };
  }
  post(answer);
});
post({ kind: 'ready' });
