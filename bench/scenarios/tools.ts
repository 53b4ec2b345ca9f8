// Scenario "tools": what a `qvm-*` call costs against a running qubesd,
// side by side with what it cannot do without: starting node (`node -e 0`)
// and the same round trips. The round trips are the tool's own requests,
// recorded once through a proxy socket (header and payload of each
// connection) and replayed by a minimal node script that loads nothing but
// node:net (bench/tools/replay.ts); so "node + round trips" is the floor a
// tool in node can reach, and the ratio is what the tool adds: its modules,
// its parsing, its rendering. Each tool's typical call (reads, and the
// write pairs that leave the state as it was), alternating tool and
// baseline. Then qvm-ls with many domains, and its number of calls.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openRuntime } from '../../src/daemon/runtime.js';
import { MiB, startChildQubesd } from '../daemon-util.js';
import { figure, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../../src/cli');
const REPLAY = path.resolve(here, '../tools/replay.js');
const TARGET = '<= 1.3x node + round trips';
/**
 * QS_BENCH_TOOLS_BEFORE=DIR (the dist/src/cli of another build, such as the
 * previous commit's): its tools are timed too, interleaved with these, as
 * `tools.before: ...` rows against the same floors, so that a change is
 * measured before and after in one run.
 */
const BEFORE = process.env['QS_BENCH_TOOLS_BEFORE'];

/** Runs `node ARGS` with `env`; its wall time in ms (spawn to exit). Throws on a non-zero exit. */
function timeNode(args: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code === 0) resolve(ms);
      else reject(new Error(`node ${args.join(' ')} exited ${code}: ${err}`));
    });
  });
}

