// The conformance suite for the example out-of-tree driver (examples/dir-driver).
import { describeConformance } from './suite.js';
import { dirExampleTarget, testFs } from './targets.js';

describeConformance(await dirExampleTarget(testFs('ext4')));
