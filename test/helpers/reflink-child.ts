// Crash child: runs named operations on the reflink test scenario, in order.
// Usage: node reflink-child.js DIR SETUP_CHECK OP [OP...]
// The parent sets QUBES_STORAGE_FAILPOINTS to have it killed mid-operation.
import { scenario, type Scenario } from './reflink-scenario.js';
import { MiB, pattern, writeAt } from './data.js';

export const OPS: Record<string, (s: Scenario) => Promise<void>> = {
  'create-all': async (s) => {
    await s.pool.setup();
    await s.tpl.create();
    await s.app.create();
  },
  'create-app': (s) => s.app.create(),
  'start-tpl': (s) => s.tpl.start(),
  'stop-tpl': (s) => s.tpl.stop(),
  'start-app': (s) => s.app.start(),
  'stop-app': (s) => s.app.stop(),
  'write-tpl-root-A': async (s) => writeAt(await s.tpl.get('root').path(), MiB, pattern(MiB, 1)),
  'write-app-private-A': async (s) => writeAt(await s.app.get('private').path(), 0, pattern(MiB, 2)),
  'write-app-private-B': async (s) => writeAt(await s.app.get('private').path(), 0, pattern(MiB, 3)),
  'write-app-private-C': async (s) => writeAt(await s.app.get('private').path(), 0, pattern(MiB, 4)),
  'revert-app-private': (s) => s.app.get('private').revert(),
  'resize-app-private': (s) => s.app.get('private').resize(6 * MiB),
  'resize-tpl-root': (s) => s.tpl.get('root').resize(12 * MiB),
  'import-app-private': async (s) => {
    const v = s.app.get('private');
    const p = await v.importData(4 * MiB);
    await writeAt(p, 0, pattern(MiB, 5));
    await v.importDataEnd(true);
  },
  'clone-tpl-private-into-app': (s) => s.app.get('private').importVolume(s.tpl.get('private')),
  'remove-app': (s) => s.app.remove(),
};

async function main(): Promise<void> {
  const [dir, setupCheck, ...ops] = process.argv.slice(2);
  const s = scenario(dir!, { setupCheck: setupCheck === 'true', revisionsToKeep: 2 });
  for (const op of ops) {
    const fn = OPS[op];
    if (!fn) throw new Error(`unknown op ${op}`);
    await fn(s);
  }
}

if (process.argv[1]?.endsWith('reflink-child.js')) {
  main().catch((e) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
