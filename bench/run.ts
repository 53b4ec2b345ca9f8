// npm run bench [-- SCENARIO...] [--quick]: runs the scenarios, prints a
// table and writes bench/results/latest.json. Ratios compare against a
// baseline measured in the same run, because this machine is noisy.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Figure } from './stats.js';
import { SCENARIOS } from './scenarios/index.js';
import { rbd } from './scenarios/rbd.js';

SCENARIOS.push(rbd); // rbd vs file-reflink on a single-node Ceph (starts one when none is given)

export interface ScenarioResult {
  figures: Figure[];
  notes: string[];
}

export interface Scenario {
  name: string;
  describe: string;
  run(opts: { quick: boolean }): Promise<ScenarioResult>;
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const names = args.filter((a) => !a.startsWith('--'));
  const unknown = names.filter((n) => !SCENARIOS.some((s) => s.name === n));
  if (unknown.length) {
    process.stderr.write(`unknown scenario ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}\n`);
    process.exit(2);
  }
  const chosen = names.length ? SCENARIOS.filter((s) => names.includes(s.name)) : SCENARIOS;
  const loadStart = os.loadavg();
  const results: Record<string, ScenarioResult & { describe: string; date: string; loadAverage: number[] }> = {};
  for (const s of chosen) {
    process.stdout.write(`\n== ${s.name}: ${s.describe}\n`);
    const date = new Date().toISOString();
    const r = await s.run({ quick });
    results[s.name] = { ...r, describe: s.describe, date, loadAverage: os.loadavg() };
    for (const n of r.notes) process.stdout.write(`   ${n}\n`);
    const rows = r.figures.map((f) => [
      f.name, f.unit, fmt(f.min), fmt(f.median), fmt(f.max),
      f.ratio !== undefined ? `${f.ratio.toFixed(2)}x ${f.baseline}` : '', f.target ?? '',
    ]);
    const head = ['figure', 'unit', 'min', 'median', 'max', 'ratio (medians)', 'target'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    for (const row of [head, ...rows]) process.stdout.write(`   ${row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
  }
  const here = path.dirname(fileURLToPath(import.meta.url));
  const outDir = path.resolve(here, '../../bench/results');
  await fs.mkdir(outDir, { recursive: true });
  // --quick runs (the smoke test, trying things out) never replace the real figures.
  const outFile = path.join(outDir, quick ? 'quick.json' : 'latest.json');
  // A run of some scenarios keeps the others' last results (each says when it ran).
  let previous: Record<string, unknown> = {};
  try {
    const old = JSON.parse(await fs.readFile(outFile, 'utf8')) as { scenarios?: Record<string, unknown> };
    previous = old.scenarios ?? {};
  } catch {
    // none yet
  }
  const report = {
    date: new Date().toISOString(),
    command: `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`,
    quick,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryBytes: os.totalmem(), kernel: os.release(), platform: os.platform() },
    node: process.version,
    loadAverage: { start: loadStart, end: os.loadavg() },
    scenarios: { ...previous, ...results },
  };
  await fs.writeFile(outFile, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(`\nload average (1, 5, 15 min): start ${loadStart.map((x) => x.toFixed(2)).join(' ')}, end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  process.stdout.write(`wrote ${outFile}\n`);
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
