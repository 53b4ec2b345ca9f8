// A reporter for Node's test runner that writes each test's start and
// outcome as one line `QS-TEST {json}`: how the tests run inside the test
// VM report to the host test that started the guest, which re-declares
// every one of them as its own test (test/helpers/guest-results.ts), so the
// host run's summary counts them (count-reporter.ts) and shows their
// failures. Used in the guest as
//   node --test-reporter=./dist/test/helpers/event-lines.js --test-reporter-destination=stdout FILE
export const LINE_PREFIX = 'QS-TEST ';

export interface TestLine {
  readonly type: 'start' | 'pass' | 'fail';
  readonly name: string;
  readonly nesting: number;
  /** pass/fail: a suite (its outcome is its tests'), skipped or todo, why it failed. */
  readonly suite?: boolean;
  readonly skip?: string;
  readonly todo?: boolean;
  readonly error?: string;
  /** The failure is only that tests inside failed. */
  readonly subtestsFailed?: boolean;
  readonly ms?: number;
}

interface EventData {
  name: string;
  nesting: number;
  skip?: string | boolean;
  todo?: string | boolean;
  details?: { type?: string; duration_ms?: number; error?: { failureType?: string; message?: string; cause?: unknown } };
}

function errorText(e: { message?: string; cause?: unknown } | undefined): string {
  if (!e) return '';
  const cause = e.cause as { message?: string; stack?: string } | undefined;
  const parts = [e.message ?? ''];
  if (cause && typeof cause === 'object') parts.push(cause.stack ?? cause.message ?? '');
  else if (cause !== undefined) parts.push(String(cause));
  return parts.filter(Boolean).join('\n').slice(0, 8000);
}

export default async function* eventLines(source: AsyncIterable<{ type: string; data: EventData }>): AsyncGenerator<string> {
  for await (const { type, data } of source) {
    if (type !== 'test:start' && type !== 'test:pass' && type !== 'test:fail') continue;
    const line: TestLine =
      type === 'test:start'
        ? { type: 'start', name: data.name, nesting: data.nesting }
        : {
            type: type === 'test:pass' ? 'pass' : 'fail',
            name: data.name,
            nesting: data.nesting,
            suite: data.details?.type === 'suite',
            ...(data.skip !== undefined && data.skip !== false ? { skip: typeof data.skip === 'string' ? data.skip : 'skipped' } : {}),
            ...(data.todo ? { todo: true } : {}),
            ...(type === 'test:fail' ? { error: errorText(data.details?.error), subtestsFailed: data.details?.error?.failureType === 'subtestsFailed' } : {}),
            ms: Math.round(data.details?.duration_ms ?? 0),
          };
    yield `${LINE_PREFIX}${JSON.stringify(line)}\n`;
  }
}
