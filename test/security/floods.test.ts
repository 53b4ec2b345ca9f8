// Staying available under connection floods, over the real socket with the
// real peer credentials: many connections of one user holding complete
// headers, many half-sent headers, one root process opening many, and a
// slow-drip import. A legitimate caller calling in a loop meanwhile must get
// every answer; afterwards the daemon's open files are back to the baseline.
// Latencies and RSS are reported with t.diagnostic, never asserted.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import type { AdminServerOptions } from '../../src/admin/index.js';
import { echo, startServer, waitFor, type Harness } from '../admin/helpers.js';
import { startRig } from '../admin/methods/helpers.js';
import { TEST_FILESYSTEMS, tempDirOn, removeTree } from '../helpers/filesystems.js';
import { listFiles, pattern, sha256 } from '../helpers/data.js';
import { childOutput } from '../helpers/process.js';

/** The socket's group; the legitimate caller and the flooding user are both members. */
const GROUP = 4242;
const CALLER = { uid: 4242, gid: GROUP };
const FLOODER = { uid: 4243, gid: GROUP };

/** Small limits, so that a flood stays small. */
const LIMITS: Partial<AdminServerOptions> = {
  socketGroup: GROUP,
  maxConnections: 24,
  rootReserveConnections: 8,
  maxConnectionsPerUid: 8,
  maxConnectionsPerPid: 4,
  // Longer than the test: half-sent headers stay until the flood ends.
  headerTimeoutMs: 60_000,
  requestTimeoutMs: 60_000,
};

const LIMIT = { timeout: 120_000 };

/** Opens COUNT connections, sends MODE's bytes on each without half-closing, then holds them until killed. */
const FLOOD = `
const net = require('node:net');
const [sockPath, count, mode] = process.argv.slice(1);
const bytes = mode === 'half' ? Buffer.from('admin.vm.Li') : Buffer.from('test.Echo dom0 name dom0\\0');
const socks = [];
for (let i = 0; i < Number(count); i++) {
  const s = net.connect(sockPath);
  s.on('connect', () => s.write(bytes));
  s.on('error', () => {});
  s.resume();
  socks.push(s);
}
setInterval(() => {}, 1 << 30);
`;

/** Calls test.Echo N times one after the other; prints each reply (or error) and its latency as JSON. */
const LOOP = `
const net = require('node:net');
const [sockPath, n] = process.argv.slice(1);
const one = () => new Promise((resolve) => {
  const t0 = performance.now();
  const s = net.connect(sockPath);
  const chunks = [];
  let error;
  s.on('connect', () => s.end(Buffer.from('test.Echo dom0 name dom0\\0hello')));
  s.on('data', (c) => chunks.push(c));
  s.on('error', (e) => (error = e.code));
  s.on('close', () => resolve({ error, reply: Buffer.concat(chunks).toString('latin1'), ms: performance.now() - t0 }));
});
(async () => {
  const out = [];
  for (let i = 0; i < Number(n); i++) out.push(await one());
  process.stdout.write(JSON.stringify(out));
})();
`;

interface Answer {
  readonly error?: string;
  readonly reply: string;
  readonly ms: number;
}

const children = new Set<ChildProcess>();

function flood(sock: string, as: { uid: number; gid: number } | 'root', count: number, mode: 'header' | 'half'): ChildProcess {
  const child = spawn(process.execPath, ['-e', FLOOD, sock, String(count), mode], { stdio: 'ignore', ...(as === 'root' ? {} : as) });
  children.add(child);
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  }
  children.delete(child);
}

/** Runs the calling loop as another user (a member of the socket's group). */
function loopAs(sock: string, as: { uid: number; gid: number }, n: number): Promise<Answer[]> {
  const child = spawn(process.execPath, ['-e', LOOP, sock, String(n)], { stdio: ['ignore', 'pipe', 'pipe'], ...as });
  return childOutput(child).then(({ stdout, stderr, code }) => {
    if (code !== 0) throw new Error(`loop exited ${code}: ${stderr}`);
    return JSON.parse(stdout) as Answer[];
  });
}

/** The same loop in the test process (root), timing each call. */
async function loopAsRoot(sock: string, n: number): Promise<Answer[]> {
  const out: Answer[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const reply = (await echo(sock)).toString('latin1');
    out.push({ reply, ms: performance.now() - t0 });
  }
  return out;
}

