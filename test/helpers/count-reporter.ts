// A reporter for Node's test runner (scripts/run-tests.sh passes it beside
// the spec reporter) that counts the tests that passed, failed and were
// skipped per place they ran on: the filesystem or cluster named by the
// `[xfs]`, `[btrfs]`, `[ext4]`, `[ceph]`, `[vm]` tag of an enclosing suite
// (describeEachFs, describeRbd; `[small-xfs]` of describeEachSmallFs counts
// as xfs; `[vm]`: run in the test VM, scripts/with-test-vm.sh), else `other`. The conformance suite's tag
// `[conformance:DRIVER@PLACE]` (test/conformance/suite.ts) counts for PLACE
// and also for the driver: `conformance` holds those counts per DRIVER@PLACE.
// It yields nothing; at the end it writes the counts as JSON
// ({ places, conformance }) to QS_TEST_COUNTS_FILE, which run-tests.sh
// prints and, with QS_TEST_REQUIRE=1, checks: a place where nothing ran, or
// where something was skipped, fails the run.
import { writeFileSync } from 'node:fs';

export const PLACES = ['xfs', 'btrfs', 'ext4', 'ceph', 'vm'] as const;
export type Counts = Record<string, { passed: number; failed: number; skipped: number }>;
/** What the reporter writes: counts per place, and per conformance target (DRIVER@PLACE). */
export interface CountsFile {
  places: Counts;
  conformance: Counts;
}

const TAG = /\[(?:small-)?(xfs|btrfs|ext4|ceph|vm)\]|\[conformance:[A-Za-z0-9_.-]+@(xfs|btrfs|ext4|ceph|vm)\]/;
const CONFORMANCE_TAG = /\[conformance:([A-Za-z0-9_.-]+@[a-z0-9]+)\]/;

interface TestEventData {
  name: string;
  nesting: number;
  skip?: string | boolean;
  todo?: string | boolean;
  details?: { type?: string; error?: { failureType?: string } };
}

/** The place of a test: the innermost tag among its own and its suites' names. */
function placeOf(names: readonly string[]): string {
  for (let i = names.length - 1; i >= 0; i--) {
    const m = TAG.exec(names[i]!);
    if (m) return (m[1] ?? m[2])!;
  }
  return 'other';
}

/** The conformance target (DRIVER@PLACE) a test belongs to, or null. */
function conformanceOf(names: readonly string[]): string | null {
  for (let i = names.length - 1; i >= 0; i--) {
    const m = CONFORMANCE_TAG.exec(names[i]!);
    if (m) return m[1]!;
  }
  return null;
}

// Node's runner takes a reporter as a generator; this one only counts and yields nothing.
// eslint-disable-next-line require-yield
export default async function* countReporter(
  source: AsyncIterable<{ type: string; data: TestEventData }>,
): AsyncGenerator<string> {
  const counts: CountsFile = { places: {}, conformance: {} };
  const bump = (into: Counts, key: string, k: 'passed' | 'failed' | 'skipped'): void => {
    (into[key] ??= { passed: 0, failed: 0, skipped: 0 })[k]++;
  };
  // Names of the enclosing suites by nesting level. The runner reports the
  // test files one after another (each file's events in order, also when
  // they run in parallel), so one stack follows them all. (`data.file` is
  // where a test was declared: for describeEachFs, filesystems.js.)
  const stack: string[] = [];
  for await (const { type, data } of source) {
    if (type !== 'test:start' && type !== 'test:pass' && type !== 'test:fail') continue;
    if (type === 'test:start') {
      stack.length = data.nesting;
      stack.push(data.name);
      continue;
    }
    const isSuite = data.details?.type === 'suite';
    const skipped = data.skip !== undefined && data.skip !== false;
    // A skipped suite stands for the tests it did not run; other suites are
    // counted through their tests. A failed suite (a hook) counts as a
    // failure; one that failed only because tests in it did is counted
    // through them.
    if (isSuite && !skipped && type === 'test:pass') continue;
    // So is a test with subtests (guest-results.ts declares a guest's tests so) that failed only through them.
    if (type === 'test:fail' && data.details?.error?.failureType === 'subtestsFailed') continue;
    const names = [...stack.slice(0, data.nesting), data.name];
    const outcome = type === 'test:fail' ? 'failed' : skipped || data.todo ? 'skipped' : 'passed';
    bump(counts.places, placeOf(names), outcome);
    const target = conformanceOf(names);
    if (target) bump(counts.conformance, target, outcome);
  }
  const file = process.env['QS_TEST_COUNTS_FILE'];
  if (file) writeFileSync(file, JSON.stringify(counts));
}
