// npm run crash -- [--iterations N] [--seed S] [--fs xfs|ext4|btrfs|tmp] [--no-timer] [--json FILE] [--quiet]
// npm run crash -- --power-loss [--iterations N] [--seed S] [--fs xfs|ext4] [--no-timer] [--json FILE] [--quiet]
//
// --daemon-share X (0..1, default 0.25): the share of children whose
// operations go to a real daemon over its socket instead of the App.
//
// --drivers LIST (default file-reflink,file,xen): the drivers the pools are
// made with, drawn per seed: the default pool's once per run, the extra
// pool's at each add. `--drivers file-reflink` plans what a seed planned
// before the file driver joined; `--drivers file` runs file pools only.
//
// --power-loss: the power-loss campaign, on its own loop-mounted XFS
// (default) or ext4 made for the run (power-cut.ts): every child ends with
// a shutdown of that filesystem without log flush, then a remount; root only.
//
// A long crash campaign (see campaign.ts and docs/reliability.md) on a
// filesystem prepared by scripts/with-test-fs.sh: XFS by default, else
// ext4, else a temporary directory (each fallback is announced). Prints a
// summary; exits 1 when an invariant was violated, naming the seed and
// iteration to replay.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatSummary, runCampaign } from './campaign.js';
import { LoopFs, type PowerCutFs } from './power-cut.js';
import { CAMPAIGN_DRIVERS } from './child.js';

interface Args {
  iterations: number;
  seed: number;
  fs: string | null;
  timer: boolean;
  json: string | null;
  quiet: boolean;
  powerLoss: boolean;
  daemonShare: number;
  drivers: string[];
}

function parseArgs(argv: string[]): Args {
  const a: Args = { iterations: 200, seed: 1, fs: null, timer: true, json: null, quiet: false, powerLoss: false, daemonShare: 0.25, drivers: [...CAMPAIGN_DRIVERS] };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${k} needs a value`);
      return v;
    };
    if (k === '--iterations' || k === '-n') a.iterations = Number(val());
    else if (k === '--seed' || k === '-s') a.seed = Number(val());
    else if (k === '--fs') a.fs = val();
    else if (k === '--no-timer') a.timer = false;
    else if (k === '--json') a.json = val();
    else if (k === '--quiet' || k === '-q') a.quiet = true;
    else if (k === '--power-loss') a.powerLoss = true;
    else if (k === '--daemon-share') a.daemonShare = Number(val());
    else if (k === '--drivers') a.drivers = val().split(',').filter(Boolean);
    else throw new Error(`unknown argument ${k}`);
  }
  if (!Number.isSafeInteger(a.iterations) || a.iterations < 1) throw new Error('--iterations must be a positive integer');
  if (!Number.isSafeInteger(a.seed)) throw new Error('--seed must be an integer');
  for (const d of a.drivers)
    if (!(CAMPAIGN_DRIVERS as readonly string[]).includes(d)) throw new Error(`--drivers: ${d} is not one of ${CAMPAIGN_DRIVERS.join(', ')}`);
  if (!a.drivers.length) throw new Error('--drivers needs at least one driver');
  if (a.powerLoss && a.fs !== null && a.fs !== 'xfs' && a.fs !== 'ext4') throw new Error('--power-loss runs on xfs or ext4');
  return a;
}

/** Where to run: the requested filesystem, or XFS, ext4, tmpdir in that order. */
function pickRoot(want: string | null): { name: string; root: string; reflink: boolean; note: string } {
  const env = (n: string) => process.env[`QS_TEST_${n.toUpperCase()}`];
  const reflinkOf = (n: string) => n === 'xfs' || n === 'btrfs';
  if (want && want !== 'tmp') {
    const root = env(want);
    if (!root) throw new Error(`--fs ${want}: QS_TEST_${want.toUpperCase()} is not set (${process.env[`QS_TEST_${want.toUpperCase()}_SKIP`] ?? 'run through scripts/with-test-fs.sh'})`);
    return { name: want, root, reflink: reflinkOf(want), note: '' };
  }
  if (!want) {
    for (const n of ['xfs', 'ext4']) {
      const root = env(n);
      if (root)
        return { name: n, root, reflink: reflinkOf(n), note: n === 'xfs' ? '' : `note: no XFS (${process.env['QS_TEST_XFS_SKIP'] ?? 'QS_TEST_XFS not set'}); running on ext4 with sparse copies` };
    }
  }
  return { name: 'tmp', root: os.tmpdir(), reflink: false, note: want === 'tmp' ? '' : 'note: neither XFS nor ext4 available; running in the temporary directory with sparse copies' };
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  let where: { name: string; root: string; reflink: boolean; note: string };
  let powerCut: LoopFs | undefined;
  if (a.powerLoss) {
    const kind = (a.fs ?? 'xfs') as PowerCutFs;
    powerCut = LoopFs.create(kind);
    where = { name: kind, root: powerCut.mnt, reflink: kind === 'xfs', note: '' };
  } else where = pickRoot(a.fs);
  if (where.note) process.stderr.write(`${where.note}\n`);
  const dir = await fs.mkdtemp(path.join(where.root, `crash-${a.seed}-`));
  const t0 = Date.now();
  let last = 0;
  try {
    const s = await runCampaign({
      dir,
      reflink: where.reflink,
      seed: a.seed,
      iterations: a.iterations,
      timer: a.timer,
      label: where.name,
      powerCut,
      daemonShare: a.daemonShare,
      drivers: a.drivers,
      onIteration: (i, sum) => {
        if (a.quiet || Date.now() - last < 10_000) return;
        last = Date.now();
        process.stderr.write(`[${where.name} seed ${a.seed}] ${i}/${a.iterations} iterations, ${sum.crashes} crashes, ${sum.violations.length} violations, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
      },
    });
    process.stdout.write(formatSummary(s) + '\n');
    if (a.json) await fs.writeFile(a.json, JSON.stringify(s, null, 2) + '\n');
    if (s.violations.length) {
      process.stdout.write(
        `replay: npm run crash --${a.powerLoss ? ' --power-loss' : ''} --fs ${where.name} --drivers ${a.drivers.join(',')} --seed ${a.seed} --iterations N (N = the iteration named above; ` +
          `add --no-timer if no timer kill led to it: timer moments are not reproducible)\n`,
      );
      process.exitCode = 1;
    }
  } finally {
    if (powerCut) powerCut.disposeSync();
    else await fs.rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(2);
});
