#!/usr/bin/env node
/**
 * qvm-pool: list, inspect, add, remove and configure storage pools; show
 * their usage. Also the R4.0 flags (-l, -i, -a, -r, -s, --help-drivers).
 */
import { str, strs, UsageError, type CommandSpec, type OptionSpec, parseArgs } from './common/args.js';
import type { PoolSetting, PoolUsageRow, QubesClient, UsageFigures } from '../client/index.js';
import { humanSize, json, table } from './common/output.js';
import { boolArg, dispatchSub, FORMAT_OPTION, parseOptionPairs, topHelp, type SubCommand } from './common/subcommands.js';
import { CliError, runTool, type ToolContext } from './common/tool.js';

const PROG = 'qvm-pool';
/** Exit code of `usage` when a pool is above the threshold. */
export const EXIT_ABOVE_THRESHOLD = 3;
const SETTABLE: readonly string[] = ['revisions_to_keep', 'ephemeral_volatile'] satisfies PoolSetting[];

const OPT_O: OptionSpec = {
  names: ['-o', '--option'],
  kind: 'append',
  dest: 'option',
  metavar: 'KEY=VALUE',
  help: 'a pool option; repeat it, or separate several by commas',
};

function isJson(p: { values: ReadonlyMap<string, string> }): boolean {
  return p.values.get('format') === 'json';
}

async function poolDrivers(qubes: QubesClient, pools: string[]): Promise<[string, string][]> {
  return Promise.all(
    pools.map(async (p) => [p, (await qubes.poolInfo(p)).driver] as [string, string]),
  );
}

async function checkPoolsExist(qubes: QubesClient, names: readonly string[]): Promise<void> {
  const known = new Set(await qubes.pools());
  const missing = names.filter((n) => !known.has(n));
  if (missing.length) throw new CliError(`no such pool: ${missing.map((n) => `'${n}'`).join(', ')}`);
}

async function doList(t: ToolContext, asJson: boolean): Promise<void> {
  const qubes = await t.client();
  const rows = await poolDrivers(qubes, await qubes.pools());
  if (asJson) t.out(json(rows.map(([name, driver]) => ({ name, driver }))));
  else t.out(table([['NAME', 'DRIVER'], ...rows]));
}

async function doInfo(t: ToolContext, pool: string, asJson: boolean): Promise<void> {
  const qubes = await t.client();
  await checkPoolsExist(qubes, [pool]);
  const info = (await qubes.poolInfo(pool)).fields;
  const name = info.find(([k]) => k === 'name');
  const rest = info.filter(([k]) => k !== 'name').sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const rows = name ? [name, ...rest] : rest;
  if (asJson) t.out(json(Object.fromEntries(rows)));
  else t.out(table(rows));
}

async function doDrivers(t: ToolContext, asJson: boolean): Promise<void> {
  const qubes = await t.client();
  const drivers = await qubes.drivers();
  if (asJson) t.out(json(drivers.map((d) => ({ driver: d.driver, options: d.options }))));
  else t.out(table([['DRIVER', 'OPTIONS'], ...drivers.map((d) => [d.driver, d.options.join(', ')])]));
}

async function doAdd(t: ToolContext, pool: string, driver: string, options: readonly string[]): Promise<void> {
  const pairs = parseOptionPairs(options);
  if (pairs.some(([k]) => k === 'name')) throw new UsageError("the pool's name is given as POOL, not as -o name=...");
  const qubes = await t.client();
  const drivers = await qubes.drivers();
  if (!drivers.some((d) => d.driver === driver))
    throw new CliError(`no such driver '${driver}' (available: ${drivers.map((d) => d.driver).join(', ')})`);
  await qubes.addPool(pool, driver, pairs);
}

async function doRemove(t: ToolContext, pools: readonly string[]): Promise<void> {
  const qubes = await t.client();
  await checkPoolsExist(qubes, pools);
  for (const p of pools) await qubes.removePool(p);
}

async function doSet(t: ToolContext, pool: string, options: readonly string[]): Promise<void> {
  const pairs = parseOptionPairs(options);
  if (pairs.length === 0) throw new UsageError('nothing to set: give -o KEY=VALUE');
  for (const [k] of pairs) if (!SETTABLE.includes(k)) throw new CliError(`Setting option ${k} is not supported for pool ${pool}`);
  const qubes = await t.client();
  await checkPoolsExist(qubes, [pool]);
  for (const [k, v] of pairs) {
    const value = k === 'ephemeral_volatile' ? await boolArg(v, k) : v;
    await qubes.setPoolOption(pool, k as PoolSetting, value);
  }
}

