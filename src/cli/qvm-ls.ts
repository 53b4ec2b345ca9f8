#!/usr/bin/env node
/**
 * qvm-ls: the domains, as NAME STATE CLASS LABEL TEMPLATE NETVM POOL (the
 * pool of the private volume, or of root when there is no private one).
 */
import { strs, type CommandSpec } from './common/args.js';
import { json, table } from './common/output.js';
import { CliError, runTool } from './common/tool.js';

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
  let doms = await qubes.domains();
  const missing = wanted.filter((n) => !doms.some((d) => d.name === n));
  if (missing.length) throw new CliError(`no such domain: ${missing.map((n) => `'${n}'`).join(', ')}`);
  if (wanted.length) doms = doms.filter((d) => wanted.includes(d.name));
  if (p.flags.has('running')) doms = doms.filter((d) => d.state === 'Running');
  if (p.flags.has('halted')) doms = doms.filter((d) => d.state === 'Halted');
  const rows: Row[] = [];
  for (const d of doms) {
    const props = await qubes.properties(d.name);
    const get = (k: string) => {
      const v = props.get(k)?.value;
      return v === undefined || v === '' ? null : v;
    };
    const vols = await qubes.volumes(d.name);
    const which = vols.includes('private') ? 'private' : vols.includes('root') ? 'root' : null;
    const pool = which ? (await qubes.volumeInfo(d.name, which)).pool : null;
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
