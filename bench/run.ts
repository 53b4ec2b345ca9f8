// Benchmarks (npm run bench [-- SCENARIO]). The scenarios of the benchmark
// issue are not written yet; this entry point says so instead of pretending.
const wanted = process.argv.slice(2);
process.stdout.write(
  `no benchmark scenarios yet${wanted.length ? ` (asked for: ${wanted.join(', ')})` : ''}; see the benchmark issue\n`,
);
