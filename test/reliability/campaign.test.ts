// A short crash campaign (fixed seed) on each test filesystem: every child
// is killed at a random failpoint, at a random moment or not at all, and the
// storage contract is checked after each (see campaign.ts). The long runs
// are `npm run crash` (docs/reliability.md).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { describeEachFs } from '../helpers/filesystems.js';
import { formatSummary, runCampaign } from './campaign.js';

const ITERATIONS = Number(process.env['QS_CRASH_ITERATIONS'] ?? 40);
const SEED = Number(process.env['QS_CRASH_SEED'] ?? 20240601);

describeEachFs('crash campaign', (tfs, ctx) => {
  it(`${ITERATIONS} iterations, seed ${SEED}: no disk lost or corrupted, no debris`, { timeout: 120_000 }, async () => {
    const dir = await ctx.tempDir('campaign');
    const s = await runCampaign({ dir, reflink: tfs.reflink, seed: SEED, iterations: ITERATIONS, label: tfs.name });
    const text = formatSummary(s);
    assert.equal(s.iterations, ITERATIONS, text);
    assert.deepEqual(s.violations, [], text);
    assert.ok(s.crashes > ITERATIONS / 3, `too few crashes: ${s.crashes}\n${text}`);
  });
});
