#!/usr/bin/env node
/**
 * qvm-ls: the domains, as NAME STATE CLASS LABEL TEMPLATE NETVM POOL (the
 * pool of the private volume, or of root when there is no private one).
 */
import { strs, type CommandSpec } from './common/args.js';
import { json, table } from './common/output.js';
import { CliError, runTool } from './common/tool.js';
import type { PropertyValue, QubesClient } from '../client/index.js';
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
  let doms = await listDomains(qubes);
  const missing = wanted.filter((n) => !doms.some((d) => d.name === n));
  if (missing.length) throw new CliError(`no such domain: ${missing.map((n) => `'${n}'`).join(', ')}`);
  if (wanted.length) doms = doms.filter((d) => wanted.includes(d.name));
  if (p.flags.has('running')) doms = doms.filter((d) => d.state === 'Running');
  if (p.flags.has('halted')) doms = doms.filter((d) => d.state === 'Halted');
  const rows: Row[] = [];
  for (const d of doms) {
    const props = d.properties ?? (await qubes.properties(d.name));
    const get = (k: string) => {
      const v = props.get(k)?.value;
      return v === undefined || v === '' ? null : v;
    };
    const vols = d.volumePools ?? new Map((await qubes.volumes(d.name)).map((v) => [v, null]));
    const which = vols.has('private') ? 'private' : vols.has('root') ? 'root' : null;
    const pool = which === null ? null : (vols.get(which) ?? (await qubes.volumeInfo(d.name, which)).pool);
    rows.push({ name: d.name, state: d.state, class: d.klass, label: get('label') ?? '', template: get('template'), netvm: get('netvm'), pool });
  }
  if (p.values.get('format') === 'json') return void t.out(json(rows));
  t.out(
    table([
      ['NAME', 'STATE', 'CLASS', 'LABEL', 'TEMPLATE', 'NETVM', 'POOL'],
      ...rows.map((r) => [r.name, r.state, r.class, r.label, r.template ?? '-', r.netvm ?? '-', r.pool ?? '-']),
    ]),
  );
});

/** A listed domain; its properties and volume pools when the one call gave them, else read per domain (after the filters). */
interface Listed {
  readonly name: string;
  readonly state: string;
  readonly klass: string;
  readonly properties?: ReadonlyMap<string, PropertyValue>;
  /** Volume name -> its pool. */
  readonly volumePools?: ReadonlyMap<string, string>;
}

/**
 * Every domain in one call (admin.vm.ListDetails, this daemon's; only the
 * properties shown are kept); where the policy does not grant that call (or
 * a daemon lacks it), the calls Qubes' own qvm-ls makes: admin.vm.List,
 * then per domain its properties, volumes and the Info of the one volume
 * shown, so a caller granted only those still gets its listing.
 */
async function listDomains(qubes: QubesClient): Promise<Listed[]> {
  try {
    return await qubes.domainDetails('dom0', SHOWN);
  } catch (e) {
    if (!(e instanceof PermissionDenied)) throw e;
  }
  return qubes.domains();
}
