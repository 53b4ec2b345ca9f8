#!/usr/bin/env node
/**
 * qvm-ls: the domains, as NAME STATE CLASS LABEL TEMPLATE NETVM POOL (the
 * pool of the private volume, or of root when there is no private one).
 */
import { strs, type CommandSpec } from './common/args.js';
import { json, table } from './common/output.js';
import { CliError, runTool } from './common/tool.js';
import { parseProperty, unescapeValue } from '../client/replies.js';
import type { DomainEntry, QubesClient } from '../client/index.js';
import { PermissionDenied } from '../storage/errors.js';

const PROG = 'qvm-ls';
const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'List domains: NAME STATE CLASS LABEL TEMPLATE NETVM POOL.',
  options: [
    { names: ['--running'], kind: 'flag', help: 'only running domains' },
    { names: ['--halted'], kind: 'flag', help: 'only halted domains' },
    {
      names: ['--format'],
      kind: 'value',
      metavar: 'FORMAT',
      choices: ['simple', 'text', 'json'],
      help: "'simple' (aligned columns, the default; also 'text') or 'json'",
    },
  ],
  positionals: [{ name: 'VM', count: '*', help: 'only these domains' }],
  epilog: 'POOL is the pool of the private volume (root when there is none); - for none.',
};

/** The properties the table shows (the only ones read from the one call). */
const SHOWN = ['label', 'template', 'netvm'];

interface Row {
  name: string;
  state: string;
  class: string;
  label: string;
  template: string | null;
  netvm: string | null;
  pool: string | null;
}

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const wanted = strs(p, 'VM');
  const qubes = await t.client();
  const listed = await listDomains(qubes);
  let doms: readonly (Row | DomainEntry)[] = listed;
  const missing = wanted.filter((n) => !doms.some((d) => d.name === n));
  if (missing.length) throw new CliError(`no such domain: ${missing.map((n) => `'${n}'`).join(', ')}`);
  if (wanted.length) doms = doms.filter((d) => wanted.includes(d.name));
  if (p.flags.has('running')) doms = doms.filter((d) => d.state === 'Running');
  if (p.flags.has('halted')) doms = doms.filter((d) => d.state === 'Halted');
  const rows: Row[] = [];
  for (const d of doms) rows.push('klass' in d ? await rowOf(qubes, d) : d);
  if (p.values.get('format') === 'json') return void t.out(json(rows));
  t.out(
    table([
      ['NAME', 'STATE', 'CLASS', 'LABEL', 'TEMPLATE', 'NETVM', 'POOL'],
      ...rows.map((r) => [r.name, r.state, r.class, r.label, r.template ?? '-', r.netvm ?? '-', r.pool ?? '-']),
    ]),
  );
});

/** A property's value as shown: null for none. */
function shown(v: string | undefined): string | null {
  return v === undefined || v === '' ? null : v;
}

/**
 * Every domain's row from one call (admin.vm.ListDetails, this daemon's;
 * read line by line into the rows, nothing else kept: at 1,000 domains the
 * per-domain maps of domainDetails cost more than the rest of the tool,
 * docs/benchmarks.md). Where the policy does not grant that call (or a
 * daemon lacks it), admin.vm.List, and each row is completed after the
 * filters (rowOf) with the calls Qubes' own qvm-ls makes, so a caller
 * granted only those still gets its listing.
 */
async function listDomains(qubes: QubesClient): Promise<Row[] | DomainEntry[]> {
  const rows: Row[] = [];
  /** Per row: its pool is the private volume's (which wins over root's, whichever comes first). */
  const fromPrivate: boolean[] = [];
  try {
    await qubes.readDomainDetails(
      {
        vm(name, klass, state) {
          rows.push({ name, state, class: klass, label: '', template: null, netvm: null, pool: null });
          fromPrivate.push(false);
        },
        property(vm, prop, value) {
          const v = shown(parseProperty(unescapeValue(value)).value);
          const r = rows[vm]!;
          if (prop === 'label') r.label = v ?? '';
          else if (prop === 'template') r.template = v;
          else if (prop === 'netvm') r.netvm = v;
        },
        volume(vm, volume, pool) {
          if (volume === 'private') {
            rows[vm]!.pool = pool;
            fromPrivate[vm] = true;
          } else if (volume === 'root' && !fromPrivate[vm]) rows[vm]!.pool = pool;
        },
      },
      'dom0',
      SHOWN,
    );
    return rows;
  } catch (e) {
    if (!(e instanceof PermissionDenied)) throw e;
  }
  return qubes.domains();
}

/** The row of a domain listed by admin.vm.List: its properties, volumes and the Info of the one volume shown. */
async function rowOf(qubes: QubesClient, d: DomainEntry): Promise<Row> {
  const props = await qubes.properties(d.name);
  const get = (k: string) => shown(props.get(k)?.value);
  const vols = await qubes.volumes(d.name);
  const which = vols.includes('private') ? 'private' : vols.includes('root') ? 'root' : null;
  const pool = which === null ? null : (await qubes.volumeInfo(d.name, which)).pool;
  return { name: d.name, state: d.state, class: d.klass, label: get('label') ?? '', template: get('template'), netvm: get('netvm'), pool };
}
