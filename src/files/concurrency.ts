/**
 * Bounded concurrency for many small I/O operations (a directory per domain,
 * thousands of them): enough in flight to keep the thread pool busy, not so
 * many that one caller floods it.
 */

/**
 * Runs `fn` on every item with at most `limit` calls in flight. Rejects with
 * the first error; after it no new call is started (those running finish).
 */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  if (!(limit >= 1)) throw new RangeError(`forEachLimit: limit must be at least 1, got ${limit}`);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const workers = Array.from({ length: Math.min(limit, items.length) }, worker);
  await Promise.all(workers);
}
