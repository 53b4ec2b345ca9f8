// Scenario "scale": many AppVMs on one template (tiny volumes: the point is
// counts). At each size: every AppVM created through the App (16 at a time,
// as clients would), timed; the daemon's start (load) time; admin.vm.List,
// admin.pool.volume.List, and Info of every volume (a `qvm-volume list`
// equivalent: vm.List, volume.List per domain, Info per volume, 4 clients at
// once) through the socket of a child qubesd; its RSS after load and after
// the lists.
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AdminClient } from '../../src/admin/client.js';
import { silentLog } from '../../src/admin/dispatch.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { mapLimit, MiB, startChildQubesd } from '../daemon-util.js';
import { scratchXfs } from '../scratch-fs.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const KERNEL = '6.6.0';
const CONCURRENT_CREATES = 16;
const INFO_CLIENTS = 4;

async function runtimeOf(base: string) {
  return openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
}

/** A state of `appvms` AppVMs on template `tpl` in BASE, all created through the App; their create times (ms). */
async function buildState(base: string, appvms: number): Promise<{ createMs: number[]; createTotalMs: number }> {
  // The state first: a new one is made only in an empty base directory.
  const rt = await runtimeOf(base);
  try {
    // A new state has Qubes' linux-kernel pool at BASE/vm-kernels: a kernel installed there.
    await fs.mkdir(path.join(base, 'vm-kernels', KERNEL), { recursive: true });
    for (const f of ['vmlinuz', 'initramfs']) await fs.writeFile(path.join(base, 'vm-kernels', KERNEL, f), 'k');
    await rt.app.setPropertyFromText(rt.app.globals, 'default_kernel', KERNEL);
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.setPropertyFromText(rt.app.globals, 'default_template', 'tpl');
    const createMs: number[] = [];
    const todo = Array.from({ length: appvms }, (_, i) => `c${String(i).padStart(5, '0')}`);
    const createTotalMs = await timeMs(() =>
      mapLimit(todo, CONCURRENT_CREATES, async (name) => {
        createMs.push(await timeMs(() => rt.app.createDomain({ klass: 'AppVM', name, label: 'red', template: 'tpl' })));
      }),
    );
    return { createMs, createTotalMs };
  } finally {
    await rt.close();
  }
}

/** What `qvm-volume list` asks: every domain, its volumes, the Info of each; `clients` at once. Returns the number of Info calls. */
async function infoAll(client: AdminClient, clients: number): Promise<number> {
  const vms = (await client.call('admin.vm.List', 'dom0')).toString().split('\n').filter(Boolean).map((l) => l.split(' ')[0]!);
  const pairs = (
    await mapLimit(vms, clients, async (vm) =>
      (await client.call('admin.vm.volume.List', vm)).toString().split('\n').filter(Boolean).map((v) => [vm, v] as const),
    )
  ).flat();
  await mapLimit(pairs, clients, ([vm, v]) => client.call('admin.vm.volume.Info', vm, v));
  return pairs.length;
}

