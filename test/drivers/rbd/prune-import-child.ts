// Child process of prune-import.ts: does one operation on a StandaloneVM's
// private volume of an rbd pool, then dies by SIGKILL at a chosen point
// (a crash), without closing anything.
// argv: PREFIX VM KEEP ACTION
//   stop-then-die     start, stop, killed as the stop returns (its prune never started)
//   import-then-die   an import writer takes the first half of new data, killed before its end
import { domainOn, makeRbdPool } from './helpers.js';

const MiB = 1024 * 1024;

async function main(): Promise<void> {
  const [prefix, vm, keep, action] = process.argv.slice(2);
  const pool = makeRbdPool({ prefix: prefix!, revisionsToKeep: Number(keep) });
  const v = domainOn(pool, vm!, 'StandaloneVM', null, { root: 8 * MiB, private: 8 * MiB }).get('private');
  if (action === 'stop-then-die') {
    // The crash comes between the stop and its prune. The job may run before stop() resolves (the
    // stop's handles close after the volume lock is released), so it is kept from starting here: the
    // cluster is left exactly as a crash at that point leaves it (the parent checks the extra revision).
    (pool as { queuePrune: unknown }).queuePrune = () => undefined;
    await v.start();
    await v.stop();
    process.kill(process.pid, 'SIGKILL');
  } else if (action === 'import-then-die') {
    const w = await v.importWriter(8 * MiB);
    await w.writev([Buffer.alloc(4 * MiB, 0x6e)], 0);
    process.kill(process.pid, 'SIGKILL');
  } else throw new Error(`unknown action ${action}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
