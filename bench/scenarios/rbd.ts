// Scenario "rbd": the rbd driver (librbd through koffi) on a single-node Ceph
// cluster against, in the same run, interleaved: the CLI path (the `rbd`
// commands an AppVM start+stop needs, one process each, as the driver ran
// them before librbd), the `rbd import` / `rbd export` commands on the same
// data, and the file-reflink driver on a loop-mounted XFS:
// AppVM start+stop (root snapshot, private origin keeping 1 revision,
// volatile), and a 1 GiB import (data written to the path import_data gives,
// then import_data_end) and export (the path export gives read into a file,
// then export_end) of a volume with 1 GiB of data.
//
// The cluster: QS_TEST_CEPH_CONF (a running one, e.g. under
// scripts/with-ceph.sh), else one started here with scripts/ceph-cluster.sh
// (root and the Ceph packages needed; 8 GiB OSD file) and stopped at the end.
// Without either the scenario says why and measures nothing.
import { execFile, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { fsyncFile } from '../../src/files/files.js';
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import { rbdDriver } from '../../src/drivers/rbd/index.js';
import { rbdCallCounts } from '../../src/drivers/rbd/librbd.js';
import type { RbdPool } from '../../src/drivers/rbd/pool.js';
import { DomainStorage } from '../../src/storage/domain-storage.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Volume } from '../../src/storage/volume.js';
import { defaultVolumeConfigs } from '../../src/storage/volume-sets.js';
import { scratchXfs } from '../scratch-fs.js';
import { promisify } from 'node:util';
import { startChildQubesd, type ChildDaemon } from '../daemon-util.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const MiB = 1024 ** 2;
const execFileP = promisify(execFile);
const CLI = (tool: string) => fileURLToPath(new URL(`../../src/cli/${tool}.js`, import.meta.url));

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(file, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}
const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../scripts/ceph-cluster.sh');

interface Cluster {
  conf: string;
  stop(): Promise<void>;
}

async function cluster(): Promise<Cluster | string> {
  const given = process.env['QS_TEST_CEPH_CONF'];
  if (given) return { conf: given, stop: async () => undefined };
  if (process.getuid?.() !== 0) return 'not root: cannot start a Ceph cluster';
  if (spawnSync('sh', ['-c', 'command -v ceph-osd && command -v rbd']).status !== 0)
    return 'Ceph not installed (ceph-mon ceph-osd ceph-mgr ceph-common; scripts/install-test-deps.sh)';
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'qs-bench-ceph-'));
  const t0 = Date.now();
  const r = spawnSync('bash', [SCRIPT, 'start', dir], {
    encoding: 'utf8',
    env: { ...process.env, QS_CEPH_OSD_SIZE: '8G' },
    timeout: 300_000,
  });
  const stop = async () => {
    spawnSync('bash', [SCRIPT, 'stop', dir], { stdio: 'ignore', timeout: 120_000 });
    await fsp.rm(dir, { recursive: true, force: true });
  };
  if (r.status !== 0) {
    await stop();
    return `the Ceph cluster did not start: ${(r.stderr ?? '').trim().split('\n').at(-1)}`;
  }
  process.stdout.write(`   (single-node Ceph cluster started in ${((Date.now() - t0) / 1000).toFixed(1)} s)\n`);
  return { conf: path.join(dir, 'ceph.conf'), stop };
}

