// The conformance suite for callback around file-reflink (every hook /bin/true), on XFS.
import { describeConformance } from './suite.js';
import { callbackTarget, testFs } from './targets.js';

describeConformance(await callbackTarget(testFs('xfs')));
