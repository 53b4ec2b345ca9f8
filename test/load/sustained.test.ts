// The daemon (a real qubesd process) under 64 concurrent clients for a
// bounded time, on loopback Unix sockets only: every reply is a success or a
// documented error, its memory stays flat and no file descriptor leaks.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AdminClient } from '../../src/admin/client.js';
import { QubesException } from '../../src/storage/errors.js';
import { ensureDead, socketDir, startQubesd, type DaemonProc } from '../daemon/helpers.js';

const SECONDS = Number(process.env['QS_LOAD_SECONDS'] ?? 12);
const CLIENTS = 64;
const VMS = 8;
const root = process.env['QS_TEST_XFS'] ?? process.env['QS_TEST_EXT4'];

async function procStats(pid: number): Promise<{ rssKiB: number; fds: number }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  const fds = (await fs.readdir(`/proc/${pid}/fd`)).length;
  return { rssKiB, fds };
}

describe('load: 64 clients on a real qubesd', { skip: root ? false : 'no test filesystem (run through npm test)' }, () => {
  let d: DaemonProc | undefined;
  let base: string | undefined;
  let sock: string | undefined;
  after(async () => {
    await ensureDead(d);
    if (base) await fs.rm(base, { recursive: true, force: true });
    if (sock) await fs.rm(sock, { recursive: true, force: true });
  });

  it(`${SECONDS} s of mixed calls: documented errors only, memory flat, no fd leak`, async (t) => {
    base = await fs.mkdtemp(path.join(root!, 'load-'));
    sock = await socketDir();
    const socketPath = path.join(sock, 's');
    d = await startQubesd(base, socketPath);
    const c = new AdminClient({ socketPath, timeoutMs: 60_000 });
    await c.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    for (let i = 0; i < VMS; i++) await c.call('admin.vm.Create.AppVM', 'dom0', 'tpl', `name=vm${i} label=red`);

    const calls: [string, string, string][] = [
      ['admin.vm.List', 'dom0', ''],
      ['admin.vm.volume.Info', 'vm0', 'private'],
      ['admin.vm.volume.ListSnapshots', 'vm1', 'private'],
      ['admin.vm.CurrentState', 'vm2', ''],
      ['admin.pool.Info', 'dom0', 'default'],
      ['admin.vm.property.Get', 'vm3', 'label'],
      ['admin.pool.volume.List', 'dom0', 'default'],
      ['admin.vm.volume.Info', 'ghost', 'private'], // a documented error
    ];
    const errorsSeen = new Map<string, number>();
    let done = 0;
    const run = async (client: number, until: number) => {
      const own = client < VMS ? `vm${client}` : null; // eight clients also start and stop their domain
      let n = 0;
      while (Date.now() < until) {
        try {
          if (own && n % 10 === 0) await c.call(n % 20 === 0 ? 'admin.vm.Start' : 'admin.vm.Shutdown', own);
          else {
            const [m, dest, arg] = calls[(client + n) % calls.length]!;
            await c.call(m, dest, arg);
          }
        } catch (e) {
          assert.ok(e instanceof QubesException && e.constructor !== QubesException, `undocumented error: ${String(e)}`);
          errorsSeen.set(e.constructor.name, (errorsSeen.get(e.constructor.name) ?? 0) + 1);
        }
        n++;
        done++;
      }
    };
    // Warm up, then two equal windows: memory after the second must not have kept growing.
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => run(i, Date.now() + 2000)));
    const start = await procStats(d.pid);
    const t0 = Date.now();
    const doneBefore = done;
    const window = async () => Promise.all(Array.from({ length: CLIENTS }, (_, i) => run(i, Date.now() + (SECONDS * 1000) / 2)));
    await window();
    const mid = await procStats(d.pid);
    await window();
    const rate = (done - doneBefore) / ((Date.now() - t0) / 1000);
    await new Promise((r) => setTimeout(r, 500)); // let connections close
    const end = await procStats(d.pid);
    t.diagnostic(`${done - doneBefore} calls in ${SECONDS} s (${rate.toFixed(0)}/s); errors: ${JSON.stringify(Object.fromEntries(errorsSeen))}`);
    t.diagnostic(`RSS ${start.rssKiB} -> ${mid.rssKiB} -> ${end.rssKiB} KiB; fds ${start.fds} -> ${mid.fds} -> ${end.fds}`);
    assert.ok(end.fds <= start.fds + 2, `file descriptors leak: ${start.fds} -> ${end.fds}`);
    assert.ok(end.rssKiB <= mid.rssKiB * 1.15 + 10_000, `memory keeps growing: ${start.rssKiB} -> ${mid.rssKiB} -> ${end.rssKiB} KiB`);
    assert.deepEqual([...errorsSeen.keys()].filter((k) => !['QubesVMNotFoundError', 'QubesVMNotHaltedError', 'QubesVMNotStartedError'].includes(k)), []);
    const vmList = (await c.call('admin.vm.List', 'dom0')).toString();
    assert.equal(vmList.split('\n').filter(Boolean).length, VMS + 2);
    d.child.kill('SIGTERM');
    assert.equal((await d.exited).code, 0);
  });
});
