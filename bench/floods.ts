// Connection floods against a real qubesd with its default limits, measured,
// not asserted: a legitimate caller's latency (root in this process, and a
// member of the socket's group as uid 4242) during each flood, and qubesd's
// open files and RSS before, during and after.
//   npm run build && node dist/bench/floods.js
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnQubesd, ensureDead } from '../test/daemon/helpers.js';

const GROUP = 4242;
const FLOOD = `
const net = require('node:net');
const [sockPath, count, mode] = process.argv.slice(1);
const bytes = mode === 'half' ? Buffer.from('admin.vm.Li') : Buffer.from('admin.pool.List dom0 name dom0\\0');
for (let i = 0; i < Number(count); i++) {
  const s = net.connect(sockPath);
  s.on('connect', () => s.write(bytes));
  s.on('error', () => {});
  s.resume();
}
setInterval(() => {}, 1 << 30);
`;
const LOOP = `
const net = require('node:net');
const [sockPath, n] = process.argv.slice(1);
const one = () => new Promise((resolve) => {
  const t0 = performance.now();
  const s = net.connect(sockPath);
  const chunks = [];
  s.on('connect', () => s.end(Buffer.from('admin.pool.List dom0 name dom0\\0')));
  s.on('data', (c) => chunks.push(c));
  s.on('error', () => {});
  s.on('close', () => resolve({ ok: Buffer.concat(chunks).toString('latin1').startsWith('0\\0'), ms: performance.now() - t0 }));
});
(async () => { const out = []; for (let i = 0; i < Number(n); i++) out.push(await one()); process.stdout.write(JSON.stringify(out)); })();
`;

type Answer = { ok: boolean; ms: number };

function loop(sock: string, as: { uid: number; gid: number } | undefined, n: number): Promise<Answer[]> {
  const child = spawn(process.execPath, ['-e', LOOP, sock, String(n)], { stdio: ['ignore', 'pipe', 'inherit'], ...(as ?? {}) });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.on('close', () => resolve(JSON.parse(out) as Answer[])));
}

function summary(a: Answer[]): string {
  const ms = a.map((x) => x.ms).sort((x, y) => x - y);
  return `${a.filter((x) => x.ok).length}/${a.length} ok, median ${ms[ms.length >> 1]!.toFixed(1)} ms, max ${ms[ms.length - 1]!.toFixed(1)} ms`;
}

async function usage(pid: number): Promise<string> {
  const fds = (await fs.readdir(`/proc/${pid}/fd`)).length;
  const rss = /VmRSS:\s+(\d+)/.exec(await fs.readFile(`/proc/${pid}/status`, 'utf8'))![1]!;
  return `${fds} fds, RSS ${(Number(rss) / 1024).toFixed(1)} MiB`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-floods-'));
  await fs.chmod(dir, 0o755);
  const sock = path.join(dir, 'qubesd.sock');
  const base = path.join(dir, 'base');
  const d = spawnQubesd(['--base-dir', base, '--socket', sock, '--storage-conf', path.join(base, 'storage.conf'), '--socket-group', String(GROUP)]);
  const floods: ChildProcess[] = [];
  try {
    await d.waitFor(`qubesd: listening on ${sock}\n`);
    const pid = d.child.pid!;
    console.log(`baseline: ${await usage(pid)}; root ${summary(await loop(sock, undefined, 50))}; member ${summary(await loop(sock, { uid: 4242, gid: GROUP }, 50))}`);
    const cases: Array<[string, { uid: number; gid: number } | undefined, number, 'header' | 'half']> = [
      ['1,030 complete headers held, one root process', undefined, 1, 'header'],
      ['1,030 complete headers held, uid 4243 (group member), 65 processes', { uid: 4243, gid: GROUP }, 65, 'header'],
      ['1,030 half-sent headers, uid 4243, 65 processes', { uid: 4243, gid: GROUP }, 65, 'half'],
    ];
    for (const [name, as, procs, mode] of cases) {
      const per = Math.ceil(1030 / procs);
      for (let i = 0; i < procs; i++) floods.push(spawn(process.execPath, ['-e', FLOOD, sock, String(per), mode], { stdio: 'ignore', ...(as ?? {}) }));
      await sleep(2000);
      const during = await usage(pid);
      const root = summary(await loop(sock, undefined, 50));
      const member = summary(await loop(sock, { uid: 4242, gid: GROUP }, 50));
      for (const f of floods.splice(0)) f.kill('SIGKILL');
      await sleep(1500);
      console.log(`${name}: during ${during}; root ${root}; member ${member}; after ${await usage(pid)}`);
    }
  } finally {
    for (const f of floods) f.kill('SIGKILL');
    await ensureDead(d);
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
