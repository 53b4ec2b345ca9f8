// npm run bench [-- SCENARIO...] [--quick]: runs the scenarios, prints a
// table and writes bench/results/latest.json. Ratios compare against a
// baseline measured in the same run, because this machine is noisy.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Figure } from './stats.js';
import { lifecycle } from './scenarios/lifecycle.js';
import { clone } from './scenarios/clone.js';

export interface ScenarioResult {
  figures: Figure[];
  notes: string[];
}

export interface Scenario {
  name: string;
  describe: string;
  run(opts: { quick: boolean }): Promise<ScenarioResult>;
}

const SCENARIOS: Scenario[] = [lifecycle, clone];

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
  const results: Record<string, ScenarioResult & { describe: string }> = {};
  for (const s of chosen) {
    process.stdout.write(`\n== ${s.name}: ${s.describe}\n`);
    const r = await s.run({ quick });
    results[s.name] = { ...r, describe: s.describe };
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
  const report = {
    date: new Date().toISOString(),
    quick,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryBytes: os.totalmem(), kernel: os.release(), platform: os.platform() },
    node: process.version,
    scenarios: results,
  };
  await fs.writeFile(path.join(outDir, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(`\nwrote ${path.join(outDir, 'latest.json')}\n`);
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
