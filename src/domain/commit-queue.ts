/**
 * Group commit of state changes. A change is a synchronous apply() that
 * returns its undo, plus the scope it touched (which domains a save must
 * look at). Changes are applied one at a time, in call order; the ones that
 * arrive while a save is being written are saved together by the next one
 * (with many clients at once, a save per change would rewrite the whole
 * state file for each). If that save fails, every change it held is undone,
 * last first and synchronously (before the next save), and each caller gets
 * the error. A change whose apply() throws is not applied and gets its error.
 */
import { KeyedMutex } from '../storage/lock.js';

/** Applies a change to the model; returns what undoes it. */
export type Change = () => () => void;

/** What a change touched: every domain, or these (asked after the change is applied). */
export type ChangeScope<T> = 'all' | ReadonlySet<T>;

/** Where the queue writes its batches. */
export interface BatchWriter<T> {
  /** Whether the next save looks at everything anyway (the changes' scopes are then not asked). */
  needsFull(): boolean;
  /** Throws while changes are refused (the state is closed): each change is checked before it is applied. */
  checkOpen(): void;
  /** Makes the applied changes durable; what it throws is the error every caller of the batch gets. */
  write(scope: ChangeScope<T>): Promise<void>;
}

interface QueuedChange<T> {
  readonly apply: Change;
  readonly scope: () => ChangeScope<T>;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

export class CommitQueue<T> {
  /** Saves, one at a time (and whatever must not run beside one: see exclusive). */
  private readonly lock = new KeyedMutex();
  /** Changes waiting for the next save. */
  private queued: QueuedChange<T>[] = [];

  constructor(private readonly writer: BatchWriter<T>) {}

  /** Applies `apply` and saves it (with whatever else is queued); resolves once durable. */
  commit(apply: Change, scope: ChangeScope<T> | (() => ChangeScope<T>)): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queued.push({ apply, scope: typeof scope === 'function' ? scope : () => scope, resolve, reject });
      // The first one queued schedules the save that takes the whole queue.
      if (this.queued.length === 1) void this.lock.run('state', () => this.saveQueued());
    });
  }

  /** Runs `fn` between saves: no change is applied or written meanwhile. */
  exclusive<R>(fn: () => Promise<R>): Promise<R> {
    return this.lock.run('state', fn);
  }

  private async saveQueued(): Promise<void> {
    const batch = this.queued;
    this.queued = [];
    const applied: { undo: () => void; c: QueuedChange<T> }[] = [];
    try {
      let scope: 'all' | Set<T> = this.writer.needsFull() ? 'all' : new Set();
      for (const c of batch) {
        try {
          this.writer.checkOpen();
          applied.push({ undo: c.apply(), c });
        } catch (e) {
          c.reject(e);
          continue;
        }
        if (scope === 'all') continue;
        const s = c.scope();
        if (s === 'all') scope = 'all';
        else for (const d of s) scope.add(d);
      }
      if (!applied.length) return;
      try {
        await this.writer.write(scope);
      } catch (e) {
        for (let i = applied.length - 1; i >= 0; i--) applied[i]!.undo();
        for (const a of applied) a.c.reject(e);
        return;
      }
      for (const a of applied) a.c.resolve();
    } catch (e) {
      // An undo that threw: nobody may be left waiting.
      for (const a of applied) a.c.reject(e);
    }
  }
}
