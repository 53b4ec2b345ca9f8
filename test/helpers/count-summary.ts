// node dist/test/helpers/count-summary.js COUNTS.json
// Prints what count-reporter.ts counted, one line per place, and a closing
// `all: N passed, N failed, N skipped` line, and before it one
// `conformance: DRIVER@PLACE ...` line per driver the conformance suite ran
// for. With QS_TEST_REQUIRE=1 (CI) it exits 1 when a place ran no test or
// skipped some, or a conformance target skipped some: a suite that could not
// set itself up fails the run instead of passing quietly.
import { readFileSync } from 'node:fs';
import { PLACES, type CountsFile } from './count-reporter.js';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: count-summary COUNTS.json\n');
  process.exit(2);
}
let file_: CountsFile;
try {
  file_ = JSON.parse(readFileSync(file, 'utf8')) as CountsFile;
} catch (e) {
  process.stderr.write(`count-summary: no test counts in ${file} (${(e as Error).message})\n`);
  process.exit(1);
}

const counts = file_.places;
const zero = { passed: 0, failed: 0, skipped: 0 };
const places = [...PLACES, ...Object.keys(counts).filter((p) => !(PLACES as readonly string[]).includes(p)).sort()];
const total = { ...zero };
const lines = ['tests per place (filesystem, cluster or test VM they ran on):'];
for (const p of places) {
  const c = counts[p] ?? zero;
  total.passed += c.passed;
  total.failed += c.failed;
  total.skipped += c.skipped;
  lines.push(`  ${p.padEnd(6)} ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
}
const targets = Object.keys(file_.conformance).sort();
if (targets.length) lines.push('driver conformance suite per driver (passed/failed/skipped):');
for (const t of targets) {
  const c = file_.conformance[t]!;
  lines.push(`  conformance: ${t.padEnd(24)} ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
}
const problems: string[] = [];
if (process.env['QS_TEST_REQUIRE'] === '1') {
  for (const p of PLACES) {
    const c = counts[p] ?? zero;
    if (c.passed + c.failed === 0) problems.push(`no test ran on ${p}`);
    if (c.skipped > 0) problems.push(`${c.skipped} skipped on ${p}`);
  }
  for (const t of targets) if (file_.conformance[t]!.skipped > 0) problems.push(`${file_.conformance[t]!.skipped} conformance tests skipped for ${t}`);
}
for (const m of problems) lines.push(`run-tests: QS_TEST_REQUIRE=1: ${m}`);
lines.push(`all: ${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.stdout.write(lines.join('\n') + '\n');
process.exit(problems.length ? 1 : 0);
