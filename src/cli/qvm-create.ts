#!/usr/bin/env node
/**
 * qvm-create: makes a new domain. `-P POOL` puts its volumes in POOL
 * (the R3.2 spelling `-Pfoo` works), `--pool VOLUME=POOL` chooses per
 * volume; the two are exclusive. A StandaloneVM or TemplateVM with
 * --template gets a copy of that domain's volumes.
 *
 * What only some calls need (the copy's progress, the words of one error)
 * is imported where it is used: a plain create loads no more modules than
 * qvm-ls (docs/benchmarks.md, tool start-up).
 */
import { str, UsageError, type CommandSpec } from './common/args.js';
import { checkPools, DOMAIN_CLASSES, undoCreate, volumePoolArgs } from './common/domains.js';
import { CliError, runTool } from './common/tool.js';

const PROG = 'qvm-create';

const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Create a new domain.',
  options: [
    { names: ['-C', '--class'], kind: 'value', dest: 'class', metavar: 'CLASS', help: `${DOMAIN_CLASSES.join(', ')} (default AppVM)` },
    { names: ['-t', '--template'], kind: 'value', metavar: 'TEMPLATE', help: 'its template (StandaloneVM, TemplateVM: copy its volumes)' },
    { names: ['-l', '--label'], kind: 'value', metavar: 'LABEL', help: 'its label (colour): red, orange, yellow, green, gray, blue, purple, black' },
    { names: ['-P'], kind: 'value', dest: 'one_pool', metavar: 'POOL', help: 'put all its volumes in POOL (also -PPOOL, as in R3.2)' },
    { names: ['--pool'], kind: 'append', dest: 'pool', metavar: 'VOLUME=POOL', help: 'put one volume in POOL (repeatable; not with -P)' },
    { names: ['--property', '--prop'], kind: 'append', dest: 'property', metavar: 'NAME=VALUE', help: 'set a property (repeatable)' },
  ],
  positionals: [{ name: 'NAME', help: 'the name of the new domain' }],
  exclusive: [['one_pool', 'pool']],
  epilog: 'examples:\n  qvm-create --template fedora --label red work\n  qvm-create -Pfast --label blue work2\n  qvm-create --class TemplateVM --label black --pool root=fast tpl',
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const name = str(p, 'NAME');
  const klass = p.values.get('class') ?? 'AppVM';
  if (!DOMAIN_CLASSES.includes(klass)) throw new UsageError(`unknown class '${klass}' (choose from ${DOMAIN_CLASSES.join(', ')})`);
  const label = p.values.get('label');
  if (label === undefined) throw new UsageError('the following arguments are required: --label');
  const template = p.values.get('template');
  const pool = p.values.get('one_pool');
  const pools = volumePoolArgs(p.lists.get('pool') ?? []);
  const props: [string, string][] = (p.lists.get('property') ?? []).map((v) => {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new UsageError(`--property expects NAME=VALUE, got '${v}'`);
    return [v.slice(0, eq), v.slice(eq + 1)];
  });
  const copyFrom = template !== undefined && (klass === 'StandaloneVM' || klass === 'TemplateVM') ? template : undefined;
  if (template !== undefined && klass !== 'AppVM' && klass !== 'DispVM' && copyFrom === undefined) {
    const { withArticle } = await import('../domain/names.js');
    throw new UsageError(`${withArticle(klass)} takes no --template`);
  }

  const qubes = await t.client();
  // Everything checked before anything is made.
  const labels = await qubes.labels();
  if (!labels.includes(label)) throw new CliError(`no such label '${label}' (labels: ${labels.join(', ')})`);
  const domains = await qubes.domains();
  if (domains.some((d) => d.name === name)) throw new CliError(`a domain named '${name}' already exists`);
  if (template !== undefined && !domains.some((d) => d.name === template)) throw new CliError(`no such domain: '${template}' (given as --template)`);
  await checkPools(qubes, [...(pool !== undefined ? [pool] : []), ...pools.map(([, pl]) => pl)]);

  // A copied template is not the new domain's template (a StandaloneVM or TemplateVM takes none).
  const templateArg = copyFrom === undefined ? template : undefined;
  await qubes.createDomain({
    name,
    klass,
    label,
    ...(templateArg !== undefined ? { template: templateArg } : {}),
    ...(pool !== undefined ? { pool } : {}),
    volumePools: pools,
  });
  try {
    for (const [k, v] of props) await qubes.setProperty(name, k, v);
    if (copyFrom !== undefined) {
      const { busyIndicator } = await import('./common/progress.js');
      await qubes.copyVolumes(copyFrom, name, (vol, size) => busyIndicator(`copy ${copyFrom}:${vol} (${size} bytes)`));
    }
  } catch (e) {
    await undoCreate(qubes, name, (m) => t.warn(m));
    throw e;
  }
});
