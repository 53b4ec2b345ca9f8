#!/usr/bin/env node
/** qvm-remove: removes domains and their volumes, after a y/N question unless -f. */
import { strs, type CommandSpec } from './common/args.js';
import { checkDomains } from './common/domains.js';
import { CliExit, runTool } from './common/tool.js';

const PROG = 'qvm-remove';
const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Remove domains and all their volumes (refused while running or used by another domain).',
  options: [{ names: ['-f', '--force'], kind: 'flag', dest: 'force', help: 'do not ask' }],
  positionals: [{ name: 'VM', count: '+', help: 'the domains' }],
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const names = [...new Set(strs(p, 'VM'))];
  const qubes = await t.client();
  await checkDomains(qubes, names);
  if (!p.flags.has('force')) {
    t.note(`This will completely remove these domains and all their data:\n${names.map((n) => `  ${n}`).join('\n')}`);
    const { askYesNo } = await import('./common/prompt.js'); // readline: only when asking
    const a = await askYesNo('Are you sure?');
    if (!a.yes) throw new CliExit(1, a.reason ? `${a.reason}; nothing removed` : 'cancelled; nothing removed');
  }
  let failed = 0;
  for (const n of names) {
    try {
      await qubes.removeDomain(n);
    } catch (e) {
      failed++;
      t.note(`${PROG}: error: ${n}: ${(e as Error).message}`);
    }
  }
  return failed ? 1 : 0;
});