/** A usage row as `--format json` shows it (the admin API's key names). */
function usageJson(r: PoolUsageRow): Record<string, unknown> {
  const part = (prefix: string, f: UsageFigures) => ({ [`${prefix}_size`]: f.size, [`${prefix}_usage`]: f.usage, [`${prefix}_percent`]: f.percent });
  return { pool: r.pool, ...part('data', r.data), ...(r.metadata ? part('metadata', r.metadata) : {}), above_threshold: r.above.length > 0 };
}

async function doUsage(t: ToolContext, pools: readonly string[], thresholdText: string | undefined, asJson: boolean): Promise<number> {
  let threshold: number | undefined;
  if (thresholdText !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(thresholdText) || Number(thresholdText) > 100)
      throw new UsageError(`--threshold expects a percentage from 0 to 100, got '${thresholdText}'`);
    threshold = Number(thresholdText);
  }
  const qubes = await t.client();
  if (pools.length) await checkPoolsExist(qubes, pools);
  const rows = await qubes.poolUsage({ pools: pools.length ? pools : undefined, threshold });
  if (asJson) {
    t.out(json(rows.map(usageJson)));
  } else {
    const meta = rows.some((r) => r.metadata !== undefined);
    const sz = (n: number | null | undefined) => (n === null || n === undefined ? '-' : humanSize(n));
    const pc = (n: number | null | undefined) => (n === null || n === undefined ? '-' : `${n.toFixed(1)}%`);
    const head = ['POOL', 'USED', 'SIZE', 'USE%', ...(meta ? ['METADATA_USED', 'METADATA_SIZE', 'METADATA_USE%'] : [])];
    t.out(
      table([
        head,
        ...rows.map((r) => [
          r.pool,
          sz(r.data.usage),
          sz(r.data.size),
          pc(r.data.percent),
          ...(meta ? [sz(r.metadata?.usage), sz(r.metadata?.size), pc(r.metadata?.percent)] : []),
        ]),
      ]),
    );
  }
  let above = 0;
  for (const r of rows)
    for (const part of r.above) {
      t.warn(`pool ${r.pool}: ${part} ${r[part]!.percent}% used (threshold ${r.threshold}%)`);
      above++;
    }
  return above ? EXIT_ABOVE_THRESHOLD : 0;
}

function sub(names: string[], spec: Omit<CommandSpec, 'prog'>, run: SubCommand['run']): SubCommand {
  return { names, spec: { ...spec, prog: `${PROG} ${names[0]}` }, run };
}

const SUBS: SubCommand[] = [
  sub(['list', 'ls', 'l'], { summary: 'list the pools: NAME DRIVER', options: [FORMAT_OPTION], positionals: [] }, async (t, argv, spec) => {
    const p = t.parse(spec, argv);
    await doList(t, isJson(p));
  }),
  sub(
    ['info', 'i'],
    { summary: "a pool's settings, size and usage", options: [FORMAT_OPTION], positionals: [{ name: 'POOL', help: 'the pool' }] },
    async (t, argv, spec) => {
      const p = t.parse(spec, argv);
      await doInfo(t, str(p, 'POOL'), isJson(p));
    },
  ),
  sub(['drivers', 'd'], { summary: 'the drivers and the options each takes', options: [FORMAT_OPTION], positionals: [] }, async (t, argv, spec) => {
    const p = t.parse(spec, argv);
    await doDrivers(t, isJson(p));
  }),
  sub(
    ['add', 'a'],
    {
      summary: 'add a pool',
      options: [OPT_O],
      positionals: [
        { name: 'POOL', help: 'name of the new pool' },
        { name: 'DRIVER', help: "its driver (see 'qvm-pool drivers')" },
      ],
      epilog: 'example: qvm-pool add fast file-reflink -o dir_path=/mnt/fast -o revisions_to_keep=2',
    },
    async (t, argv, spec) => {
      const p = t.parse(spec, argv);
      await doAdd(t, str(p, 'POOL'), str(p, 'DRIVER'), p.lists.get('option') ?? []);
    },
  ),
  sub(
    ['remove', 'rm', 'r'],
    { summary: 'remove pools (refused while a volume uses them; data is left on disk)', options: [], positionals: [{ name: 'POOL', count: '+', help: 'the pools' }] },
    async (t, argv, spec) => {
      const p = t.parse(spec, argv);
      await doRemove(t, strs(p, 'POOL'));
    },
  ),
  sub(
    ['set', 's'],
    {
      summary: 'change revisions_to_keep or ephemeral_volatile of a pool',
      options: [OPT_O],
      positionals: [{ name: 'POOL', help: 'the pool' }],
      epilog: 'example: qvm-pool set default -o revisions_to_keep=3',
    },
    async (t, argv, spec) => {
      const p = t.parse(spec, argv);
      await doSet(t, str(p, 'POOL'), p.lists.get('option') ?? []);
    },
  ),
  sub(
    ['usage', 'u'],
    {
      summary: 'used and total space of pools, with percentages',
      options: [
        { names: ['--threshold'], kind: 'value', metavar: 'PERCENT', help: 'warn about pools used above this (default 90)' },
        FORMAT_OPTION,
      ],
      positionals: [{ name: 'POOL', count: '*', help: 'the pools (default: all)' }],
      epilog:
        'Data, and metadata where the driver reports it. Exit status: 0 when every pool\n' +
        `is at or below the threshold, ${EXIT_ABOVE_THRESHOLD} when any pool is above it (a warning names it),\n` +
        '1 on errors, 2 on command-line mistakes.',
    },
    async (t, argv, spec) => {
      const p = t.parse(spec, argv);
      return doUsage(t, strs(p, 'POOL'), p.values.get('threshold'), isJson(p));
    },
  ),
];

