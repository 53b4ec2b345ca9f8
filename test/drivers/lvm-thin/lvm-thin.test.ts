// The lvm_thin driver, tested for real: ONE guest of the test VM
// (scripts/with-test-vm.sh, Debian's kernel with device-mapper) with three
// scratch disks runs in-vm.js (the conformance suite with its crash tests
// on a real thin pool, a Qubes-shaped LVM layout, a Qubes R4 qubes.xml,
// power cuts through dm-flakey). Each test the guest ran is declared here
// again with the guest's outcome (test/helpers/vm-suite.ts), so this run's
// reporters show and count them: the `vm` place, and `conformance:
// lvm_thin@vm`. A guest that cannot boot, or ends early, fails here:
// nothing is skipped.
import { describeInTestVm } from '../../helpers/vm-suite.js';

await describeInTestVm('lvm_thin driver in the test VM (one guest: LVM thin pools on scratch disks)', 'dist/test/drivers/lvm-thin/in-vm.js', {
  env: {
    QS_TEST_VM_DISKS: '3',
    QS_TEST_VM_DISK_SIZE: '1G',
    QS_TEST_VM_ENV: 'QS_MODEL_RUNS QS_MODEL_SEED QS_CONFORMANCE_CRASH QS_LVM_POWERCUTS QS_LVM_POWERCUT_SEED',
  },
  timeoutSeconds: Number(process.env['QS_TEST_VM_TIMEOUT'] ?? 1800),
  // Only the tests matching it (a breakage check of some of them; the others are reported skipped).
  ...(process.env['QS_LVM_TEST_PATTERN'] ? { namePattern: process.env['QS_LVM_TEST_PATTERN'] } : {}),
});
