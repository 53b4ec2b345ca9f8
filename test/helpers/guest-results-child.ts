// Child of guest-results.test.ts: declares the guest results of the
// QS-TEST lines in the file $QS_GUEST_LINES under a `[vm]` suite, as a host
// test file of the test VM does, so the parent can count what the
// reporters see.
import { readFileSync } from 'node:fs';
import { describe } from 'node:test';
import { declareGuestResults, parseGuestLines } from './guest-results.js';

const results = parseGuestLines(readFileSync(process.env['QS_GUEST_LINES']!, 'utf8'));
describe('a guest [vm]', () => declareGuestResults(results));
