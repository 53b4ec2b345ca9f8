#!/usr/bin/env node
/** qvm-start: starts domains (their volumes get their working copies). */
import { strs, type CommandSpec } from './common/args.js';
import { checkDomains } from './common/domains.js';
import { runTool } from './common/tool.js';

const PROG = 'qvm-start';
const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Start domains.',
  options: [{ names: ['--skip-if-running'], kind: 'flag', dest: 'skip', help: 'a running domain is not an error' }],
  positionals: [{ name: 'VM', count: '+', help: 'the domains' }],
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const names = [...new Set(strs(p, 'VM'))];
  const qubes = await t.client();
  await checkDomains(qubes, names);
  let failed = 0;
  for (const n of names) {
    try {
      if ((await qubes.powerState(n)) === 'Running') {
        if (p.flags.has('skip')) continue;
        throw new Error(`domain ${n} is already running`);
      }
      await qubes.startDomain(n);
    } catch (e) {
      failed++;
      t.note(`${PROG}: error: ${(e as Error).message}`);
    }
  }
  return failed ? 1 : 0;
});
