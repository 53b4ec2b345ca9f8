/**
 * A node:test file run inside the test VM, its tests counted on the host.
 *
 * `describeInTestVm(title, guestFile)` declares a host suite tagged `[vm]`
 * with one test that boots ONE guest (scripts/with-test-vm.sh, under
 * `nice -n 19`), runs `node GUEST-FILE` there with the reporter of
 * vm-suite-reporter.ts, and re-emits every guest test as a subtest of its
 * own, named `SUITE > TEST` as in the guest, passed, failed (with the
 * guest's message and stack) or skipped as there. scripts/run-tests.sh
 * then counts them on the `vm` line, as if they had run here.
 *
 * Nothing skips: a guest that cannot boot (the harness exits 125), a file
 * that reports no test, a guest test file that exits non-zero or a test
 * that failed there fail the host test. The guest file is a compiled test
 * module whose name does not end in `.test.js` (so the host's run never
 * picks it up itself), e.g. `dist/test/devmapper/ephemeral.guest.js`.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { CHECKOUT, runInTestVm } from './test-vm.js';
import { LINE_PREFIX, type VmTestResult } from './vm-suite-reporter.js';

export interface VmSuiteOptions {
  /** For with-test-vm.sh: QS_TEST_VM_DISKS, QS_TEST_VM_DISK_SIZE, QS_TEST_VM_MEMORY... */
  readonly env?: NodeJS.ProcessEnv;
  /** The whole guest run, boot included (QS_TEST_VM_TIMEOUT); default 900 s. */
  readonly timeoutSeconds?: number;
}

const REPORTER = path.join(CHECKOUT, 'dist', 'test', 'helpers', 'vm-suite-reporter.js');

/** The results the guest reported, in order; other lines of its stdout are left out. */
export function parseGuestResults(stdout: string): VmTestResult[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith(LINE_PREFIX))
    .map((l) => JSON.parse(l.slice(LINE_PREFIX.length)) as VmTestResult);
}

/**
 * Declares `TITLE [vm]`: the tests of `guestFile` (a path under the
 * checkout, e.g. dist/test/devmapper/ephemeral.guest.js), run in a guest.
 */
export function describeInTestVm(title: string, guestFile: string, options: VmSuiteOptions = {}): void {
  describe(`${title} [vm]`, () => {
    test(`a guest boots and runs ${guestFile}; its tests, run there:`, async (t) => {
      const run = await runInTestVm(
        [process.execPath, `--test-reporter=${REPORTER}`, '--test-reporter-destination=stdout', path.join(CHECKOUT, guestFile)],
        { env: { QS_TEST_VM_TIMEOUT: String(options.timeoutSeconds ?? 900), ...options.env }, nice: 19 },
      );
      const results = parseGuestResults(run.stdout);
      for (const r of results) {
        const name = r.names.join(' > ');
        if (r.outcome === 'skipped') await t.test(name, { skip: 'skipped in the guest' }, () => {});
        else
          await t.test(name, () => {
            if (r.outcome === 'failed') throw new Error(`failed in the test VM:\n${r.error ?? ''}`);
          });
      }
      const said = `guest exit status ${run.code}\n--- guest stderr (last 4000 characters) ---\n${run.stderr.slice(-4000)}`;
      assert.notEqual(run.code, 125, `the test VM could not boot or crashed: ${said}`);
      assert.ok(results.length > 0, `the guest reported no test: ${said}`);
      // A failed guest test exits non-zero: it is counted once, as itself.
      if (!results.some((r) => r.outcome === 'failed')) assert.equal(run.code, 0, said);
    });
  });
}