function assertAllAnswered(answers: Answer[]): void {
  for (const [i, a] of answers.entries()) {
    assert.equal(a.error, undefined, `call ${i}: ${a.error}`);
    assert.equal(a.reply, '0\0hello', `call ${i} was not answered: ${JSON.stringify(a.reply)}`);
  }
}

const openFds = async (): Promise<number> => (await fs.readdir('/proc/self/fd')).length;
const rssMiB = (): string => (process.memoryUsage().rss / 2 ** 20).toFixed(1);

function latencies(answers: Answer[]): string {
  const ms = answers.map((a) => a.ms).sort((a, b) => a - b);
  return `median ${ms[Math.floor(ms.length / 2)]!.toFixed(1)} ms, max ${ms[ms.length - 1]!.toFixed(1)} ms over ${ms.length} calls`;
}

/** The server is serving `held` flood connections and has refused the rest (one log line each). */
function settled(h: Harness, total: number): () => boolean {
  return () => {
    const refused = h.log.lines.filter((l) => l.includes('refused connection of')).length;
    return h.server.connectionCount + refused >= total;
  };
}

async function harness(extra: Partial<AdminServerOptions> = {}): Promise<Harness> {
  const h = await startServer({ ...LIMITS, ...extra });
  // Let the other users traverse to the socket (its mode and group decide).
  await fs.chmod(h.dir, 0o755);
  return h;
}

describe('floods: a legitimate caller is answered, and the files come back', () => {
  after(async () => {
    for (const c of [...children]) await stop(c);
  });

  for (const mode of ['header', 'half'] as const) {
    const what = mode === 'header' ? 'complete headers held open' : 'half-sent headers';
    it(`one user, 6 processes x 10 connections of ${what}: another member of the group is answered every time`, LIMIT, async (t) => {
      const h = await harness();
      try {
        const fdsBefore = await openFds();
        t.diagnostic(`before: ${fdsBefore} fds, RSS ${rssMiB()} MiB`);
        const floods = Array.from({ length: 6 }, () => flood(h.socketPath, FLOODER, 10, mode));
        await waitFor(settled(h, 60), 30_000);
        t.diagnostic(`during: ${await openFds()} fds, RSS ${rssMiB()} MiB, ${h.server.connectionCount} connections held`);
        const held = h.server.connectionCount;
        const answers = await loopAs(h.socketPath, CALLER, 20);
        t.diagnostic(`legitimate calls during the flood: ${latencies(answers)}`);
        assertAllAnswered(answers);
        assert.ok(held <= 8, `the flooding user holds ${held} connections`);
        const refusal = h.log.lines.find((l) => l.includes('refused connection of'));
        assert.match(refusal ?? '', new RegExp(`refused connection of uid=${FLOODER.uid} pid=\\d+: over the limit of (4 connections per process|8 connections per user)`));
        for (const f of floods) await stop(f);
        await waitFor(() => h.server.connectionCount === 0, 30_000);
        const fdsAfter = await openFds();
        t.diagnostic(`after: ${fdsAfter} fds, RSS ${rssMiB()} MiB`);
        assert.ok(fdsAfter <= fdsBefore + 2, `open fds: ${fdsBefore} before, ${fdsAfter} after`);
      } finally {
        await h.stop();
      }
    });
  }

  it('one root process opening 40 connections of complete headers: root (the test) is still answered', LIMIT, async (t) => {
    const h = await harness();
    try {
      const fdsBefore = await openFds();
      const f = flood(h.socketPath, 'root', 40, 'header');
      await waitFor(settled(h, 40), 30_000);
      const held = h.server.connectionCount;
      const answers = await loopAsRoot(h.socketPath, 20);
      t.diagnostic(`root calls during the flood: ${latencies(answers)}; ${await openFds()} fds, RSS ${rssMiB()} MiB`);
      assertAllAnswered(answers);
      assert.ok(held <= 4, `one process holds ${held} connections`);
      await stop(f);
      await waitFor(() => h.server.connectionCount === 0, 30_000);
      assert.ok((await openFds()) <= fdsBefore + 2, 'open fds back to the baseline');
    } finally {
      await h.stop();
    }
  });

  it("members' connections all taken: root gets in through its reserve; a member is refused with PermissionDenied at once", LIMIT, async (t) => {
    // No limit per user here: the flood fills the members' 24 connections.
    const h = await harness({ maxConnectionsPerUid: 1000 });
    try {
      const floods = Array.from({ length: 8 }, () => flood(h.socketPath, FLOODER, 4, 'header'));
      await waitFor(settled(h, 32), 30_000);
      assert.equal(h.server.connectionCount, 24);
      const answers = await loopAsRoot(h.socketPath, 10);
      t.diagnostic(`root calls with the members' share full: ${latencies(answers)}`);
      assertAllAnswered(answers);
      const [member] = await loopAs(h.socketPath, CALLER, 1);
      // Closed at once: the reply is written first, but the member's own write
      // may fail first (EPIPE) and its socket then never reads it.
      assert.ok([undefined, 'EPIPE', 'ECONNRESET'].includes(member!.error), String(member!.error));
      assert.ok(['', '2\0PermissionDenied\0\0too many connections: over the limit of 24 connections of users other than root\0'].includes(member!.reply), JSON.stringify(member!.reply));
      assert.ok(h.log.lines.some((l) => new RegExp(`refused connection of uid=${CALLER.uid} pid=\\d+: over the limit of 24 connections`).test(l)));
      for (const f of floods) await stop(f);
      await waitFor(() => h.server.connectionCount === 0, 30_000);
    } finally {
      await h.stop();
    }
  });
});

