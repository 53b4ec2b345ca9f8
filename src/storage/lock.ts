/**
 * Keyed mutual exclusion: calls with the same key run one at a time in the
 * order they asked; calls with different keys run in parallel. Used per
 * volume (key = vid) by pools and per domain by the daemon.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `fn` once every earlier holder of `key` has finished. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      // Forget the key once nobody queued behind us, so the map stays small.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Runs `fn` holding every key in `keys` (taken in sorted order: no deadlock). */
  async runAll<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    const take = (i: number): Promise<T> =>
      i === sorted.length ? fn() : this.run(sorted[i]!, () => take(i + 1));
    return take(0);
  }

  /** True while some call holds or waits for `key`. */
  isBusy(key: string): boolean {
    return this.tails.has(key);
  }
}
