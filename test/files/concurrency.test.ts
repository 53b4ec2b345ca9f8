// forEachLimit: every item once, never more than the limit in flight (and the
// limit reached when there is work), the first error rejects and stops new calls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forEachLimit } from '../../src/files/concurrency.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

test('forEachLimit: each item once, at most and at best `limit` at a time', async () => {
  for (const [n, limit] of [[0, 4], [1, 4], [3, 4], [50, 4], [50, 1], [17, 16]] as const) {
    let inFlight = 0;
    let most = 0;
    const seen: number[] = [];
    await forEachLimit(Array.from({ length: n }, (_, i) => i), limit, async (i) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await tick();
      seen.push(i);
      inFlight--;
    });
    assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i), `n=${n} limit=${limit}`);
    assert.equal(most, Math.min(n, limit), `n=${n} limit=${limit}: most in flight`);
  }
});

test('forEachLimit: the first error rejects, and no call starts after it', async () => {
  const started: number[] = [];
  await assert.rejects(
    forEachLimit(Array.from({ length: 40 }, (_, i) => i), 4, async (i) => {
      started.push(i);
      await tick();
      if (i === 5) throw new Error('boom 5');
    }),
    /boom 5/,
  );
  await tick();
  await tick();
  assert.ok(started.length <= 6 + 3, `started ${started.join(',')}`);
  assert.ok(!started.includes(20));
});

test('forEachLimit: a limit below 1 is refused', async () => {
  await assert.rejects(forEachLimit([1], 0, async () => {}), RangeError);
  await assert.rejects(forEachLimit([1], NaN, async () => {}), RangeError);
});
