#!/usr/bin/env node
/**
 * qvm-prefs: the properties of a domain. `VM` lists them (`NAME  D  VALUE`,
 * D marking a default value, `-` one that is set), `VM PROP` prints one,
 * `VM PROP VALUE` sets it, `-D VM PROP` resets it to its default.
 */
import { optStr, str, type CommandSpec } from './common/args.js';
import { json } from './common/output.js';
import { FORMAT_OPTION } from './common/subcommands.js';
import { CliError, runTool } from './common/tool.js';

const PROG = 'qvm-prefs';
const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'List, get, set or reset properties of a domain.',
  options: [
    { names: ['-D', '--default'], kind: 'flag', dest: 'default', help: 'reset PROPERTY to its default value' },
    FORMAT_OPTION,
  ],
  positionals: [
    { name: 'VM', help: 'the domain' },
    { name: 'PROPERTY', count: '?', help: 'the property' },
    { name: 'VALUE', count: '?', help: 'its new value' },
  ],
  epilog: "In the list, 'D' marks a property at its default value, '-' one that is set.",
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const vm = str(p, 'VM');
  const prop = optStr(p, 'PROPERTY');
  const value = optStr(p, 'VALUE');
  const reset = p.flags.has('default');
  if (reset && (prop === undefined || value !== undefined)) throw new CliError('-D takes VM and PROPERTY, and no VALUE');
  const qubes = await t.client();
  await qubes.domain(vm);
  if (prop === undefined) {
    const all = await qubes.properties(vm);
    if (p.values.get('format') === 'json') {
      t.out(json(Object.fromEntries([...all].map(([k, v]) => [k, { value: v.value, default: v.isDefault, type: v.type }]))));
      return;
    }
    const width = Math.max(0, ...[...all.keys()].map((k) => k.length));
    for (const [k, v] of all) t.out(`${k.padEnd(width)}  ${v.isDefault ? 'D' : '-'}  ${v.value}`.replace(/\s+$/, '') + '\n');
    return;
  }
  const names = await qubes.propertyNames(vm);
  if (!names.includes(prop)) throw new CliError(`domain ${vm} has no property '${prop}'`);
  if (reset) return void (await qubes.resetProperty(vm, prop));
  if (value !== undefined) return void (await qubes.setProperty(vm, prop, value));
  const v = await qubes.property(vm, prop);
  t.out(p.values.get('format') === 'json' ? json({ value: v.value, default: v.isDefault, type: v.type }) : `${v.value}\n`);
});
