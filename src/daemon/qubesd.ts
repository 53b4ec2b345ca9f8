#!/usr/bin/env node
/**
 * qubesd: the admin daemon.
 *
 *   qubesd [--socket PATH] [--socket-group GROUP] [--base-dir DIR] [--policy FILE] [--storage-conf FILE] [--init] [--debug] [--internal-socket PATH] [--runtime bookkeeping|qemu]
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
import { setFlagsFromString } from 'node:v8';
import { stderrLog } from '../admin/dispatch.js';
// The tools' parser: one argument parser in the project (why not node:util parseArgs: src/cli/README.md).
import { helpText, parseArgs, usageLine, type CommandSpec } from '../cli/common/args.js';
import { runtimeSetting, type ChosenRuntime } from '../runtime/setting.js';
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

const SPEC: CommandSpec = {
  prog: 'qubesd',
  summary: 'The admin daemon: answers the Qubes admin API on a Unix socket.',
  options: [
    { names: ['--socket'], kind: 'value', metavar: 'PATH', help: 'the socket (default QUBESD_SOCKET, else BASE/qubesd.sock; mode 0660)' },
    { names: ['--socket-group'], kind: 'value', metavar: 'GROUP', help: "the socket's group (default qubes if it exists, else 0)" },
    { names: ['--base-dir'], kind: 'value', metavar: 'DIR', help: 'the state (default QUBES_BASE_DIR, else /var/lib/qubes for root)' },
    { names: ['--policy'], kind: 'value', metavar: 'FILE', help: 'which caller may call which method (default: dom0 only)' },
    { names: ['--storage-conf'], kind: 'value', metavar: 'FILE', help: 'R3.2 pools (default QUBES_STORAGE_CONF, else /etc/qubes/storage.conf for root on /var/lib/qubes, else BASE/storage.conf)' },
    { names: ['--init'], kind: 'flag', help: 'make a new, empty state where qubes.xml is missing' },
    { names: ['--debug'], kind: 'flag', help: 'stack traces in the log' },
    {
      names: ['--internal-socket'],
      kind: 'value',
      metavar: 'PATH',
      help: 'the internal socket of the import service (default QUBESD_INTERNAL_SOCKET, else beside the socket: qubesd.internal.sock; mode 0600)',
    },
    {
      names: ['--runtime'],
      kind: 'value',
      metavar: 'NAME',
      help: 'what runs domains: bookkeeping (records the power state only) or qemu (boots them) (default QUBES_STORAGE_RUNTIME, else qemu where qemu-system-x86_64 (QUBES_STORAGE_QEMU) is installed, else bookkeeping)',
    },
  ],
  positionals: [],
};

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(SPEC, process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`qubesd: error: ${(e as Error).message}\n${usageLine(SPEC)}\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(helpText(SPEC));
    return 0;
  }
  const { values, flags } = parsed;
  const debug = flags.has('debug');
  let domainRuntime: ChosenRuntime;
  try {
    domainRuntime = await runtimeSetting(values.get('runtime'));
  } catch (e) {
    process.stderr.write(`qubesd: error: ${(e as Error).message}\n${usageLine(SPEC)}\n`);
    return 2;
  }
  // Which runtime, and why (an explicit choice, or the default where qemu is or is not installed).
  stderrLog.info(`runtime ${domainRuntime.kind} (${domainRuntime.why})`);
  let daemon: Daemon;
  try {
    daemon = await startDaemon({
      ...(values.has('base_dir') ? { baseDir: values.get('base_dir')! } : {}),
      ...(values.has('socket') ? { socketPath: values.get('socket')! } : {}),
      ...(values.has('internal_socket') ? { internalSocketPath: values.get('internal_socket')! } : {}),
      ...(values.has('policy') ? { policyFile: values.get('policy')! } : {}),
      ...(values.has('socket_group') ? { socketGroup: values.get('socket_group')! } : {}),
      ...(values.has('storage_conf') ? { storageConf: values.get('storage_conf')! } : {}),
      init: flags.has('init'),
      runtime: { domainRuntime },
      debug,
      log: stderrLog,
    });
  } catch (e) {
    stderrLog.error(`cannot start: ${debug ? String((e as Error).stack ?? e) : (e as Error).message}`);
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
