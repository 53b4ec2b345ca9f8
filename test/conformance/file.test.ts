// The conformance suite for the file driver on XFS, btrfs and ext4, and for
// xen (its R3.2 name and layout, the same code) on ext4.
import { describeConformance } from './suite.js';
import { fileFamilyTarget, testFs, TEST_FILESYSTEMS } from './targets.js';

for (const tfs of TEST_FILESYSTEMS) describeConformance(await fileFamilyTarget('file', tfs));
describeConformance(await fileFamilyTarget('xen', testFs('ext4')));
