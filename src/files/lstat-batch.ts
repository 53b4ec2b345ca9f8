/**
 * lstat for the daemon's most frequent call (admin.vm.volume.Info reads its
 * image's lstat at each call): the paths asked for during one turn of the
 * event loop are read together, by one thread, in one batch.
 *
 * Why: through the libuv worker pool every lstat is a hand-off to a worker
 * and back (futex wake-ups, an eventfd write and read); on the 2-vCPU VM of
 * docs/benchmarks.md that hand-off cost more CPU than the rest of an Info
 * call. One batch per turn shares one hand-off among every call of that
 * turn. lstatSync on the event loop would cost less still, but a slow or
 * hung filesystem would then stop every call (STYLE.md); here it stops this
 * thread's batches only.
 *
 * Freshness: a batch is sent when the turn in which its first path was
 * asked for ends (setImmediate), and never joins a batch already sent, so
 * every answer was read after its caller asked. Callers asking for the same
 * path in one turn share one read. Nothing is kept after the answer.
 */
import { Worker } from 'node:worker_threads';
import { lstatOrNull } from './files.js';

/** The lstat fields callers use; numbers as fs.lstat gives them. */
export interface LstatFields {
  readonly dev: number;
  readonly ino: number;
  readonly mode: number;
  readonly size: number;
  readonly blocks: number;
}

/** What the thread answers per path: the fields, null when missing (ENOENT), or the error. */
export type LstatAnswer = [dev: number, ino: number, mode: number, size: number, blocks: number] | null | { code: string; errno: number; message: string };

interface Waiter {
  resolve(st: LstatFields | null): void;
  reject(err: Error): void;
}

/** Paths asked for in this turn, each with its callers; sent at the end of the turn. */
let asked = new Map<string, Waiter[]>();
let scheduled = false;
/** The batch the thread is reading (at most one). */
let inFlight: [string, Waiter[]][] | undefined;
let thread: Worker | undefined;
/** Set when the thread failed: every read then goes through fs.lstat. */
let broken = false;
let reads = 0;
let batches = 0;

/**
 * The lstat of `p`, read after this call (symlinks not followed), null when
 * nothing is there (ENOENT); any other error is thrown, with its code.
 */
export function lstatInBatch(p: string): Promise<LstatFields | null> {
  return new Promise((resolve, reject) => ask(p, { resolve, reject }));
}

/**
 * The lstat of each of `paths`, in order, read in the same batch (as
 * lstatInBatch each): one promise for all, the first error rejects it.
 */
export function lstatEachInBatch(paths: readonly string[]): Promise<(LstatFields | null)[]> {
  return new Promise((resolve, reject) => {
    const gathering = new Gathering(paths.length, resolve, reject);
    for (let i = 0; i < paths.length; i++) ask(paths[i]!, new Slot(gathering, i));
  });
}

function ask(p: string, w: Waiter): void {
  const waiters = asked.get(p);
  if (waiters) waiters.push(w);
  else asked.set(p, [w]);
  if (!scheduled) {
    scheduled = true;
    setImmediate(send);
  }
}

/** The answers of one lstatEachInBatch (classes, not closures: Info asks at each call). */
class Gathering {
  readonly answers: (LstatFields | null)[];
  left: number;
  failed = false;
  constructor(
    n: number,
    readonly done: (answers: (LstatFields | null)[]) => void,
    readonly fail: (err: Error) => void,
  ) {
    this.answers = new Array<LstatFields | null>(n).fill(null);
    this.left = n;
    if (n === 0) done(this.answers);
  }
}

class Slot implements Waiter {
  constructor(
    private readonly g: Gathering,
    private readonly i: number,
  ) {}
  resolve(st: LstatFields | null): void {
    this.g.answers[this.i] = st;
    if (--this.g.left === 0 && !this.g.failed) this.g.done(this.g.answers);
  }
  reject(err: Error): void {
    if (this.g.failed) return;
    this.g.failed = true;
    this.g.fail(err);
  }
}

/** Paths read and batches sent so far (tests and the bench). */
export function lstatBatchCounts(): { reads: number; batches: number } {
  return { reads, batches };
}

function send(): void {
  scheduled = false;
  // One batch at a time: what is asked meanwhile goes in the next one, sent when this one is answered.
  if (inFlight || asked.size === 0) return;
  const batch = [...asked];
  asked = new Map();
  reads += batch.length;
  batches++;
  if (broken) return fallback(batch);
  inFlight = batch;
  const t = (thread ??= startThread());
  t.ref();
  t.postMessage(batch.map(([p]) => p));
}

function startThread(): Worker {
  const t = new Worker(new URL('./lstat-thread.js', import.meta.url));
  t.unref();
  t.on('message', (answers: LstatAnswer[]) => {
    const batch = inFlight!;
    inFlight = undefined;
    t.unref();
    batch.forEach(([p, waiters], i) => settle(p, waiters, answers[i]!));
    send();
  });
  const fail = () => {
    // Whatever stopped the thread, the calls get their answers the ordinary way.
    broken = true;
    thread = undefined;
    const batch = inFlight;
    inFlight = undefined;
    if (batch) fallback(batch);
    send();
  };
  t.on('error', fail);
  t.on('exit', fail);
  return t;
}

function settle(p: string, waiters: Waiter[], a: LstatAnswer): void {
  if (a === null) for (const w of waiters) w.resolve(null);
  else if (Array.isArray(a)) {
    const st: LstatFields = { dev: a[0], ino: a[1], mode: a[2], size: a[3], blocks: a[4] };
    for (const w of waiters) w.resolve(st);
  } else {
    for (const w of waiters) w.reject(Object.assign(new Error(a.message), { code: a.code, errno: a.errno, syscall: 'lstat', path: p }));
  }
}

function fallback(batch: [string, Waiter[]][]): void {
  for (const [p, waiters] of batch) {
    lstatOrNull(p).then(
      (st) => {
        for (const w of waiters) w.resolve(st);
      },
      (err: Error) => {
        for (const w of waiters) w.reject(err);
      },
    );
  }
}

/** Ends the thread as a failure would (tests: every read then takes the fallback, fs.lstat). */
export async function stopLstatThreadForTests(): Promise<void> {
  // An idle thread is unreferenced (an answer arriving meanwhile unrefs it
  // again): without a timer the wait for its end would not keep the process alive.
  const alive = setInterval(() => undefined, 1000);
  try {
    await thread?.terminate();
  } finally {
    clearInterval(alive);
  }
}
