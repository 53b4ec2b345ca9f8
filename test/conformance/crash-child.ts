// Child process of the conformance crash tests: opens the pool from its
// driver name and options, runs the named operations of crash-scenario.ts in
// order. With QUBES_STORAGE_FAILPOINTS set it is killed (SIGKILL) there; with
// QUBES_STORAGE_FAILPOINT_TRACE set it prints the failpoints it passed.
// argv: DRIVER POOL OPTIONS-JSON IO(file|rbd) SNAPSHOT(0|1) OP...
import { reached } from '../../src/files/failpoint.js';
import { openPool } from './open-pool.js';
import { crashOps, crashScenario } from './crash-scenario.js';
import { fileIo, type VolumeIo } from './target.js';

async function main(): Promise<void> {
  const [driver, name, options, ioName, withSnapshot, ...ops] = process.argv.slice(2);
  const io: VolumeIo = ioName === 'rbd' ? (await import('./rbd-io.js')).rbdIo : fileIo;
  const pool = await openPool(driver!, name!, JSON.parse(options!) as Record<string, string | number | boolean>);
  const run = crashOps(crashScenario(pool, withSnapshot === '1'), io);
  for (const op of ops) {
    const fn = run[op];
    if (!fn) throw new Error(`unknown op ${op}`);
    await fn();
  }
  if (process.env['QUBES_STORAGE_FAILPOINT_TRACE']) process.stdout.write(`REACHED ${JSON.stringify([...reached])}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
