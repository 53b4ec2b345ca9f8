// The crash-campaign child's daemon runs: the planned operations are sent
// as admin API calls over the socket of a real daemon (daemon-proc.ts) that
// this child starts; the failpoints (and their power cut) are in the daemon.
// Acknowledged means the daemon replied. The child prints `D PID` (the
// daemon's pid, so the parent can kill it on a timer) and `R` once the
// daemon listens; it exits with DAEMON_DIED when the daemon died under a
// call (killed at its failpoint).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../../src/admin/client.js';
import { RUN_STATE_FILE } from '../../src/runtime/bookkeeping.js';
import { cutPowerIfAsked } from '../../src/files/failpoint.js';
import { pattern } from '../helpers/data.js';
import { campaignPoolOptions, type Op } from './child.js';

export const DAEMON_DIED = 3;
const DAEMON = path.join(path.dirname(fileURLToPath(import.meta.url)), 'daemon-proc.js');
const PAGE = 4096;

type Log = (i: number, s: string, extra?: Record<string, unknown>) => void;

export async function runViaDaemon(
  dir: string,
  reflink: boolean,
  ops: Op[],
  log: Log,
  sha: (b: Buffer) => string,
  socketDir: string,
): Promise<void> {
  // Every child is a new boot as far as domains go (there is no hypervisor whose domains outlive a
  // crash of the daemon): what a killed daemon recorded as running is not running any more.
  fs.rmSync(path.join(dir, RUN_STATE_FILE), { force: true });
  // Beside the journal: the parent's temporary directory, removed by the parent even when this
  // child is killed (a socket path must be short: at most 107 bytes).
  const socketPath = path.join(socketDir, 'qubesd.sock');
  const daemon = spawn(process.execPath, [DAEMON, dir, socketPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  process.stdout.write(`D ${daemon.pid}\n`);
  let died = false;
  const exited = new Promise<void>((resolve) =>
    daemon.on('exit', () => {
      died = true;
      resolve();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    let err = '';
    daemon.stderr.on('data', (b: Buffer) => {
      err += b.toString();
      if (err.includes('listening\n')) resolve();
    });
    void exited.then(() => reject(new Error(`the daemon exited before listening: ${err}`)));
  });
  const client = new AdminClient({ socketPath });
  const call = async (method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<string> => {
    try {
      return (await client.call(method, dest, arg, payload)).toString('utf8');
    } catch (e) {
      await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
      if (died) process.exit(DAEMON_DIED);
      throw e;
    }
  };
  const volPath = async (name: string, vol: string): Promise<string> =>
    /^path=(.*)$/m.exec(await call('admin.vm.volume.Info', name, vol))![1]!;
  process.stdout.write('R\n');
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i]!;
    log(i, 'begin');
    switch (op.kind) {
      case 'create':
        await call(`admin.vm.CreateInPool.AppVM`, 'dom0', op.template, `name=${op.name} label=red pool=${op.pool}`);
        break;
      case 'remove':
        await call('admin.vm.Remove', op.name);
        break;
      case 'pool-add':
        {
          const opts = Object.entries(campaignPoolOptions(dir, 'extra', reflink, op))
            .map(([k, v]) => `${k}=${typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v)}\n`)
            .join('');
          await call('admin.pool.Add', 'dom0', op.driver, `name=extra\n${opts}`);
        }
        break;
      case 'pool-remove':
        await call('admin.pool.Remove', 'dom0', 'extra');
        break;
      case 'run': {
        await call('admin.vm.Start', op.name);
        const seen: Record<string, string> = {};
        const info = await call('admin.vm.volume.List', op.name);
        for (const vol of ['private', 'root']) {
          if (!info.split('\n').includes(vol)) continue;
          const v = await call('admin.vm.volume.Info', op.name, vol);
          if (!/^save_on_stop=True$/m.test(v) || /^snap_on_start=True$/m.test(v)) continue;
          seen[vol] = sha(fs.readFileSync(/^path=(.*)$/m.exec(v)![1]!));
        }
        log(i, 'started', { seen });
        for (const [k, w] of op.writes.entries()) {
          log(i, 'writing', { vol: w.vol, w: k });
          const fd = fs.openSync(await volPath(op.name, w.vol), 'r+');
          try {
            fs.writeSync(fd, pattern(PAGE, w.seed), 0, PAGE, w.offset); // not flushed, as in child.ts
          } finally {
            fs.closeSync(fd);
          }
          log(i, 'wrote', { vol: w.vol, w: k });
        }
        if (!op.stop) {
          log(i, 'left-running');
          // A host crash while the domain runs: the power (when cut), then the daemon, then us.
          cutPowerIfAsked();
          daemon.kill('SIGKILL');
          await exited;
          process.kill(process.pid, 'SIGKILL');
        }
        log(i, 'stopping');
        await call('admin.vm.Shutdown', op.name);
        break;
      }
      case 'resize': {
        log(i, 'resizing');
        // The daemon shrinks what it is asked to (the protocol has no force flag): the client
        // guards, as qvm-volume resize without -f does, from the size Info reports.
        const cur = Number(/^size=(\d+)$/m.exec(await call('admin.vm.volume.Info', op.name, 'private'))?.[1]);
        if (op.size < cur) {
          log(i, 'refused', { why: `shrinking from ${cur} to ${op.size} bytes refused by the client without -f` });
          break;
        }
        try {
          await call('admin.vm.volume.Resize', op.name, 'private', String(op.size));
        } catch (e) {
          if (!/shrinking/.test((e as Error).message)) throw e;
          log(i, 'refused', { why: (e as Error).message });
          break;
        }
        log(i, 'resized');
        break;
      }
      case 'revert':
        log(i, 'reverting');
        await call('admin.vm.volume.Revert', op.name, 'private');
        log(i, 'reverted');
        break;
      case 'import': {
        const data = Buffer.alloc(op.size);
        pattern(PAGE, op.seed).copy(data, op.offset);
        log(i, 'importing');
        try {
          await client.callStream('admin.vm.volume.ImportWithSize', op.name, 'private', Readable.from([Buffer.from(`${op.size}\n`), data]));
        } catch (e) {
          await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
          if (died) process.exit(DAEMON_DIED);
          throw e;
        }
        log(i, 'imported');
        break;
      }
      case 'clone':
        throw new Error('clone is not an admin call (qvm-clone is create + CloneFrom/CloneTo); the planner does not plan it for daemon runs');
    }
    log(i, 'done');
  }
  daemon.kill('SIGTERM');
  await exited;
}
