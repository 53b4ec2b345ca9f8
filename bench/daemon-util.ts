// Helpers for the scenarios that talk to the admin daemon: a child `qubesd`
// (its own process, as in production), readiness, RSS, bounded concurrency.
// Everything here is started by the bench and ended by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../src/admin/client.js';
import { qubesdEnv } from '../test/daemon/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/src/daemon/qubesd.js, next to this compiled file's dist/bench. */
export const QUBESD_JS = path.resolve(here, '../src/daemon/qubesd.js');

export interface ChildDaemon {
  readonly pid: number;
  readonly socketPath: string;
  /** Milliseconds from spawn to the first answered call. */
  readonly readyMs: number;
  /** Resident set size in bytes (/proc/PID/status VmRSS). */
  rss(): number;
  /** SIGTERM (clean stop: saves), then waits; SIGKILL after 30 s. Idempotent. */
  stop(): Promise<void>;
}

export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
  });
}

/**
 * Starts `node qubesd.js --base-dir BASE --socket SOCK`, its log (one line
 * per call) going to `logFile`, and waits until it answers a call.
 */
export async function startChildQubesd(baseDir: string, socketPath: string, logFile: string, timeoutMs = 120_000): Promise<ChildDaemon> {
  const log = fs.openSync(logFile, 'a');
  const t0 = process.hrtime.bigint();
  // The bench's domains have fake kernels: the bookkeeping runtime (qemu is the default where installed).
  const child = spawn(process.execPath, [QUBESD_JS, '--base-dir', baseDir, '--socket', socketPath], {
    stdio: ['ignore', log, log],
    env: qubesdEnv(process.env),
  });
  fs.closeSync(log);
  const pid = child.pid!;
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited(child);
      clearTimeout(timer);
    })();
    return stopping;
  };
  const client = new AdminClient({ socketPath, timeoutMs: 5_000 });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`qubesd exited with ${child.exitCode} before answering; see ${logFile}`);
    try {
      await client.call('admin.vm.CurrentState', 'dom0');
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`qubesd did not answer within ${timeoutMs} ms; see ${logFile}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const readyMs = Number(process.hrtime.bigint() - t0) / 1e6;
  return { pid, socketPath, readyMs, rss: () => rssOf(pid), stop };
}

/** Runs fn over items with at most `concurrency` at a time; results in item order. */
export async function mapLimit<T, R>(items: readonly T[], concurrency: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return out;
}

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;
