// A short crash campaign (fixed seed) on each test filesystem: every child
// is killed at a random failpoint, at a random moment or not at all, and the
// storage contract is checked after each (see campaign.ts). Then a short
// power-loss campaign on a loop-mounted XFS and ext4 of its own: every child
// ends with a filesystem shutdown without log flush and a remount. The long
// runs are `npm run crash` (docs/reliability.md).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { formatSummary, runCampaign, type Summary } from './campaign.js';
import { LoopFs, type PowerCutFs } from './power-cut.js';

/** The default mix runs pools of the file layout too (the extra pool's draws, poolDrawer): some of its operations must complete. */
function assertFileLayoutRan(s: Summary, text: string): void {
  const done = (s.opsByDriver['file']?.completed ?? 0) + (s.opsByDriver['xen']?.completed ?? 0);
  assert.ok(done > 0, `no operation completed on a file or xen pool\n${text}`);
}

const ITERATIONS = Number(process.env['QS_CRASH_ITERATIONS'] ?? 40);
const SEED = Number(process.env['QS_CRASH_SEED'] ?? 20240601);
const POWER_ITERATIONS = Number(process.env['QS_POWER_ITERATIONS'] ?? 20);
// Another seed than the SIGKILL runs': its default pool is a file pool and its extra pool file-reflink
// (SEED's are file-reflink and file/xen), so npm test runs both drivers in both roles.
const POWER_SEED = Number(process.env['QS_POWER_SEED'] ?? 20240602);

describeEachFs('crash campaign', (tfs, ctx) => {
  it(`${ITERATIONS} iterations, seed ${SEED}: no disk lost or corrupted, no debris`, { timeout: 120_000 }, async () => {
    const dir = await ctx.tempDir('campaign');
    const s = await runCampaign({ dir, reflink: tfs.reflink, seed: SEED, iterations: ITERATIONS, label: tfs.name });
    const text = formatSummary(s);
    assert.equal(s.iterations, ITERATIONS, text);
    assert.deepEqual(s.violations, [], text);
    assert.ok(s.crashes > ITERATIONS / 3, `too few crashes: ${s.crashes}\n${text}`);
    assertFileLayoutRan(s, text);
  });
});

describe('power-loss campaign', () => {
  for (const kind of ['xfs', 'ext4'] as PowerCutFs[]) {
    const skip = process.getuid?.() !== 0 ? 'needs root (loop mounts, filesystem shutdown)' : false;
    it(`${kind}: ${POWER_ITERATIONS} iterations, seed ${POWER_SEED}, each ending in a power cut: every acknowledged operation survives`, { timeout: 180_000, skip }, async () => {
      const lfs = LoopFs.create(kind);
      try {
        const dir = await fs.mkdtemp(path.join(lfs.mnt, 'campaign-'));
        const s = await runCampaign({ dir, reflink: kind === 'xfs', seed: POWER_SEED, iterations: POWER_ITERATIONS, label: kind, powerCut: lfs });
        const text = formatSummary(s);
        assert.equal(s.powerCuts, POWER_ITERATIONS, text);
        assert.deepEqual(s.violations, [], text);
        assert.ok(s.crashes > POWER_ITERATIONS / 4, `too few cuts during an operation: ${s.crashes}\n${text}`);
        assertFileLayoutRan(s, text);
      } finally {
        lfs.disposeSync();
      }
    });
  }
});
