#!/usr/bin/env node
/**
 * qvm-shutdown: stops domains (their volumes commit: a new revision).
 * --wait returns only when every one is halted (events: domain-shutdown),
 * at most --timeout seconds.
 */
import { strs, UsageError, type CommandSpec } from './common/args.js';
import { checkDomains } from './common/domains.js';
import { runTool } from './common/tool.js';

const PROG = 'qvm-shutdown';
const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Shut domains down. Halted ones are left alone.',
  options: [
    { names: ['--wait'], kind: 'flag', help: 'wait until they are halted' },
    { names: ['--timeout'], kind: 'value', metavar: 'SECONDS', help: 'with --wait: give up after this long (default 60)' },
    { names: ['--force'], kind: 'flag', help: 'also when other domains depend on them' },
  ],
  positionals: [{ name: 'VM', count: '+', help: 'the domains' }],
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const names = [...new Set(strs(p, 'VM'))];
  const wait = p.flags.has('wait');
  const timeoutText = p.values.get('timeout') ?? '60';
  if (!/^\d+$/.test(timeoutText)) throw new UsageError(`--timeout expects seconds, got '${timeoutText}'`);
  const qubes = await t.client();
  await checkDomains(qubes, names);

  const halted = new Set<string>();
  const sub = wait
    ? qubes.events('dom0', (e) => {
        if (e.event === 'domain-shutdown') halted.add(e.subject);
      })
    : null;
  let failed = 0;
  try {
    await sub?.established;
    const pending: string[] = [];
    for (const n of names) {
      try {
        if ((await qubes.powerState(n)) !== 'Running') continue;
        await qubes.shutdownDomain(n, { force: p.flags.has('force'), wait });
        pending.push(n);
      } catch (e) {
        failed++;
        t.note(`${PROG}: error: ${(e as Error).message}`);
      }
    }
    if (wait) {
      const deadline = Date.now() + Number(timeoutText) * 1000;
      for (;;) {
        const left: string[] = [];
        for (const n of pending) if (!halted.has(n) && (await qubes.powerState(n)) !== 'Halted') left.push(n);
        if (!left.length) break;
        if (Date.now() >= deadline) {
          t.note(`${PROG}: error: still running after ${timeoutText} s: ${left.join(', ')}`);
          failed++;
          break;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  } finally {
    sub?.close();
  }
  return failed ? 1 : 0;
});
