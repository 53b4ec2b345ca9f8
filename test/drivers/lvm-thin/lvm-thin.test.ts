// The lvm_thin driver, tested for real: ONE guest of the test VM
// (scripts/with-test-vm.sh, Debian's kernel with device-mapper) with three
// scratch disks runs in-vm.js (the conformance suite with its crash tests
// on a real thin pool, a Qubes-shaped LVM layout, a Qubes R4 qubes.xml,
// power cuts through dm-flakey).
// Each test the guest ran is declared here again with the guest's outcome
// (test/helpers/guest-results.ts), so this run's reporters show and count
// them: the `vm` place, and `conformance: lvm_thin@vm`. A guest that cannot
// boot, or ends early, fails here: nothing is skipped.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runInTestVm } from '../../helpers/test-vm.js';
import { countGuestTests, declareGuestResults, parseGuestLines } from '../../helpers/guest-results.js';

const started = process.hrtime.bigint();
const run = await runInTestVm(
  [
    'node',
    '--test-reporter=spec',
    '--test-reporter-destination=stderr',
    '--test-reporter=./dist/test/helpers/event-lines.js',
    '--test-reporter-destination=stdout',
    // Only the tests matching it (a breakage check of some of them; the others are reported skipped).
    ...(process.env['QS_LVM_TEST_PATTERN'] ? [`--test-name-pattern=${process.env['QS_LVM_TEST_PATTERN']}`] : []),
    'dist/test/drivers/lvm-thin/in-vm.js',
  ],
  {
    env: {
      QS_TEST_VM_DISKS: '3',
      QS_TEST_VM_DISK_SIZE: '1G',
      QS_TEST_VM_TIMEOUT: process.env['QS_TEST_VM_TIMEOUT'] ?? '1800',
      QS_TEST_VM_ENV: 'QS_MODEL_RUNS QS_MODEL_SEED QS_CONFORMANCE_CRASH QS_LVM_POWERCUTS QS_LVM_POWERCUT_SEED',
    },
  },
);
const wallS = Number(process.hrtime.bigint() - started) / 1e9;
const results = parseGuestLines(run.stdout);
const ran = countGuestTests(results);

describe('lvm_thin driver in the test VM [vm] (one guest: LVM thin pools on scratch disks)', () => {
  declareGuestResults(results);

  it('the guest booted, ran every test to its end and exited with status 0', (t) => {
    t.diagnostic(`guest: ${ran} tests, exit status ${run.code}, ${wallS.toFixed(0)} s of wall time (boot included)`);
    const tail = run.stderr.split('\n').slice(-40).join('\n');
    assert.ok(ran > 0, `the guest reported no test (exit status ${run.code}):\n${tail}`);
    assert.equal(run.code, 0, `the guest's tests failed or it did not finish (exit status ${run.code}):\n${tail}`);
  });
});
