// node dist/test/helpers/count-summary.js COUNTS.json
// Prints what count-reporter.ts counted, one line per place, and a closing
// `all: N passed, N failed, N skipped` line. With QS_TEST_REQUIRE=1 (CI) it
// exits 1 when a place ran no test or skipped some: a suite that could not
// set itself up fails the run instead of passing quietly.
import { readFileSync } from 'node:fs';
import { PLACES, type Counts } from './count-reporter.js';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: count-summary COUNTS.json\n');
  process.exit(2);
}
let counts: Counts;
try {
  counts = JSON.parse(readFileSync(file, 'utf8')) as Counts;
} catch (e) {
  process.stderr.write(`count-summary: no test counts in ${file} (${(e as Error).message})\n`);
  process.exit(1);
}

const zero = { passed: 0, failed: 0, skipped: 0 };
const places = [...PLACES, ...Object.keys(counts).filter((p) => !(PLACES as readonly string[]).includes(p)).sort()];
const total = { ...zero };
const lines = ['tests per place (filesystem or cluster they ran on):'];
for (const p of places) {
  const c = counts[p] ?? zero;
  total.passed += c.passed;
  total.failed += c.failed;
  total.skipped += c.skipped;
  lines.push(`  ${p.padEnd(6)} ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
}
const problems: string[] = [];
if (process.env['QS_TEST_REQUIRE'] === '1') {
  for (const p of PLACES) {
    const c = counts[p] ?? zero;
    if (c.passed + c.failed === 0) problems.push(`no test ran on ${p}`);
    if (c.skipped > 0) problems.push(`${c.skipped} skipped on ${p}`);
  }
}
for (const m of problems) lines.push(`run-tests: QS_TEST_REQUIRE=1: ${m}`);
lines.push(`all: ${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.stdout.write(lines.join('\n') + '\n');
process.exit(problems.length ? 1 : 0);
