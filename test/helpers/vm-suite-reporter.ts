// A reporter for Node's test runner, used inside the test VM by
// vm-suite.ts: one line per finished test on its destination (the guest's
// stdout, which the harness passes back), `qs-vm-test ` and a JSON object:
// { names: [suite..., test], outcome: 'passed' | 'failed' | 'skipped',
//   error?: message and stack }. Suites are not reported as such: their
// tests are; a suite that failed by itself (a hook) is reported as a failed
// test named `(hook of SUITE)`, so nothing that failed is lost. The host
// re-emits each line as a test of its own, where scripts/run-tests.sh
// counts it (the `[vm]` place).

export const LINE_PREFIX = 'qs-vm-test ';

export interface VmTestResult {
  names: string[];
  outcome: 'passed' | 'failed' | 'skipped';
  error?: string;
}

interface TestEventData {
  name: string;
  nesting: number;
  skip?: string | boolean;
  todo?: string | boolean;
  details?: { type?: string; error?: { message?: string; failureType?: string; cause?: unknown } };
}

/** The failure as text: the assertion's own message and stack (the runner wraps it), bounded. */
function describeError(error: { message?: string; cause?: unknown } | undefined): string {
  const cause = error?.cause;
  const inner = cause instanceof Error ? cause : null;
  const text = inner ? (inner.stack ?? inner.message) : typeof cause === 'string' ? cause : (error?.message ?? 'failed');
  return text.length > 4000 ? `${text.slice(0, 4000)}...` : text;
}

export default async function* vmSuiteReporter(
  source: AsyncIterable<{ type: string; data: TestEventData }>,
): AsyncGenerator<string> {
  const stack: string[] = [];
  for await (const { type, data } of source) {
    if (type === 'test:start') {
      stack.length = data.nesting;
      stack.push(data.name);
      continue;
    }
    if (type !== 'test:pass' && type !== 'test:fail') continue;
    const names = [...stack.slice(0, data.nesting), data.name];
    const isSuite = data.details?.type === 'suite';
    const skipped = (data.skip !== undefined && data.skip !== false) || (data.todo !== undefined && data.todo !== false);
    let result: VmTestResult;
    if (isSuite) {
      // Counted through its tests, unless it failed by itself (a before hook) or was skipped whole.
      if (type === 'test:fail' && data.details?.error?.failureType !== 'subtestsFailed')
        result = { names: [...names.slice(0, -1), `(hook of ${data.name})`], outcome: 'failed', error: describeError(data.details?.error) };
      else if (skipped) result = { names, outcome: 'skipped' };
      else continue;
    } else if (type === 'test:fail') {
      // A test that failed only because its subtests did is counted through them.
      if (data.details?.error?.failureType === 'subtestsFailed') continue;
      result = { names, outcome: 'failed', error: describeError(data.details?.error) };
    } else {
      result = { names, outcome: skipped ? 'skipped' : 'passed' };
    }
    yield `${LINE_PREFIX}${JSON.stringify(result)}\n`;
  }
}
