/**
 * A small pool of persistent threads (copy-thread.ts) that copy files'
 * data regions in the kernel for sparseCopy (files.ts), one job per thread
 * at a time.
 *
 * Why threads that loop: through koffi's `async` form every
 * copy_file_range is a hand-off to the libuv pool and back (~30-40 us); for
 * 1 GiB in 1 MiB regions that made sparseCopy 1.15-1.19x `cp`. A thread
 * that walks the regions and calls copy_file_range synchronously wakes the
 * event loop only for progress and its answer.
 *
 * What it guarantees:
 * - A job's promise settles only after the thread has finished with the
 *   job's descriptors (its final message, or its exit): the caller may then
 *   close them, never while a copy on them may still run.
 * - Abort is a shared flag (Atomics) the thread reads before every
 *   copy_file_range call; it then answers `aborted` with where it stopped.
 * - Progress messages carry the offset reached (increasing) and the bytes
 *   written since the last message; the final message the rest.
 * - A thread that dies (an uncaught error, terminate) rejects its job and
 *   leaves the pool; a thread that dies before it is ready (koffi cannot be
 *   loaded there) turns the pool off: its job ends `unavailable` (nothing
 *   was copied) and copies use the libuv path from then on.
 * - At most MAX_THREADS threads: a copy that finds none free uses the
 *   libuv path instead of waiting behind another copy.
 * - Threads are kept alive between copies (a fresh one takes ~50 ms to
 *   answer) and are unreferenced while idle, so they never keep the process
 *   alive; referenced while a job runs, so the process waits for the copy.
 */
import { Worker } from 'node:worker_threads';

/** One job: copy the data regions of [from, size) of fdIn to the same offsets of fdOut. */
export interface ThreadJob {
  fdIn: number;
  fdOut: number;
  from: number;
  size: number;
  /** The source's allocated bytes: a map reporting more data than that knows no holes. */
  allocated: number;
  /** Data bytes reported before `from`, and the slack (one block) allowed over `allocated`. */
  reported: number;
  block: number;
  /** Bytes per copy_file_range call. */
  chunk: number;
  /** A progress message at least every this many bytes copied. */
  progressEvery: number;
  /** errno codes that mean "the kernel cannot copy these files": the thread stops and says `nokernel`. */
  noKernelCopy: string[];
  /** Element 0 set non-zero: stop before the next call. */
  abort: Int32Array;
}

export type ThreadMessage =
  | { kind: 'ready' }
  | { kind: 'progress'; at: number; wrote: number }
  /** `at`: where the thread stopped: `size` (end), the offset the kernel refused (nokernel), the region the map cannot be trusted from (nomap), or the next call's offset (aborted). */
  | { kind: 'done'; how: 'end' | 'nokernel' | 'nomap' | 'aborted'; at: number; wrote: number; reported: number }
  | { kind: 'failed'; at: number; wrote: number; reported: number; code: string; errno: number; message: string };

/** How a job ended; `unavailable`: the thread died before it could start it (nothing was copied). */
export type JobEnd = Exclude<ThreadMessage, { kind: 'ready' } | { kind: 'progress' }> | { kind: 'unavailable' };

interface CopyThread {
  worker: Worker;
  ready: boolean;
  job: { onProgress: (at: number, wrote: number) => void; resolve: (m: JobEnd) => void; reject: (e: Error) => void } | undefined;
}

const MAX_THREADS = 2;
const threads: CopyThread[] = [];
let broken = false;
let jobs = 0;

/** Jobs handed to a thread so far (tests: a copy did reach a thread). */
export function copyThreadJobs(): number {
  return jobs;
}

/**
 * Runs `job` on an idle thread; undefined when none is free (all busy, or
 * the threads cannot run here): the caller then copies by other means.
 */
export function runOnCopyThread(job: ThreadJob, onProgress: (at: number, wrote: number) => void): Promise<JobEnd> | undefined {
  if (broken) return undefined;
  let t = threads.find((x) => x.job === undefined);
  if (!t) {
    if (threads.length >= MAX_THREADS) return undefined;
    try {
      t = start();
    } catch {
      broken = true; // no thread can start here (no worker_threads, the file missing): the libuv path
      return undefined;
    }
  }
  const thread = t;
  return new Promise<JobEnd>((resolve, reject) => {
    jobs++;
    thread.job = { onProgress, resolve, reject };
    thread.worker.ref();
    thread.worker.postMessage(job);
  });
}

/** Ends every thread (tests: a thread dying mid-copy). Resolves when they have exited. */
export async function terminateCopyThreads(): Promise<void> {
  await Promise.all(threads.map((t) => t.worker.terminate()));
}

function start(): CopyThread {
  // No inherited flags: the thread needs none, and some (--input-type, --eval's) stop it from starting.
  const worker = new Worker(new URL('./copy-thread.js', import.meta.url), { execArgv: [] });
  worker.unref();
  const t: CopyThread = { worker, ready: false, job: undefined };
  threads.push(t);
  let failure: Error | undefined;
  worker.on('message', (m: ThreadMessage) => {
    if (m.kind === 'ready') {
      t.ready = true;
      return;
    }
    const job = t.job;
    if (!job) return;
    if (m.kind === 'progress') {
      job.onProgress(m.at, m.wrote);
      return;
    }
    t.job = undefined;
    worker.unref();
    job.resolve(m);
  });
  worker.on('error', (e) => {
    failure = e;
  });
  worker.on('exit', (code) => {
    const i = threads.indexOf(t);
    if (i >= 0) threads.splice(i, 1);
    const job = t.job;
    t.job = undefined;
    if (!t.ready) {
      // It never started the job (its ready message comes before any answer): the caller copies itself.
      broken = true;
      job?.resolve({ kind: 'unavailable' });
      return;
    }
    // The thread has stopped: nothing copies on the job's descriptors any more.
    job?.reject(new Error(`the kernel copy thread ended (exit code ${code})${failure ? `: ${failure.message}` : ''} during a copy`));
  });
  return t;
}
