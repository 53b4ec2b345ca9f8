// Ephemeral volatile volumes encrypted with dm-crypt, tested for real in the
// test VM (this machine's kernel has no device-mapper): one guest with two
// scratch disks runs ephemeral.guest.ts, whose tests are declared here again
// and counted on the `vm` line. A guest that cannot boot fails, never skips.
import { describeInTestVm } from '../helpers/vm-suite.js';

await describeInTestVm('ephemeral volatile volumes (dm-crypt)', 'dist/test/devmapper/ephemeral.guest.js', {
  env: { QS_TEST_VM_DISKS: '2', QS_TEST_VM_DISK_SIZE: '128M' },
});
