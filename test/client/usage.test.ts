/**
 * Pool usage rows: the arithmetic, with expected values worked out by hand
 * (not by calling the code under test).
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { DEFAULT_USAGE_THRESHOLD, checkThreshold, poolUsageRow, usagePercent } from '../../src/client/usage.js';
import { QubesValueError } from '../../src/storage/errors.js';

describe('usagePercent', () => {
  const cases: [used: number | null | undefined, size: number | null | undefined, percent: number | null][] = [
    [250, 1000, 25],
    [1, 3, 33.3], // 33.333...
    [2, 3, 66.7], // 66.666... rounds up
    [1, 6, 16.7], // 16.666...
    [1, 8, 12.5], // exact
    [999, 1000, 99.9],
    [1, 2000, 0.1], // 0.05 rounds up to one decimal
    [1, 4000, 0], // 0.025 rounds down
    [0, 1000, 0],
    [1000, 1000, 100],
    [1500, 1000, 150], // overcommitted: shown as it is
    [10 * 2 ** 40, 40 * 2 ** 40, 25], // 10 TiB of 40 TiB
    [5, 0, null], // no size: no percent
    [null, 1000, null],
    [undefined, 1000, null],
    [5, null, null],
  ];
  for (const [used, size, percent] of cases) it(`${used} of ${size} -> ${percent}`, () => assert.equal(usagePercent(used, size), percent));
});

describe('poolUsageRow', () => {
  it('data only: no metadata key, above the threshold or not', () => {
    assert.equal(DEFAULT_USAGE_THRESHOLD, 90);
    assert.deepEqual(poolUsageRow('p', { data_size: 1000, data_usage: 250 }), {
      pool: 'p',
      data: { size: 1000, usage: 250, percent: 25 },
      above: [],
      threshold: 90,
    });
    assert.deepEqual(poolUsageRow('p', { data_size: 1000, data_usage: 250 }, 20).above, ['data']);
  });

  it('a percent equal to the threshold is not above it; the rounded percent is what counts', () => {
    assert.deepEqual(poolUsageRow('p', { data_size: 100, data_usage: 90 }).above, []);
    assert.deepEqual(poolUsageRow('p', { data_size: 1000, data_usage: 901 }).above, ['data']); // 90.1
    assert.deepEqual(poolUsageRow('p', { data_size: 10000, data_usage: 9004 }).above, []); // 90.04 -> 90.0
    assert.deepEqual(poolUsageRow('p', { data_size: 100, data_usage: 0 }, 0).above, []);
    assert.deepEqual(poolUsageRow('p', { data_size: 100, data_usage: 1 }, 0).above, ['data']);
  });

  it('metadata where the pool reports it (LVM thin): its own percent and flag', () => {
    const row = poolUsageRow('thin', { data_size: 2000, data_usage: 500, metadata_size: 200, metadata_usage: 190 });
    assert.deepEqual(row.data, { size: 2000, usage: 500, percent: 25 });
    assert.deepEqual(row.metadata, { size: 200, usage: 190, percent: 95 });
    assert.deepEqual(row.above, ['metadata']);
    const both = poolUsageRow('thin', { data_size: 100, data_usage: 99, metadata_size: 100, metadata_usage: 98 });
    assert.deepEqual(both.above, ['data', 'metadata']);
    // Only one of the two metadata keys: still a metadata part, the other unknown.
    assert.deepEqual(poolUsageRow('x', { metadata_usage: 7 }).metadata, { size: null, usage: 7, percent: null });
  });

  it('unknown figures are null, never 0', () => {
    assert.deepEqual(poolUsageRow('k', {}), { pool: 'k', data: { size: null, usage: null, percent: null }, above: [], threshold: 90 });
    assert.deepEqual(poolUsageRow('k', { data_size: 0, data_usage: 0 }).data, { size: 0, usage: 0, percent: null });
  });

  it('a threshold outside 0..100 is a QubesValueError', () => {
    for (const bad of [-1, 100.5, Number.NaN, Infinity])
      assert.throws(() => poolUsageRow('p', {}, bad), (e: unknown) => e instanceof QubesValueError && /from 0 to 100/.test(e.message), String(bad));
    assert.equal(checkThreshold(0), 0);
    assert.equal(checkThreshold(100), 100);
  });
});