// ---- R4.0 flags -----------------------------------------------------------------------

const LEGACY_SPEC: CommandSpec = {
  prog: PROG,
  summary: 'R4.0 flags, still accepted',
  options: [
    { names: ['-l', '--list'], kind: 'flag', help: 'list the pools' },
    { names: ['-i', '--info'], kind: 'value', metavar: 'POOL', help: "a pool's settings" },
    { names: ['-a', '--add'], kind: 'multi', nargs: 2, metavar: 'POOL DRIVER', help: 'add a pool' },
    { names: ['-r', '--remove'], kind: 'value', metavar: 'POOL', help: 'remove a pool' },
    { names: ['-s', '--set'], kind: 'value', metavar: 'POOL', help: 'change options of a pool' },
    OPT_O,
    { names: ['--help-drivers'], kind: 'flag', dest: 'help_drivers', help: 'list the drivers and their options' },
    FORMAT_OPTION,
  ],
  positionals: [],
  exclusive: [['list', 'info', 'add', 'remove', 'set', 'help_drivers']],
};
const LEGACY_FLAGS = new Set(['-l', '--list', '-i', '--info', '-a', '--add', '-r', '--remove', '-s', '--set', '--help-drivers', '-o', '--option']);

function isLegacy(argv: readonly string[]): boolean {
  const first = argv[0];
  if (first === undefined) return false;
  const flag = first.startsWith('--') ? first.split('=')[0]! : first.slice(0, 2);
  return LEGACY_FLAGS.has(flag);
}

async function runLegacy(t: ToolContext, argv: readonly string[]): Promise<number | void> {
  const p = parseArgs(LEGACY_SPEC, argv);
  const asJson = isJson(p);
  const opts = p.lists.get('option') ?? [];
  if (p.flags.has('help_drivers')) return doDrivers(t, asJson);
  if (p.values.has('info')) return doInfo(t, p.values.get('info')!, asJson);
  if (p.multis.has('add')) {
    const [pool, driver] = p.multis.get('add')!;
    return doAdd(t, pool!, driver!, opts);
  }
  if (p.values.has('remove')) return doRemove(t, [p.values.get('remove')!]);
  if (p.values.has('set')) return doSet(t, p.values.get('set')!, opts);
  if (opts.length) throw new UsageError('-o goes with -a POOL DRIVER or -s POOL');
  return doList(t, asJson);
}

const HELP = topHelp(
  PROG,
  'Manage storage pools. Without a command: list.',
  SUBS,
  [
    'R4.0 flags (still accepted): -l (list), -i POOL (info), -a POOL DRIVER -o k=v,k=v (add),',
    '-r POOL (remove), -s POOL -o k=v (set), --help-drivers (drivers).',
    `'usage' exits with ${EXIT_ABOVE_THRESHOLD} when a pool is above its threshold (see 'qvm-pool usage --help').`,
  ].join('\n'),
);

await runTool(PROG, async (t) => {
  const argv = process.argv.slice(2);
  if (isLegacy(argv)) return runLegacy(t, argv);
  return dispatchSub(t, argv, SUBS, 'list', HELP);
});