/** A proxy at `socket` for `target` that keeps the bytes each connection sent (one call each; a probe sends none). */
async function recorder(socket: string, target: string): Promise<{ requests: Buffer[]; close(): Promise<void> }> {
  const requests: Buffer[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const chunks: Buffer[] = [];
    const up = net.connect({ path: target, allowHalfOpen: true });
    client.on('data', (d: Buffer) => chunks.push(d));
    client.on('end', () => requests.push(Buffer.concat(chunks)));
    client.pipe(up).pipe(client);
    const fail = () => (client.destroy(), up.destroy());
    client.on('error', fail);
    up.on('error', fail);
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return { requests, close: () => new Promise<void>((r) => server.close(() => r())) };
}

interface Step {
  readonly tool: string;
  readonly args: readonly string[];
}

/** Each tool's typical call; a write comes with the call that undoes it, so every round starts from the same state. */
const CYCLES: readonly (readonly Step[])[] = [
  [{ tool: 'qvm-ls', args: [] }],
  [{ tool: 'qvm-pool', args: ['list'] }],
  [{ tool: 'qvm-volume', args: ['info', 'w1:private'] }],
  [{ tool: 'qvm-volume', args: ['list'] }],
  [{ tool: 'qvm-prefs', args: ['w1'] }],
  [{ tool: 'qvm-prefs', args: ['w1', 'label'] }],
  [
    { tool: 'qvm-start', args: ['w1'] },
    { tool: 'qvm-shutdown', args: ['w1'] },
  ],
  [
    { tool: 'qvm-create', args: ['-t', 'tpl', '-l', 'red', 'bench-new'] },
    { tool: 'qvm-remove', args: ['-f', 'bench-new'] },
  ],
  [
    { tool: 'qvm-clone', args: ['w1', 'bench-copy'] },
    { tool: 'qvm-remove', args: ['-f', 'bench-copy'] },
  ],
];

/** A state of a template and `appvms` AppVMs (w1 ... wN; tiny volumes: the point is calls). */
async function buildState(base: string, appvms: number): Promise<void> {
  const rt = await openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
  try {
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    for (let i = 1; i <= appvms; i++) await rt.app.createDomain({ klass: 'AppVM', name: `w${i}`, label: 'red', template: 'tpl' });
  } finally {
    await rt.close();
  }
}

const stepName = (s: Step) => [s.tool, ...s.args].join(' ');

export const tools: Scenario = {
  name: 'tools',
  describe: 'each qvm-* call against qubesd against node -e 0 + the same round trips (replayed); qvm-ls with 1,000 domains and its calls',
  async run(opts) {
    // Quick (the smoke test): two tools, one round, 10 domains.
    const reps = opts.quick ? 1 : 15;
    const cycles = opts.quick ? CYCLES.slice(0, 2) : CYCLES;
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-bench-tools-'));
    const figures: Figure[] = [];
    const notes: string[] = [];
    try {
      const base = path.join(dir, 'four');
      await buildState(base, 3); // four domains besides dom0: tpl, w1..w3 (the "daemon with 4 domains")
      const sock = path.join(dir, 's');
      const daemon = await startChildQubesd(base, sock, path.join(dir, 'qubesd.log'));
      const env = { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBESD_SOCKET: sock };
      try {
        // Record each step's requests once, through the proxy.
        const rec = await recorder(`${sock}.rec`, sock);
        const recorded = new Map<Step, string>();
        for (const cycle of cycles)
          for (const step of cycle) {
            const from = rec.requests.length;
            await timeNode([path.join(CLI, `${step.tool}.js`), ...step.args], { ...env, QUBESD_SOCKET: `${sock}.rec` });
            // Written as a file the replay reads: length-prefixed requests.
            const file = path.join(dir, `req-${recorded.size}`);
            const reqs = rec.requests.slice(from);
            await fs.writeFile(file, Buffer.concat(reqs.flatMap((r) => [Buffer.from(`${r.length}\n`), r])));
            recorded.set(step, file);
          }
        await rec.close();

        const nodeOnly: number[] = [];
        const toolMs = new Map<Step, number[]>();
        const replayMs = new Map<Step, number[]>();
        const beforeMs = new Map<Step, number[]>();
        for (let r = 0; r < reps; r++) {
          nodeOnly.push(await timeNode(['-e', '0'], env));
          for (const cycle of cycles) {
            for (const step of cycle) toolMs.set(step, [...(toolMs.get(step) ?? []), await timeNode([path.join(CLI, `${step.tool}.js`), ...step.args], env)]);
            for (const step of cycle) replayMs.set(step, [...(replayMs.get(step) ?? []), await timeNode([REPLAY, sock, recorded.get(step)!], env)]);
            if (BEFORE)
              for (const step of cycle) beforeMs.set(step, [...(beforeMs.get(step) ?? []), await timeNode([path.join(BEFORE, `${step.tool}.js`), ...step.args], env)]);
          }
        }
        const node0 = figure('tools.node-e-0', 'ms', nodeOnly, { note: 'node -e 0: starting node, nothing loaded' });
        figures.push(node0);
        for (const cycle of cycles)
          for (const step of cycle) {
            const calls = (await fs.readFile(recorded.get(step)!)).toString('latin1').split('\n').length - 1;
            const floor = figure(`tools.floor: ${stepName(step)}`, 'ms', replayMs.get(step)!, {
              note: `node + the tool's ${calls} connections replayed by a script loading only node:net`,
            });
            figures.push(withBaseline(floor, node0));
            figures.push(withBaseline(figure(`tools.${stepName(step)}`, 'ms', toolMs.get(step)!), floor, TARGET));
            if (BEFORE) figures.push(withBaseline(figure(`tools.before: ${stepName(step)}`, 'ms', beforeMs.get(step)!, { note: BEFORE }), floor, TARGET));
          }
      } finally {
        await daemon.stop();
      }

      // qvm-ls with many domains: its time against the floor, and its calls.
      const many = opts.quick ? 10 : 1000;
      const bigBase = path.join(dir, 'many');
      await buildState(bigBase, many);
      const bigSock = path.join(dir, 'm');
      const big = await startChildQubesd(bigBase, bigSock, path.join(dir, 'qubesd-many.log'));
      const bigEnv = { PATH: process.env['PATH'], HOME: bigBase, QUBES_BASE_DIR: bigBase, QUBESD_SOCKET: bigSock };
      try {
        const rec = await recorder(`${bigSock}.rec`, bigSock);
        await timeNode([path.join(CLI, 'qvm-ls.js')], { ...bigEnv, QUBESD_SOCKET: `${bigSock}.rec` });
        const reqs = rec.requests;
        await rec.close();
        const file = path.join(dir, 'req-many');
        await fs.writeFile(file, Buffer.concat(reqs.flatMap((r) => [Buffer.from(`${r.length}\n`), r])));
        const methods = reqs.map((r) => r.toString('latin1').split(' ')[0] || '(probe)');
        const ls: number[] = [];
        const floor: number[] = [];
        const lsBefore: number[] = [];
        for (let r = 0; r < (opts.quick ? 1 : 7); r++) {
          ls.push(await timeNode([path.join(CLI, 'qvm-ls.js')], bigEnv));
          floor.push(await timeNode([REPLAY, bigSock, file], bigEnv));
          if (BEFORE) lsBefore.push(await timeNode([path.join(BEFORE, 'qvm-ls.js')], bigEnv));
        }
        const floorFig = figure(`tools.floor: qvm-ls (${many + 2} domains)`, 'ms', floor, { note: 'node + the same connections replayed' });
        figures.push(floorFig);
        figures.push(
          withBaseline(figure(`tools.qvm-ls (${many + 2} domains)`, 'ms', ls, { note: `${reqs.length} connections: ${methods.join(', ')}` }), floorFig, TARGET),
        );
        if (BEFORE) figures.push(withBaseline(figure(`tools.before: qvm-ls (${many + 2} domains)`, 'ms', lsBefore, { note: BEFORE }), floorFig, TARGET));
        figures.push(figure(`tools.qvm-ls (${many + 2} domains) calls`, 'calls', [reqs.length - 1], { target: 'constant (1 + 3N before: ' + (1 + 3 * (many + 2)) + ')' }));
      } finally {
        await big.stop();
      }
      notes.push('each tool and its floor alternate in every round; the daemon is a child qubesd on a state in /tmp (tiny volumes)');
      return { figures, notes };
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  },
};
