// The tests a guest of the test VM ran, re-declared on the host: the guest
// runs its test file with the event-lines reporter (event-lines.ts), the
// host test file reads those lines after the guest is gone and declares
// the same tree of suites and tests, each passing, failing (with the
// guest's error) or skipped as it did in the guest. So the host run's
// reporters show and count every guest test (count-reporter.ts: the `vm`
// place, and `conformance: DRIVER@vm` for the conformance suite's tag), and
// a test the guest never finished fails.
import { describe, it, type TestContext } from 'node:test';
import { LINE_PREFIX, type TestLine } from './event-lines.js';

export interface GuestNode {
  readonly name: string;
  readonly children: GuestNode[];
  outcome: TestLine | null;
}

/** The tree of tests of the guest's `QS-TEST` lines (other lines are ignored). */
export function parseGuestLines(stdout: string): GuestNode[] {
  const roots: GuestNode[] = [];
  const stack: GuestNode[] = [];
  for (const raw of stdout.split('\n')) {
    if (!raw.startsWith(LINE_PREFIX)) continue;
    let line: TestLine;
    try {
      line = JSON.parse(raw.slice(LINE_PREFIX.length)) as TestLine;
    } catch {
      continue; // a line cut off by the guest's end
    }
    if (line.type === 'start') {
      const node: GuestNode = { name: line.name, children: [], outcome: null };
      (line.nesting > 0 ? stack[line.nesting - 1]?.children ?? roots : roots).push(node);
      stack.length = line.nesting;
      stack[line.nesting] = node;
    } else {
      const node = stack[line.nesting];
      if (node && node.name === line.name) node.outcome = line;
    }
  }
  return roots;
}

/** Tests (leaves and tests with subtests) in a tree: what the guest ran. */
export function countGuestTests(nodes: readonly GuestNode[]): number {
  return nodes.reduce((n, x) => n + (x.outcome?.suite ? 0 : 1) + countGuestTests(x.children), 0);
}

/** Guest tests and suites that failed by themselves or never finished (a suite failing only through its tests is not one). */
export function countGuestFailures(nodes: readonly GuestNode[]): number {
  return nodes.reduce(
    (n, x) => n + (x.outcome === null || (x.outcome.type === 'fail' && !x.outcome.subtestsFailed) ? 1 : 0) + countGuestFailures(x.children),
    0,
  );
}

const NO_RESULT = 'the guest gave no result for this test: it ended (or was killed) before the test finished';

function options(n: GuestNode): { skip?: string; todo?: boolean } {
  if (n.outcome?.skip) return { skip: n.outcome.skip };
  if (n.outcome?.todo) return { todo: true };
  return {};
}

/** Throws the guest's failure of `n` itself (not only of tests inside it). */
function outcomeOf(n: GuestNode): void {
  if (!n.outcome) throw new Error(NO_RESULT);
  if (n.outcome.type === 'fail' && !n.outcome.subtestsFailed) throw new Error(`failed in the guest (${n.outcome.ms ?? 0} ms): ${n.outcome.error}`);
}

async function subtest(t: TestContext, n: GuestNode): Promise<void> {
  await t.test(n.name, options(n), async (tt) => {
    for (const c of n.children) await subtest(tt, c);
    outcomeOf(n);
  });
}

/** Declares `nodes` (in a describe callback or at the top of a test file) as the guest ran them. */
export function declareGuestResults(nodes: readonly GuestNode[]): void {
  for (const n of nodes) {
    if (n.outcome?.suite || (n.outcome === null && n.children.length > 0)) {
      describe(n.name, options(n), () => {
        declareGuestResults(n.children);
        if (n.outcome === null || (n.outcome.type === 'fail' && !n.outcome.subtestsFailed))
          it('(the suite itself: its hooks, its end)', () => outcomeOf(n));
      });
    } else {
      it(n.name, options(n), async (t) => {
        for (const c of n.children) await subtest(t, c);
        outcomeOf(n);
      });
    }
  }
}
