#!/usr/bin/env node
/**
 * qvm-clone: a new domain with the class, template, label, properties,
 * tags and features of SRC and a copy of each of its volumes that keeps
 * data: in the source's pools (where they are not the default ones), all
 * in the pool given with -P, or per volume with --pool VOLUME=POOL. All or nothing: if a step fails, the new
 * domain is removed again.
 */
import { str, type CommandSpec } from './common/args.js';
import { checkPools, undoCreate, volumePoolArgs } from './common/domains.js';
import { busyIndicator } from './common/progress.js';
import { humanSize } from './common/output.js';
import { CliError, runTool } from './common/tool.js';

const PROG = 'qvm-clone';
/** Identity and what Create already set: not copied. */
const NOT_COPIED = new Set(['name', 'qid', 'uuid', 'klass', 'label', 'template', 'installed_by_rpm']);

const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Clone a domain: same class, template, label, properties, tags and features, and a copy of its volumes.',
  options: [
    { names: ['-P'], kind: 'value', dest: 'one_pool', metavar: 'POOL', help: 'put the copy in POOL (snapshots stay with their template)' },
    { names: ['-p', '--pool'], kind: 'append', dest: 'pool', metavar: 'VOLUME=POOL', help: 'put one volume of the copy in POOL (repeatable; not with -P)' },
  ],
  exclusive: [['one_pool', 'pool']],
  epilog: "without -P or --pool, each volume of the copy goes to the source's pool where that is not the default pool for it, else to the default pool",
  positionals: [
    { name: 'SRC', help: 'the domain to clone' },
    { name: 'DST', help: 'the name of the new domain' },
  ],
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const src = str(p, 'SRC');
  const dst = str(p, 'DST');
  const pool = p.values.get('one_pool');
  const pools = volumePoolArgs(p.lists.get('pool') ?? []);
  const qubes = await t.client();
  const domains = await qubes.domains();
  const s = domains.find((d) => d.name === src);
  if (!s) throw new CliError(`no such domain: '${src}'`);
  if (s.klass === 'AdminVM') throw new CliError('dom0 cannot be cloned');
  if (domains.some((d) => d.name === dst)) throw new CliError(`a domain named '${dst}' already exists`);
  await checkPools(qubes, [...(pool !== undefined ? [pool] : []), ...pools.map(([, pl]) => pl)]);

  const props = await qubes.properties(src);
  const label = props.get('label')?.value ?? '';
  const template = s.klass === 'AppVM' || s.klass === 'DispVM' ? (props.get('template')?.value ?? '') : '';
  // Without -P or --pool, each volume stays in the source's pool where that is not its default one (as the stock clone_vm).
  const where = pool !== undefined ? { pool } : { volumePools: pools.length ? pools : await qubes.sourcePools(src) };
  await qubes.createDomain({ name: dst, klass: s.klass, label, template, ...where });
  try {
    for (const [name, v] of props) {
      if (NOT_COPIED.has(name) || v.isDefault) continue;
      await qubes.setProperty(dst, name, v.value);
    }
    const have = new Set(await qubes.tags(dst));
    for (const tag of await qubes.tags(src)) if (!have.has(tag)) await qubes.addTag(dst, tag);
    for (const [f, v] of await qubes.features(src)) await qubes.setFeature(dst, f, v);
    await qubes.copyVolumes(src, dst, (vol, size) => busyIndicator(`clone ${src}:${vol} (${humanSize(size)})`));
  } catch (e) {
    await undoCreate(qubes, dst, (m) => t.warn(m));
    throw e;
  }
});
