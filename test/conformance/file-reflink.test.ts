// The conformance suite for file-reflink on XFS, btrfs and ext4 (ext4 has no reflink: setup_check=False).
import { describeConformance } from './suite.js';
import { fileFamilyTarget, TEST_FILESYSTEMS } from './targets.js';

for (const tfs of TEST_FILESYSTEMS) describeConformance(await fileFamilyTarget('file-reflink', tfs));
