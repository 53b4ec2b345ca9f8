// Keeps the benchmark code working: every scenario runs with --quick (tiny
// sizes, a few seconds each) and must give finite figures. The numbers are
// not checked (this is not a benchmark run); `npm run bench` measures.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { SCENARIOS } from '../../bench/scenarios/index.js';

function canMountXfs(): string | null {
  if (process.getuid?.() !== 0) return 'not root: no loop-mounted XFS';
  try {
    execFileSync('sh', ['-c', 'command -v mkfs.xfs'], { env: { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` }, stdio: 'pipe' });
    return null;
  } catch {
    return 'no mkfs.xfs';
  }
}

/** Scenarios that need reflink copies (FICLONE) on their scratch filesystem. */
const NEEDS_REFLINK = new Set(['lifecycle', 'clone']);

describe('bench scenarios (--quick)', () => {
  const noXfs = canMountXfs();
  it('has the scenarios the benchmark issue asks for', () => {
    assert.deepEqual(
      SCENARIOS.map((s) => s.name).sort(),
      ['api-load', 'clone', 'import-export', 'lifecycle', 'lifecycle-daemon', 'scale', 'sparse-copy', 'tools', 'web'],
    );
  });
  for (const s of SCENARIOS) {
    const skip = NEEDS_REFLINK.has(s.name) && noXfs ? noXfs : false;
    it(s.name, { skip, timeout: 120_000 }, async (t) => {
      const r = await s.run({ quick: true });
      // A scenario that cannot run here in --quick mode (web without chromium) says so in a note and gives no figures.
      const skipped = r.notes.find((n) => n.endsWith('skipped in --quick mode'));
      if (r.figures.length === 0 && skipped) {
        if (process.env['QS_TEST_REQUIRE'] === '1') assert.fail(`QS_TEST_REQUIRE=1: ${skipped}`);
        return t.skip(skipped);
      }
      assert.ok(r.figures.length > 0, 'no figures');
      for (const f of r.figures) {
        assert.ok(f.samples.length > 0, `${f.name}: no samples`);
        for (const v of [f.min, f.median, f.max]) assert.ok(Number.isFinite(v), `${f.name}: ${v}`);
        assert.ok(f.min <= f.median && f.median <= f.max, `${f.name}: min/median/max out of order`);
        if (f.ratio !== undefined) assert.ok(Number.isFinite(f.ratio), `${f.name}: ratio ${f.ratio}`);
      }
    });
  }
});
