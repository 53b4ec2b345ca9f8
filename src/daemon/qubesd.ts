#!/usr/bin/env node
/**
 * qubesd: the admin daemon.
 *
 *   qubesd [--socket PATH] [--socket-group GROUP] [--base-dir DIR] [--policy FILE] [--storage-conf FILE] [--init] [--debug]
 *
 * Prints `qubesd: listening on PATH` (stderr) once it accepts calls, then one
 * log line per call. SIGTERM / SIGINT: stop accepting, finish the calls in
 * flight, save, release the state lock, remove the socket, exit 0. SIGHUP
 * re-reads the policy file. Exit 1 when it cannot start (e.g. another
 * daemon or tool holds the state of the base directory, or qubes.xml is
 * missing from a base directory that is not empty, or cannot be read: the
 * message says how to restore it), 2 on bad usage. `--init` makes a new,
 * empty state where qubes.xml is missing even if the base directory is not
 * empty (an empty one needs no flag); an existing qubes.xml is never replaced.
 */
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { stderrLog } from '../admin/dispatch.js';
import { startDaemon, type Daemon } from './daemon.js';

/**
 * The daemon holds a large live heap (the state: ~170 MB at 10,000 domains)
 * and makes short-lived garbage on every call, some of which outlives two
 * young-generation collections and is promoted. By default V8 lets the old
 * generation grow to up to ~4x the live size before the next full collection:
 * at 10,000 domains, RSS after 50,000 Info calls was anywhere between 450 and
 * 750 MB depending on when that collection came. Growing by 25% bounds it
 * (~300 MB); the full collections come more often (19 instead of ~4 in that
 * run), their marking runs incrementally and concurrently, and calls per
 * second did not change measurably (docs/benchmarks.md).
 */
const HEAP_GROWING_PERCENT = 25;
setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);

const USAGE =
  'usage: qubesd [--socket PATH] [--socket-group GROUP] [--base-dir DIR] [--policy FILE] [--storage-conf FILE] [--init] [--debug]';

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        socket: { type: 'string' },
        'socket-group': { type: 'string' },
        'base-dir': { type: 'string' },
        policy: { type: 'string' },
        'storage-conf': { type: 'string' },
        init: { type: 'boolean', default: false },
        debug: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    process.stderr.write(`qubesd: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let daemon: Daemon;
  try {
    daemon = await startDaemon({
      ...(values['base-dir'] !== undefined ? { baseDir: values['base-dir'] } : {}),
      ...(values.socket !== undefined ? { socketPath: values.socket } : {}),
      ...(values.policy !== undefined ? { policyFile: values.policy } : {}),
      ...(values['socket-group'] !== undefined ? { socketGroup: values['socket-group'] } : {}),
      ...(values['storage-conf'] !== undefined ? { storageConf: values['storage-conf'] } : {}),
      init: values.init ?? false,
      debug: values.debug ?? false,
      log: stderrLog,
    });
  } catch (e) {
    stderrLog.error(`cannot start: ${values.debug ? String((e as Error).stack ?? e) : (e as Error).message}`);
    return 1;
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) {
        stderrLog.info(`${signal}: already stopping (waiting for calls in flight)`);
        return;
      }
      stopping = true;
      stderrLog.info(`${signal}: stopping`);
      daemon.stop().then(
        () => {
          stderrLog.info('stopped');
          resolve(0);
        },
        (e: unknown) => {
          stderrLog.error(`stopping failed: ${(e as Error).message}`);
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => void daemon.reloadPolicy());
  });
}

process.exitCode = await main();
// Nothing else should keep the process alive once stopped; make sure of it.
process.exit();