const tfs = TEST_FILESYSTEMS.find((f) => f.root !== null);

describe('floods: a slow-drip import', { skip: tfs ? false : 'no test filesystem' }, () => {
  it('4 KiB every 100 ms is below the minimum rate: cut and rolled back (old data, no debris); root is answered meanwhile', LIMIT, async (t) => {
    const dir = await tempDirOn(tfs!, 'drip');
    const rig = await startRig(tfs!, dir, {}, { minStreamBytesPerWindow: 256 * 1024, minStreamWindowMs: 1000 });
    try {
      await rig.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await rig.rt.app.createDomain({ klass: 'AppVM', name: 'slow', label: 'red', template: 'tpl' });
      const img = path.join(rig.poolDir, 'appvms', 'slow', 'private.img');
      const before = await sha256(img);
      const fdsBefore = await openFds();
      const from = rig.events.length;
      const sock = net.connect(rig.socketPath);
      sock.on('error', () => {});
      const reply: Buffer[] = [];
      sock.on('data', (c: Buffer) => reply.push(c));
      const closed = new Promise<void>((r) => sock.on('close', () => r()));
      const data = pattern(4096 * 200, 7);
      let sent = 0;
      sock.on('connect', () => sock.write(Buffer.from('admin.vm.volume.Import+private dom0 name slow\0', 'latin1')));
      // At most 20 s of dripping: a daemon that does not cut it fails below, it does not hang.
      const drip = setInterval(() => {
        if (sock.destroyed || sent >= data.length) return clearInterval(drip);
        sock.write(data.subarray(sent, sent + 4096));
        sent += 4096;
      }, 100);
      try {
        const answers: Answer[] = [];
        let cut = false;
        void closed.then(() => (cut = true));
        while (!cut && sent < data.length) answers.push(...(await loopAsRoot(rig.socketPath, 1)).map((a) => ({ ...a, reply: a.reply })));
        await closed;
        t.diagnostic(`root calls during the drip: ${answers.length ? latencies(answers) : 'none'}; ${sent} bytes sent before the cut`);
        assert.ok(sent < data.length, 'the drip was cut before it ended');
      } finally {
        clearInterval(drip);
      }
      assert.equal(Buffer.concat(reply).length, 0, 'dropped without a reply');
      await waitFor(() => rig.events.slice(from).some((e) => e.event === 'domain-volume-import-end'), 30_000);
      const end = rig.events.slice(from).find((e) => e.event === 'domain-volume-import-end');
      assert.deepEqual(end?.pairs, [['volume', 'private'], ['success', 'False']]);
      assert.ok(rig.log.lines.some((l) => /dropped connection \(admin\.vm\.volume\.Import from dom0\): client sends its payload too slowly/.test(l)));
      await waitFor(() => rig.rt.app.holdersOf('slow').length === 0, 30_000);
      assert.equal(await sha256(img), before, 'old data kept');
      assert.deepEqual((await listFiles(rig.poolDir)).filter((f) => /-(import|tmp-)/.test(f)), []);
      await waitFor(() => rig.server.connectionCount === 0, 30_000);
      assert.ok((await openFds()) <= fdsBefore + 2, 'open fds back to the baseline');
    } finally {
      await rig.stop();
      await removeTree(dir);
    }
  });
});
