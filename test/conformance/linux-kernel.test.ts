// The conformance suite for linux-kernel: read-only volatile kernel volumes; the rest is checked refused.
import { describeConformance } from './suite.js';
import { linuxKernelTarget, testFs } from './targets.js';

describeConformance(await linuxKernelTarget(testFs('ext4')));