function domains(pool: Pool, size: number): { tpl: DomainStorage; app: DomainStorage; std: DomainStorage } {
  const p = { root: pool.name, private: pool.name, volatile: pool.name };
  const sizes = { root: size, private: size };
  const tpl = DomainStorage.init({ domain: { name: 'tpl', dirPrefix: 'vm-templates' }, volumes: defaultVolumeConfigs('TemplateVM', p, sizes) }, () => pool);
  const app = DomainStorage.init({ domain: { name: 'work', dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('AppVM', p, sizes), template: tpl }, () => pool);
  const std = DomainStorage.init({ domain: { name: 'big', dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('StandaloneVM', p, sizes) }, () => pool);
  return { tpl, app, std };
}

/** Imports `file` through import_data; resolves the time (ms) of import_data_end alone (the write into the volume). */
async function importFile(v: Volume, file: string, size: number): Promise<number> {
  const p = await v.importData(size);
  try {
    await pipeline(fs.createReadStream(file, { highWaterMark: 4 * MiB }), fs.createWriteStream(p, { flags: 'r+' }));
  } catch (e) {
    await v.importDataEnd(false);
    throw e;
  }
  return timeMs(() => v.importDataEnd(true));
}

async function exportTo(v: Volume, out: string): Promise<void> {
  const p = await v.export();
  try {
    await pipeline(fs.createReadStream(p, { highWaterMark: 4 * MiB }), fs.createWriteStream(out));
  } finally {
    await v.exportEnd(p);
  }
  await fsp.rm(out, { force: true });
}

export const rbd: Scenario = {
  name: 'rbd',
  describe: 'rbd through librbd vs the rbd commands (CLI path), rbd import/export and file-reflink (XFS): AppVM start+stop, 1 GiB import and export',
  async run(opts) {
    const cycles = opts.quick ? 2 : 8;
    const rounds = opts.quick ? 1 : 2;
    const WARM_UP = opts.quick ? 0 : 2;
    const IMPORT_ROUNDS = opts.quick ? 1 : 3;
    /** Export rounds: each has the tool, the command and the command + fsync once, in a turning order. */
    const EXPORT_ROUNDS = opts.quick ? 1 : 6;
    const EXPORT_PAUSE_MS = 1000;
    // QS_BENCH_RBD_MIB: a smaller data size for a cluster with a small OSD (the test cluster's is 4 GiB).
    const dataSize = opts.quick ? 64 * MiB : Number(process.env['QS_BENCH_RBD_MIB'] ?? 1024) * MiB;
    const c = await cluster();
    if (typeof c === 'string') return { figures: [], notes: [`skipped: ${c}`] };
    const scratch = await scratchXfs('rbd', opts.quick ? 2 : 6);
    const prefix = `bench-${process.pid}-`;
    let rbdPool: RbdPool | null = null;
    let daemon: ChildDaemon | null = null;
    try {
      const reflink = fileReflinkDriver.createPool('reflink', {
        dir_path: path.join(scratch.dir, 'pool'), setup_check: scratch.kind.includes('XFS') || !scratch.kind.includes('directory'),
        revisions_to_keep: 1, ephemeral_volatile: false,
      });
      rbdPool = rbdDriver.createPool('ceph', {
        ceph_pool: 'rbd', namespace: '', image_prefix: prefix, ceph_conf: c.conf, client_id: '', keyring: '',
        host_id: 'bench', break_stale_locks: '', timeout: 60, tmp_dir: '', revisions_to_keep: 1, ephemeral_volatile: false,
      }) as RbdPool;
      await reflink.setup().catch(async () => {
        // not a reflink filesystem: measure sparse copies, and say so
        (reflink as unknown as { options: Record<string, unknown> }).options['setup_check'] = false;
        await reflink.setup();
      });
      await rbdPool.setup();
      const data = path.join(scratch.dir, 'data.img');
      {
        const fh = await fsp.open(data, 'w');
        const buf = Buffer.alloc(4 * MiB);
        for (let o = 0; o < dataSize; o += buf.length) await fh.write(randomFillSync(buf), 0, buf.length, o);
        await fh.close();
      }
      const sets = { reflink: domains(reflink, dataSize), rbd: domains(rbdPool, dataSize) };
      for (const s of Object.values(sets)) {
        await s.tpl.create();
        await s.app.create();
        await s.std.create();
      }
      const t: Record<string, number[]> = {
        startStop: [], startStopR: [], startStopC: [], b2b: [], calls: [], opens: [], cpu: [], bg: [], bgCpu: [], bgCalls: [], toolStream: [], toolLocal: [],
        imp: [], impEnd: [], impVol: [], impR: [], impCmd: [], exp: [], expR: [], expCmd: [], expCmdSync: [], toolExp: [],
      };
      const rbdCmd = (args: string[]): void => {
        const r = spawnSync('rbd', ['--conf', c.conf, ...args], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`rbd ${args.join(' ')}: ${r.stderr}`);
      };
      // The CLI path: the image operations of an AppVM start+stop, one `rbd` process each.
      const img = (n: string) => `rbd/${prefix}cli-${n}`;
      rbdCmd(['create', '--image-feature', 'layering', '--size', '64M', img('tpl-root')]);
      rbdCmd(['create', '--image-feature', 'layering', '--size', '64M', img('app-private')]);
      const cliStartStop = (): void => {
        rbdCmd(['snap', 'create', `${img('tpl-root')}@s`]); // start: root, a clone of the template's
        rbdCmd(['clone', '--rbd-default-clone-format', '2', `${img('tpl-root')}@s`, img('app-root')]);
        rbdCmd(['snap', 'create', `${img('app-private')}@r`]); // private: the revision it keeps
        rbdCmd(['create', '--image-feature', 'layering', '--size', '64M', img('app-volatile')]); // volatile
        rbdCmd(['rm', '--no-progress', img('app-root')]); // stop: each of these undone
        rbdCmd(['snap', 'rm', '--no-progress', `${img('tpl-root')}@s`]);
        rbdCmd(['rm', '--no-progress', img('app-volatile')]);
        rbdCmd(['snap', 'rm', '--no-progress', `${img('app-private')}@r`]);
      };
      // One rbd start+stop, its background work (the revision prune, the trash moves and removals)
      // awaited after it, outside its time and measured apart.
      const rbdCycle = async (record: boolean): Promise<void> => {
        const before = { ...rbdCallCounts };
        const cpu = process.cpuUsage();
        const ms = await timeMs(async () => { await sets.rbd.app.start(); await sets.rbd.app.stop(); });
        const used = process.cpuUsage(cpu); // this process, every thread (librados' too), during the start+stop
        const bgBefore = rbdCallCounts.calls;
        const bgCpu = process.cpuUsage();
        const bg = await timeMs(() => rbdPool!.settled());
        const bgUsed = process.cpuUsage(bgCpu);
        if (!record) return;
        t['startStop']!.push(ms);
        t['cpu']!.push((used.user + used.system) / 1000);
        t['calls']!.push(rbdCallCounts.calls - before.calls);
        t['opens']!.push(rbdCallCounts.opens - before.opens);
        t['bg']!.push(bg);
        t['bgCpu']!.push((bgUsed.user + bgUsed.system) / 1000);
        t['bgCalls']!.push(rbdCallCounts.calls - bgBefore);
      };
      // Each path in blocks of cycles, the blocks alternating over the rounds (the same number of
      // cycles for each path, all of them counted), after WARM_UP uncounted cycles of each. Not
      // cycle by cycle: the 8 \`rbd\` processes of a CLI cycle leave the cluster busy (the OSD and
      // the monitor digest their snapshot removals) for over a second, and an rbd cycle right after
      // one took 1.5-2x its time in a block (docs/benchmarks.md, Issue 16 item 2, fifth pass): a
      // user's start does not follow eight rbd commands.
      for (let i = 0; i < WARM_UP; i++) {
        await rbdCycle(false);
        cliStartStop();
        await sets.reflink.app.start();
        await sets.reflink.app.stop();
      }
      const block = Math.max(1, Math.floor(cycles / rounds));
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < block; i++) await rbdCycle(true);
        // Back to back: the next start right after the stop returned, the background work not awaited.
        for (let i = 0; i < block; i++) {
          t['b2b']!.push(await timeMs(async () => { await sets.rbd.app.start(); await sets.rbd.app.stop(); }));
        }
        await rbdPool.settled();
        for (let i = 0; i < block; i++) t['startStopC']!.push(await timeMs(async () => cliStartStop()));
        for (let i = 0; i < block; i++)
          t['startStopR']!.push(await timeMs(async () => { await sets.reflink.app.start(); await sets.reflink.app.stop(); }));
      }
      const cmdImage = `rbd/${prefix}cmd`;
      const out = path.join(scratch.dir, 'export.img');
      // A daemon with its own rbd pool on the same cluster, for imports as a user makes them (qvm-volume import).
      const base = path.join(scratch.dir, 'qubes');
      const sock = path.join(scratch.dir, 'qubesd.sock');
      await fsp.mkdir(base);
      daemon = await startChildQubesd(base, sock, path.join(scratch.dir, 'qubesd.log'));
      const toolEnv = { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBESD_SOCKET: sock };
      const tool = (name: string, args: string[]) => execFileP(process.execPath, [CLI(name), ...args], { env: toolEnv, maxBuffer: 1 << 20 });
      await tool('qvm-pool', ['add', 'cephd', 'rbd', '-o', 'ceph_pool=rbd', '-o', `ceph_conf=${c.conf}`, '-o', `image_prefix=${prefix}d-`, '-o', 'host_id=benchd', '-o', 'revisions_to_keep=1']);
      await tool('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'cephd', 'imp']);
      const daemonImage = `rbd/${prefix}d-appvms=imp=private`;
      const dataHash = await sha256(data);
      for (let i = 0; i < IMPORT_ROUNDS; i++) {
        // qvm-volume import through the admin socket (ImportWithSize: the payload streamed into the image),
        // and the default on the daemon's host (the local import service: for rbd the data streamed into the image, as --stream does, over the internal socket).
        t['toolStream']!.push(await timeMs(() => tool('qvm-volume', ['import', '--stream', 'imp:private', data])));
        if (i === 0) {
          rbdCmd(['export', daemonImage, out]);
          const same = (await sha256(out)) === dataHash;
          await fsp.rm(out, { force: true });
          if (!same) throw new Error('rbd: the image imported through the admin socket differs from the file');
        }
        t['toolLocal']!.push(await timeMs(() => tool('qvm-volume', ['import', 'imp:private', data])));
        t['impR']!.push(await timeMs(() => importFile(sets.reflink.std.get('private'), data, dataSize)));
        let end = 0;
        t['imp']!.push(await timeMs(async () => { end = await importFile(sets.rbd.std.get('private'), data, dataSize); }));
        t['impEnd']!.push(end);
        // import_volume from the file-reflink volume holding the same data: written straight from its file.
        t['impVol']!.push(await timeMs(() => sets.rbd.std.get('private').importVolume(sets.reflink.std.get('private'))));
        t['expR']!.push(await timeMs(() => exportTo(sets.reflink.std.get('private'), out)));
        t['exp']!.push(await timeMs(() => exportTo(sets.rbd.std.get('private'), out)));
        // The command itself on the same data: a new image from the file.
        t['impCmd']!.push(await timeMs(async () => rbdCmd(['import', '--image-feature', 'layering', data, cmdImage])));
        rbdCmd(['rm', '--no-progress', cmdImage]);
      }
      // Exports in rounds of their own, after the imports (whose image removals the OSD digests for a
      // while): the tool and the commands in an order turned round by round, each after the cluster
      // had EXPORT_PAUSE_MS of quiet and the page cache had no dirty output left (sync), untimed.
      rbdCmd(['import', '--image-feature', 'layering', data, cmdImage]);
      const exports: Record<string, () => Promise<void>> = {
        // qvm-volume export as a user runs it against the daemon: admin.vm.volume.ExportStream, the image
        // read by librbd and streamed over the socket into the output file (fsynced, renamed into place).
        toolExp: async () => {
          await tool('qvm-volume', ['export', 'imp:private', out]);
        },
        // The command on the same data: the image into a file.
        expCmd: async () => rbdCmd(['export', cmdImage, out]),
        // The same, then its output made durable as qvm-volume export makes its own (fsync).
        expCmdSync: async () => {
          rbdCmd(['export', cmdImage, out]);
          await fsyncFile(out);
        },
      };
      const order = Object.keys(exports);
      for (let i = 0; i < EXPORT_ROUNDS; i++) {
        for (let k = 0; k < order.length; k++) {
          const name = order[(i + k) % order.length]!;
          spawnSync('sync');
          await new Promise((r) => setTimeout(r, EXPORT_PAUSE_MS));
          t[name]!.push(await timeMs(exports[name]!));
          if (i === 0 && name === 'toolExp' && (await sha256(out)) !== dataHash) throw new Error('rbd: qvm-volume export differs from the data imported');
          await fsp.rm(out, { force: true });
        }
      }
      rbdCmd(['rm', '--no-progress', cmdImage]);
      const mb = dataSize / MiB;
      const rate = (ms: number[]) => ms.map((x) => mb / (x / 1000));
      const fR = figure('AppVM start+stop, file-reflink', 'ms', t['startStopR']!);
      const fC = figure('AppVM start+stop as rbd commands (8 processes)', 'ms', t['startStopC']!);
      const iR = figure(`import ${mb} MiB, file-reflink`, 'MiB/s', rate(t['impR']!));
      const iCmd = figure(`rbd import of the same ${mb} MiB file (command)`, 'MiB/s', rate(t['impCmd']!));
      const eR = figure(`export ${mb} MiB, file-reflink`, 'MiB/s', rate(t['expR']!));
      const eCmd = figure(`rbd export of the same ${mb} MiB image (command)`, 'MiB/s', rate(t['expCmd']!));
      const fL = figure('AppVM start+stop, rbd (librbd)', 'ms', t['startStop']!);
      const iL = figure(`import ${mb} MiB, rbd (librbd)`, 'MiB/s', rate(t['imp']!));
      const iEnd = figure(`import ${mb} MiB, rbd: import_data_end alone (the file into the image)`, 'MiB/s', rate(t['impEnd']!));
      const iVol = figure(`import_volume ${mb} MiB from the file-reflink volume into rbd (no temporary copy)`, 'MiB/s', rate(t['impVol']!));
      const eCmdSync = figure(`rbd export of the same ${mb} MiB image, then fsync of its output (command)`, 'MiB/s', rate(t['expCmdSync']!));
      const eL = figure(`export ${mb} MiB, rbd (librbd)`, 'MiB/s', rate(t['exp']!));
      const tE = figure(`qvm-volume export ${mb} MiB (admin socket: ExportStream, streamed from the image; the output fsynced), rbd`, 'MiB/s', rate(t['toolExp']!));
      const tS = figure(`qvm-volume import --stream ${mb} MiB (admin socket, straight into the image), rbd`, 'MiB/s', rate(t['toolStream']!));
      const tL = figure(`qvm-volume import ${mb} MiB (default on the daemon's host: the local import service, streamed into the image), rbd`, 'MiB/s', rate(t['toolLocal']!));
      const figures: Figure[] = [
        fR,
        fC,
        withBaseline(fL, fC),
        withBaseline({ ...fL, name: 'AppVM start+stop, rbd (librbd) vs file-reflink' }, fR),
        withBaseline(figure('AppVM start+stop, rbd, back to back (the next start right after the stop, background work not awaited)', 'ms', t['b2b']!), fL),
        figure('AppVM start+stop, rbd: calls waiting for the cluster', 'calls', t['calls']!),
        figure('AppVM start+stop, rbd: image opens', 'opens', t['opens']!),
        figure('AppVM start+stop, rbd: CPU of this process (all threads)', 'ms', t['cpu']!),
        figure('after the stop, in the background (revision prune, trash removals): time until settled', 'ms', t['bg']!),
        figure('after the stop, in the background: calls waiting for the cluster', 'calls', t['bgCalls']!),
        figure('after the stop, in the background: CPU of this process', 'ms', t['bgCpu']!),
        iR,
        iCmd,
        withBaseline(iL, iCmd),
        withBaseline(iEnd, iCmd),
        withBaseline(iVol, iCmd),
        withBaseline(tS, iCmd),
        withBaseline(tL, iCmd),
        eR,
        eCmd,
        withBaseline(eL, eCmd),
        withBaseline(tE, eCmd),
        eCmdSync,
        withBaseline({ ...tE, name: `qvm-volume export ${mb} MiB vs the command with the same durability` }, eCmdSync),
      ];
      for (const s of Object.values(sets)) {
        await s.app.remove();
        await s.tpl.remove();
        await s.std.remove();
      }
      return {
        figures,
        notes: [
          `file-reflink on ${scratch.kind}; rbd on one OSD (BlueStore on a sparse file in ${os.tmpdir()}), pool size 1, 127.0.0.1`,
          `rbd import/export go through a local file in ${os.tmpdir()} (the contract hands out paths): librbd reads and writes (4 MiB, ${4} in flight)`,
          'AppVM start+stop as rbd commands: snap create, clone, snap create, create; rm, snap rm, rm, snap rm (the CLI path: one process and one cluster connection per operation)',
          'rbd import / rbd export: the commands alone, file to a new image and image to a file, same size (rbd export does not fsync its output)',
          `qvm-volume export against rbd export (and rbd export + fsync): ${EXPORT_ROUNDS} rounds after the imports, each with the three once, the order turned each round; before each, an untimed sync and ${EXPORT_PAUSE_MS} ms of quiet; the contract's export() figures stay in the import rounds`,
          'export, rbd (librbd): the contract\'s export() (a file in tmp_dir) read into the output: what an in-process caller of the path meets; qvm-volume export: the tool against the child qubesd, the data streamed (no file in tmp_dir), checked against the data once (SHA-256)',
          `AppVM start+stop: ${WARM_UP} uncounted warm-up cycles of each path, then ${rounds} rounds of blocks of ${Math.max(1, Math.floor(cycles / rounds))} cycles (rbd, rbd back to back, the rbd commands, file-reflink); medians of all counted cycles`,
          'rbd start+stop: the stop\'s background work (revision prune, trash moves and object deletion) is awaited between cycles, outside the timed span, and timed apart; back to back: not awaited, the next start waits for what it needs of it; calls, opens and CPU are per start+stop (CPU: this process, all threads, the file-reflink and CLI runs excluded)',
          'import_data_end alone: the temporary file written by the caller into the image (the import figure minus the caller\'s copy into tmp_dir)',
          'qvm-volume import: the tool (a node process) against a child qubesd with its own rbd pool on the same cluster, into a StandaloneVM private volume keeping 1 revision; --stream: admin.vm.volume.ImportWithSize, the payload written into the image by the volume\'s import writer; without: the local import service (internal ImportMode answers stream for rbd: the data streamed as internal ImportDataWithSize into the same writer; before, a file in tmp_dir then the image); the first --stream import is checked against the file (rbd export, SHA-256)',
        ],
      };
    } finally {
      await daemon?.stop();
      if (rbdPool) {
        // best effort: anything the scenario left in the cluster
        for (const img of await rbdPool.listImages().catch(() => [] as string[])) {
          if (!img.startsWith(prefix)) continue;
          spawnSync('rbd', ['--conf', c.conf, 'snap', 'purge', `rbd/${img}`], { stdio: 'ignore' });
          spawnSync('rbd', ['--conf', c.conf, 'rm', `rbd/${img}`], { stdio: 'ignore' });
        }
      }
      await rbdPool?.close();
      await scratch.cleanup();
      await c.stop();
    }
  },
};
