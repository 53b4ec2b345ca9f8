/**
 * A node:test file run inside the test VM, its tests counted on the host:
 * the one way the tests that need device-mapper (lvm_thin, dm-crypt) run.
 *
 * `await describeInTestVm(title, guestFile)` boots ONE guest
 * (scripts/with-test-vm.sh, under `nice -n 19`) while this file loads, runs
 * `node GUEST-FILE` there with the event-lines reporter (event-lines.ts),
 * then declares the host suite `TITLE [vm]`: every guest suite and test
 * again, passed, failed (with the guest's error) or skipped as there
 * (guest-results.ts), and one test that the guest booted, finished every
 * test and exited with status 0 (unless a guest test failed: that one is
 * counted, once). scripts/run-tests.sh counts them on the
 * `vm` line (a conformance suite's own tag, `[conformance:DRIVER@vm]`,
 * counts it under its driver too), as if they had run here.
 *
 * Nothing skips: a guest that cannot boot (the harness exits 125), a file
 * that reports no test, a test the guest never finished or a guest that
 * exits non-zero fail here. The guest file is a compiled test module whose
 * name does not end in `.test.js` (so the host's run never picks it up
 * itself), e.g. `dist/test/devmapper/ephemeral.guest.js`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { CHECKOUT, runInTestVm } from './test-vm.js';
import { countGuestFailures, countGuestTests, declareGuestResults, parseGuestLines } from './guest-results.js';

export interface VmSuiteOptions {
  /** For with-test-vm.sh: QS_TEST_VM_DISKS, QS_TEST_VM_DISK_SIZE, QS_TEST_VM_ENV... */
  readonly env?: NodeJS.ProcessEnv;
  /** The whole guest run, boot included (QS_TEST_VM_TIMEOUT); default 900 s. */
  readonly timeoutSeconds?: number;
  /** Only the guest tests whose names match (node's --test-name-pattern); the others are reported skipped. */
  readonly namePattern?: string;
}

const REPORTER = path.join(CHECKOUT, 'dist', 'test', 'helpers', 'event-lines.js');

/** Runs `guestFile` (a path under the checkout) in a guest, then declares `TITLE [vm]` with its tests. */
export async function describeInTestVm(title: string, guestFile: string, options: VmSuiteOptions = {}): Promise<void> {
  const started = process.hrtime.bigint();
  const run = await runInTestVm(
    [
      process.execPath,
      // The guest's own spec output goes to its stderr, shown below when the run fails.
      '--test-reporter=spec',
      '--test-reporter-destination=stderr',
      `--test-reporter=${REPORTER}`,
      '--test-reporter-destination=stdout',
      ...(options.namePattern ? [`--test-name-pattern=${options.namePattern}`] : []),
      path.join(CHECKOUT, guestFile),
    ],
    { env: { QS_TEST_VM_TIMEOUT: String(options.timeoutSeconds ?? 900), ...options.env }, nice: 19 },
  );
  const wallS = Number(process.hrtime.bigint() - started) / 1e9;
  const results = parseGuestLines(run.stdout);
  const ran = countGuestTests(results);
  const failed = countGuestFailures(results);

  describe(`${title} [vm]`, () => {
    declareGuestResults(results);

    it(`a guest booted, ran every test of ${guestFile} to its end and exited with status 0`, (t) => {
      t.diagnostic(`guest: ${ran} tests, exit status ${run.code}, ${wallS.toFixed(0)} s of wall time (boot included)`);
      const said = `guest exit status ${run.code}\n--- guest stderr (last 4000 characters) ---\n${run.stderr.slice(-4000)}`;
      assert.notEqual(run.code, 125, `the test VM could not boot or crashed: ${said}`);
      assert.ok(ran > 0, `the guest reported no test: ${said}`);
      // A guest test that failed (so the guest exits non-zero) is counted once, as itself.
      if (failed === 0) assert.equal(run.code, 0, `the guest's tests passed but it did not exit with 0: ${said}`);
    });
  });
}
