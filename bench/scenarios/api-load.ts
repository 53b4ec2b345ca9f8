// Scenario "api-load": admin.vm.volume.Info and admin.vm.List calls per
// second, and p50/p99 latency, with 1, 16 and 64 clients calling back to
// back (each call its own connection, as qubesadmin does), against a child
// qubesd. Baseline: a child echo server on the same kind of Unix socket with
// the same framing, answering as many bytes as the real reply, measured in the
// same run, interleaved round by round. Each run is bounded in calls and time.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../../src/admin/client.js';
import { mapLimit, startChildQubesd } from '../daemon-util.js';
import { figure, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const ECHO_JS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../echo-server.js');
const APPVMS = 50;

interface Load {
  callsPerSec: number;
  /** CPU time (user + system, all threads) the server process spent per call, in microseconds. */
  serverCpuUs: number;
  p50: number;
  p99: number;
  errors: number;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** CPU time of a process so far (utime + stime of /proc/PID/stat), in microseconds. */
function cpuUs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS;
}
/** USER_HZ, 100 on Linux. */
const CLOCK_TICKS = 100;

/** `clients` loops calling `call` back to back until `maxCalls` are made or `maxMs` passed; `serverPid`'s CPU time is counted. */
async function load(clients: number, maxCalls: number, maxMs: number, serverPid: number, call: () => Promise<unknown>): Promise<Load> {
  const lat: number[] = [];
  let started = 0;
  let errors = 0;
  const cpu0 = cpuUs(serverPid);
  const t0 = process.hrtime.bigint();
  const deadline = Date.now() + maxMs;
  const worker = async () => {
    while (started < maxCalls && Date.now() < deadline) {
      started++;
      const s = process.hrtime.bigint();
      try {
        await call();
      } catch {
        errors++;
      }
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  const serverCpuUs = (cpuUs(serverPid) - cpu0) / Math.max(1, lat.length);
  lat.sort((a, b) => a - b);
  return { callsPerSec: lat.length / sec, serverCpuUs, p50: pct(lat, 50), p99: pct(lat, 99), errors };
}

function startEcho(socketPath: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ECHO_JS, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`echo server exited with ${code}`)));
    child.stdout!.once('data', () => resolve(child));
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await done;
  clearTimeout(t);
}

export const apiLoad: Scenario = {
  name: 'api-load',
  describe: `admin.vm.volume.Info and admin.vm.List (${APPVMS} AppVMs) calls/s and p50/p99 latency at 1, 16, 64 clients vs an echo server`,
  async run(opts) {
    const levels = [1, 16, 64];
    const rounds = opts.quick ? 1 : 3;
    const maxMs = opts.quick ? 300 : 2500;
    const maxCalls = opts.quick ? 300 : 30_000;
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-bench-api-'));
    let daemon: Awaited<ReturnType<typeof startChildQubesd>> | undefined;
    let echo: ChildProcess | undefined;
    try {
      const sock = path.join(work, 'qubesd.sock');
      const echoSock = path.join(work, 'echo.sock');
      daemon = await startChildQubesd(path.join(work, 'qubes'), sock, path.join(work, 'qubesd.log'));
      echo = await startEcho(echoSock);
      const q = new AdminClient({ socketPath: sock, timeoutMs: 30_000 });
      const e = new AdminClient({ socketPath: echoSock, timeoutMs: 30_000 });
      await q.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
      await mapLimit(
        Array.from({ length: APPVMS }, (_, i) => `work${i}`),
        8,
        (name) => q.call('admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${name} label=red`),
      );
      const infoBytes = (await q.call('admin.vm.volume.Info', 'work0', 'private')).length;
      const listBytes = (await q.call('admin.vm.List', 'dom0')).length;
      const calls: Record<string, { real: () => Promise<unknown>; echo: () => Promise<unknown>; bytes: number }> = {
        Info: { real: () => q.call('admin.vm.volume.Info', 'work7', 'private'), echo: () => e.call('bench.Echo', 'dom0', String(infoBytes)), bytes: infoBytes },
        List: { real: () => q.call('admin.vm.List', 'dom0'), echo: () => e.call('bench.Echo', 'dom0', String(listBytes)), bytes: listBytes },
      };
      const samples: Record<string, Load[]> = {};
      const add = (k: string, l: Load) => (samples[k] ??= []).push(l);
      for (let r = 0; r < rounds; r++) {
        for (const [m, c] of Object.entries(calls)) {
          for (const n of levels) {
            // alternate which goes first
            const pair: [string, number, () => Promise<unknown>][] = [[`${m}.${n}`, daemon.pid, c.real], [`echo-${m}.${n}`, echo.pid!, c.echo]];
            if (r % 2) pair.reverse();
            for (const [k, pid, fn] of pair) add(k, await load(n, maxCalls, maxMs, pid, fn));
          }
        }
      }
      const figures: Figure[] = [];
      let errors = 0;
      for (const m of Object.keys(calls)) {
        for (const n of levels) {
          const real = samples[`${m}.${n}`]!;
          const base = samples[`echo-${m}.${n}`]!;
          errors += real.reduce((s, l) => s + l.errors, 0) + base.reduce((s, l) => s + l.errors, 0);
          const bRate = figure(`api.echo.${m}.c${n}.calls/s`, 'calls/s', base.map((l) => l.callsPerSec));
          const target16 = n === 16 ? '>= 5000 calls/s' : '';
          figures.push(bRate);
          figures.push(withBaseline(figure(`api.${m}.c${n}.calls/s`, 'calls/s', real.map((l) => l.callsPerSec), { target: target16 }), bRate));
          const bP50 = figure(`api.echo.${m}.c${n}.p50`, 'ms', base.map((l) => l.p50));
          const bP99 = figure(`api.echo.${m}.c${n}.p99`, 'ms', base.map((l) => l.p99));
          figures.push(withBaseline(figure(`api.${m}.c${n}.p50`, 'ms', real.map((l) => l.p50)), bP50));
          figures.push(withBaseline(figure(`api.${m}.c${n}.p99`, 'ms', real.map((l) => l.p99), { target: n === 16 ? '< 10 ms' : '' }), bP99));
          // What a call costs the server, whatever else the machine runs (the rates above share its CPUs).
          const bCpu = figure(`api.echo.${m}.c${n}.server-cpu`, 'us/call', base.map((l) => l.serverCpuUs));
          figures.push(bCpu);
          figures.push(withBaseline(figure(`api.${m}.c${n}.server-cpu`, 'us/call', real.map((l) => l.serverCpuUs)), bCpu));
        }
      }
      if (errors) throw new Error(`api-load: ${errors} calls failed`);
      return {
        figures,
        notes: [
          `child qubesd (log to a file, one line per call) and child echo server; clients in the bench process; ${os.cpus().length} CPUs`,
          'server-cpu: user + system CPU time of the server process (all its threads) per call, from /proc/PID/stat (10 ms ticks)',
          `each run: at most ${maxCalls} calls or ${maxMs} ms; ${rounds} rounds, real and echo alternating first; replies ${infoBytes} B (Info), ${listBytes} B (List)`,
        ],
      };
    } finally {
      if (echo) await stopChild(echo);
      await daemon?.stop();
      await fs.rm(work, { recursive: true, force: true });
    }
  },
};