export const scale: Scenario = {
  name: 'scale',
  describe: 'AppVMs on one template at 100, 1,000, 10,000: create rate, daemon load, vm.List, pool.volume.List, Info of all volumes, RSS',
  async run(opts) {
    const sizes = opts.quick ? [10, 40] : [100, 1000, 10000];
    const scratch = await scratchXfs('scale', opts.quick ? 1 : 4);
    const figures: Figure[] = [];
    const notes: string[] = [`filesystem: ${scratch.kind}`];
    const per: Record<number, Record<string, Figure>> = {};
    try {
      for (const n of sizes) {
        const base = path.join(scratch.dir, `n${n}`);
        const built = await buildState(base, n);
        const f: Record<string, Figure> = {};
        f['createAll'] = figure(`scale.${n}.create-all`, 's', [built.createTotalMs / 1000], {
          note: `${n} AppVMs created through the App from an empty state, ${CONCURRENT_CREATES} at a time`,
        });
        f['create'] = figure(`scale.${n}.create`, 'ms/VM', built.createMs, { note: `latency of one create (${CONCURRENT_CREATES} in flight)` });
        f['createRate'] = figure(`scale.${n}.create-rate`, 'VMs/s', [(n / built.createTotalMs) * 1000], { note: `${n} creates in ${built.createTotalMs.toFixed(0)} ms` });

        // daemon start (load the state) in this process: startDaemon until it listens
        const sock = path.join(base, 'bench.sock');
        const loads: number[] = [];
        for (let r = 0; r < (opts.quick ? 1 : 3); r++) {
          let d: Awaited<ReturnType<typeof startDaemon>> | undefined;
          loads.push(
            await timeMs(async () => {
              d = await startDaemon({ baseDir: base, socketPath: sock, log: silentLog, runtime: { storageConf: null } });
            }),
          );
          await d!.stop();
        }
        f['load'] = figure(`scale.${n}.daemon-load`, 'ms', loads, { target: n >= 10000 ? '< 1000 ms' : '', note: 'startDaemon(): read + parse + build domains + listen' });

        // a child qubesd: lists through the socket, RSS
        const child = await startChildQubesd(base, sock, path.join(base, 'qubesd.log'));
        try {
          f['ready'] = figure(`scale.${n}.qubesd-ready`, 'ms', [child.readyMs], { note: 'spawn of node qubesd.js to its first answered call' });
          const rssLoad = child.rss();
          const client = new AdminClient({ socketPath: sock, timeoutMs: 60_000 });
          const reps = opts.quick ? 2 : 7;
          const vmList: number[] = [];
          const volList: number[] = [];
          let lines = 0;
          let vids = 0;
          // pool.volume.List of a file-reflink pool names its domains' volumes from memory, as Qubes
          // does (src/drivers/file-reflink/README.md, Listing): the first call differs from later
          // ones only by the code's warm-up.
          const volListFirst = await timeMs(async () => void (await client.call('admin.pool.volume.List', 'dom0', 'default')));
          f['volListFirst'] = figure(`scale.${n}.pool.volume.List-first`, 'ms', [volListFirst], { note: 'the first call of the process (code not warm yet)' });
          for (let r = 0; r < reps; r++) {
            vmList.push(await timeMs(async () => (lines = (await client.call('admin.vm.List', 'dom0')).toString().split('\n').length - 1)));
            volList.push(await timeMs(async () => (vids = (await client.call('admin.pool.volume.List', 'dom0', 'default')).toString().split('\n').length - 1)));
          }
          f['vmList'] = figure(`scale.${n}.vm.List`, 'ms', vmList, { target: '< 100 ms', note: `${lines} domains` });
          f['volList'] = figure(`scale.${n}.pool.volume.List`, 'ms', volList, { target: '< 100 ms', note: `${vids} volumes in pool default (calls after the first)` });
          const infos: number[] = [];
          let calls = 0;
          for (let r = 0; r < (opts.quick ? 1 : 2); r++) infos.push(await timeMs(async () => (calls = await infoAll(client, INFO_CLIENTS))));
          f['infoAll'] = figure(`scale.${n}.info-all-volumes`, 'ms', infos, {
            target: n >= 10000 ? '< 5000 ms' : '',
            note: `${calls} volume Info calls (+ vm.List + ${n + 2} volume.List), ${INFO_CLIENTS} clients`,
          });
          const rssAfter = child.rss();
          f['rssLoad'] = figure(`scale.${n}.rss-after-load`, 'MB', [rssLoad / MiB], { target: '< 300 MB' });
          f['rssAfter'] = figure(`scale.${n}.rss-after-lists`, 'MB', [rssAfter / MiB], { target: '< 300 MB' });
        } finally {
          await child.stop();
        }
        per[n] = f;
        await fs.rm(base, { recursive: true, force: true });
      }
      // growth: each figure at the largest size against the one 10x smaller
      for (const n of sizes) {
        const f = per[n]!;
        const prev = sizes[sizes.indexOf(n) - 1];
        for (const [k, fig] of Object.entries(f)) {
          if (prev !== undefined && ['createAll', 'load', 'vmList', 'volList', 'infoAll', 'create'].includes(k))
            figures.push({ ...withBaseline(fig, per[prev]![k]!), target: fig.target || `growth <= ${n / prev}x (linear)` });
          else figures.push(fig);
        }
      }
      notes.push(`sizes ${sizes.join(', ')} AppVMs (4 volumes each: root, private, volatile, kernel), each state built from empty through the App`);
      return { figures, notes };
    } finally {
      await scratch.cleanup();
    }
  },
};
