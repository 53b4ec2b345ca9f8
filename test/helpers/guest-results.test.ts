// The guest results of the test VM declared again on the host
// (guest-results.ts): passed, failed, skipped and unfinished guest tests
// become host tests of the same tree and outcome, and the count reporter
// counts them in the `vm` place and in `conformance: DRIVER@vm`. The guest's
// lines here are written by hand (as event-lines.ts writes them).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { childOutput } from './process.js';
import { countGuestTests, parseGuestLines } from './guest-results.js';
import type { CountsFile } from './count-reporter.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** This environment without NODE_TEST_CONTEXT (set for test files run by `node --test`: it would override the child's reporters). */
function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env['NODE_TEST_CONTEXT'];
  return env;
}
const line = (o: object): string => `QS-TEST ${JSON.stringify(o)}`;
const SUITE = 'driver conformance [conformance:lvm_thin@vm]';
/** A guest that ran a conformance suite (a pass, a failure, a skip, a test with subtests), then died in test e. */
const LINES = [
  'some output of a test, not a line of the reporter',
  line({ type: 'start', name: SUITE, nesting: 0 }),
  line({ type: 'start', name: 'a', nesting: 1 }),
  line({ type: 'pass', name: 'a', nesting: 1, suite: false, ms: 5 }),
  line({ type: 'start', name: 'b', nesting: 1 }),
  line({ type: 'fail', name: 'b', nesting: 1, suite: false, error: 'expected 1, got 2', subtestsFailed: false, ms: 7 }),
  line({ type: 'start', name: 'c', nesting: 1 }),
  line({ type: 'pass', name: 'c', nesting: 1, suite: false, skip: 'no origin kind', ms: 0 }),
  line({ type: 'start', name: 'd', nesting: 1 }),
  line({ type: 'start', name: 'd1', nesting: 2 }),
  line({ type: 'pass', name: 'd1', nesting: 2, suite: false, ms: 1 }),
  line({ type: 'start', name: 'd2', nesting: 2 }),
  line({ type: 'pass', name: 'd2', nesting: 2, suite: false, ms: 1 }),
  line({ type: 'pass', name: 'd', nesting: 1, suite: false, ms: 3 }),
  line({ type: 'fail', name: SUITE, nesting: 0, suite: true, error: '1 subtest failed', subtestsFailed: true, ms: 20 }),
  line({ type: 'start', name: 'e', nesting: 0 }),
  'QS-TEST {"type":"pa', // cut off: the guest died
].join('\n');

describe('guest results declared on the host', () => {
  it('parses the tree: names, nesting, outcomes; a test never finished has none', () => {
    const roots = parseGuestLines(LINES);
    assert.deepEqual(roots.map((r) => r.name), [SUITE, 'e']);
    assert.deepEqual(roots[0]!.children.map((c) => `${c.name}:${c.outcome?.type}`), ['a:pass', 'b:fail', 'c:pass', 'd:pass']);
    assert.deepEqual(roots[0]!.children[3]!.children.map((c) => c.name), ['d1', 'd2']);
    assert.equal(roots[1]!.outcome, null);
    assert.equal(countGuestTests(roots), 7);
  });

  it("are shown and counted as the guest's: vm place and conformance DRIVER@vm; the unfinished test fails", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-guest-results-'));
    try {
      await fs.writeFile(path.join(dir, 'lines'), LINES);
      const counts = path.join(dir, 'counts.json');
      const child = spawn(
        process.execPath,
        [
          '--test-reporter=spec',
          '--test-reporter-destination=stdout',
          `--test-reporter=${path.join(HERE, 'count-reporter.js')}`,
          '--test-reporter-destination=/dev/null',
          path.join(HERE, 'guest-results-child.js'),
        ],
        { env: { ...childEnv(), QS_GUEST_LINES: path.join(dir, 'lines'), QS_TEST_COUNTS_FILE: counts }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const run = await childOutput(child);
      assert.equal(run.code, 1, 'failed tests fail the host run');
      assert.match(run.stdout, /expected 1, got 2/, "the guest's failure is shown");
      assert.match(run.stdout, /the guest gave no result for this test/);
      const got = JSON.parse(await fs.readFile(counts, 'utf8')) as CountsFile;
      assert.deepEqual(got.places['vm'], { passed: 4, failed: 2, skipped: 1 });
      assert.deepEqual(got.conformance['lvm_thin@vm'], { passed: 4, failed: 1, skipped: 1 });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
