/**
 * The crash campaign: a seeded, repeatable random walk over the operations
 * users run on domains and volumes, each run in a child process (through the
 * App, or through a daemon over its socket) that is killed with SIGKILL at a
 * random failpoint (name and hit count), at a random moment (timer), or not
 * at all; in the power-loss campaign (`powerCut`) every child also ends with
 * a power cut of its filesystem and a remount. After every child the parent
 * opens the App itself and checks the invariants of the storage contract
 * against a reference model (see checkAfterChild and docs/reliability.md).
 *
 * The model (model.ts) is the campaign's own record of what every origin
 * volume must hold: its committed data, its working copy while a crash left
 * its domain running, and exactly which revisions exist with which data, as
 * the acknowledged operations define them. Expected values are computed from
 * the planned data, never read back from the code under test (expect.ts).
 * For the one operation a crash interrupted, its old and its new outcome are
 * accepted, and the model follows the one observed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import type { Stats } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS } from '../../src/files/failpoint.js';
import '../../src/drivers/file-reflink/volume.js'; // declares the reflink.* failpoints
import '../../src/domain/app.js'; // declares the app.* failpoints
import type { QubesApp } from '../../src/domain/app.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import { sha256 } from '../helpers/data.js';
import { addCampaignPool, CAMPAIGN_DRIVERS, openCampaignApp, PAGE, poolDir, PRIVATE_SIZE, ROOT_SIZE, type Op, type PoolSpec, type Step } from './child.js';
import type { LoopFs } from './power-cut.js';
import { DAEMON_DIED } from './child-daemon.js';
import { checkBaseDir, KNOWN_PENDING_FIXES } from './base-dir.js';
import { describeMismatch, expectFrom, revisionsMatch, type Expect } from './expect.js';
import {
  applyOp,
  cloneModel,
  cloneVol,
  contentHash,
  keepOf,
  newDom,
  originVols,
  poolUsed,
  type DomModel,
  type Model,
  type VolName,
} from './model.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'child.js');
const MiB = 1024 * 1024;
const MAX_SIZE = 6 * MiB;
const TEMPLATE_NAMES = ['t1', 't2'];
const APPVM_NAMES = ['a1', 'a2', 'a3', 'a4', 'a5'];
const CHILD_TIMEOUT_MS = 60_000;

// ---- seeded randomness ------------------------------------------------------

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** mulberry32: uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// ---- planning --------------------------------------------------------------------

/**
 * Draws the driver and revisions_to_keep of a pool (the default pool once
 * per run, the extra pool at each add) from `drivers`: file-reflink keeps 2
 * revisions, file and xen their most, 1, or (a quarter of the extra pools)
 * 0. From a random stream of its own, so that with the single driver
 * file-reflink a seed plans what it planned before the file driver joined.
 */
export function poolDrawer(seed: number, drivers: readonly string[]): (extra: boolean) => PoolSpec {
  const rng = new Rng(seed ^ 0x2f6b9d1);
  return (extra) => {
    const driver = drivers.length === 1 ? drivers[0]! : rng.pick(drivers);
    return { driver, keep: driver === 'file-reflink' ? 2 : extra && rng.chance(0.25) ? 0 : 1 };
  };
}

/** The state journal's points: reached by any op that saves, when the child saves through the journal. */
const STATE_FAILPOINTS = ['state.journal.before-sync', 'state.journal.after-sync', 'app.compact.after-write'];

const OP_FAILPOINTS: Record<Op['kind'], string[]> = {
  run: [
    'reflink.start.after-base-link',
    'reflink.start.after-copy',
    'reflink.start.after-rename',
    'reflink.stop.after-unlink-dirty',
    'reflink.commit.after-fsync',
    'reflink.commit.after-revision-link',
    'reflink.commit.after-rename',
    'reflink.commit.after-prune',
  ],
  create: ['app.create.after-mark', 'app.create.after-volumes', 'reflink.create.before-rename'],
  clone: [
    'app.create.after-mark',
    'app.create.after-volumes',
    'reflink.create.before-rename',
    'reflink.import-volume.after-copy',
    'reflink.commit.after-fsync',
    'reflink.commit.after-revision-link',
    'reflink.commit.after-rename',
    'reflink.commit.after-prune',
  ],
  remove: ['app.remove.after-mark', 'app.remove.after-volumes', 'reflink.remove.midway'],
  resize: ['reflink.resize.after-truncate', 'reflink.resize.after-copy'],
  revert: ['reflink.revert.after-revision-link', 'reflink.revert.after-rename'],
  import: [
    'reflink.import.after-create',
    'reflink.commit.after-fsync',
    'reflink.commit.after-revision-link',
    'reflink.commit.after-rename',
    'reflink.commit.after-prune',
  ],
  'pool-add': [],
  'pool-remove': [],
};
for (const k of Object.keys(OP_FAILPOINTS) as Op['kind'][]) OP_FAILPOINTS[k].push(...STATE_FAILPOINTS);

const WEIGHTS: [Op['kind'], number][] = [
  ['run', 34],
  ['create', 10],
  ['clone', 8],
  ['remove', 9],
  ['resize', 8],
  ['revert', 12],
  ['import', 9],
  ['pool-add', 5],
  ['pool-remove', 5],
];

/**
 * One feasible random operation on the planning model, applied to it as if
 * it completed. `fresh`: domains cloned earlier in this child; no op of the
 * same child touches them, since the size of a clone's first revision is one
 * of two (see cloneEmptySizes) and only the checker can tell which.
 */
function planOp(m: Model, rng: Rng, fresh: Set<string>, viaDaemon: boolean, drawPool: () => PoolSpec): Op {
  const all = [...m.domains.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  const doms = all.filter((d) => !fresh.has(d.name));
  const templates = all.filter((d) => d.klass === 'TemplateVM');
  const used = (d: DomModel) => all.some((x) => x.template === d.name);
  const freeA = APPVM_NAMES.filter((n) => !m.domains.has(n));
  const freeT = TEMPLATE_NAMES.filter((n) => !m.domains.has(n));
  const hasExtra = m.pools.has('extra');
  const pools = hasExtra ? ['default', 'extra'] : ['default'];
  const priv = (d: DomModel) => d.vols.get('private')!;
  const feasible = (k: Op['kind']): boolean => {
    switch (k) {
      case 'run':
        return doms.length > 0;
      case 'create':
        return freeA.length > 0;
      case 'clone':
        // no admin call clones a domain (qvm-clone is create + CloneFrom/CloneTo per volume)
        return !viaDaemon && doms.some((d) => (d.klass === 'TemplateVM' ? freeT : freeA).length > 0);
      case 'remove':
        return doms.some((d) => d.name !== 'tpl' && !used(d));
      case 'resize':
        return doms.some((d) => priv(d).cur.size < MAX_SIZE);
      case 'revert':
        return doms.some((d) => priv(d).work === null && priv(d).revs.length > 0);
      case 'import':
        return doms.some((d) => priv(d).work === null);
      case 'pool-add':
        return !hasExtra;
      case 'pool-remove':
        return hasExtra && !poolUsed(m, 'extra');
    }
  };
  const choices = WEIGHTS.filter(([k]) => feasible(k));
  let r = rng.next() * choices.reduce((a, [, w]) => a + w, 0);
  let kind = choices[0]![0];
  for (const [k, w] of choices) {
    if ((r -= w) < 0) {
      kind = k;
      break;
    }
  }
  // Pages land below the smallest size a volume ever has, so every planned write fits.
  const page = (size: number) => rng.int(0, size / PAGE - 1) * PAGE;
  let op: Op;
  switch (kind) {
    case 'run': {
      const d = rng.pick(doms);
      const writes: { vol: VolName; offset: number; seed: number }[] = [];
      for (let n = rng.int(0, 2); n > 0; n--) writes.push({ vol: 'private', offset: page(PRIVATE_SIZE), seed: rng.int(1, 2 ** 31) });
      if (d.klass === 'TemplateVM' && rng.chance(0.6)) writes.push({ vol: 'root', offset: page(ROOT_SIZE), seed: rng.int(1, 2 ** 31) });
      op = { kind: 'run', name: d.name, writes, stop: rng.chance(0.75) };
      break;
    }
    case 'create':
      op = { kind: 'create', name: rng.pick(freeA), template: rng.pick(templates).name, pool: rng.pick(pools) };
      break;
    case 'clone': {
      const s = rng.pick(doms.filter((d) => (d.klass === 'TemplateVM' ? freeT.length : freeA.length) > 0));
      const dst = rng.pick(s.klass === 'TemplateVM' ? freeT : freeA);
      op = { kind: 'clone', src: s.name, dst, pool: rng.chance(0.4) ? null : rng.pick(pools) };
      fresh.add(dst);
      break;
    }
    case 'remove':
      op = { kind: 'remove', name: rng.pick(doms.filter((x) => x.name !== 'tpl' && !used(x))).name };
      break;
    case 'resize': {
      const d = rng.pick(doms.filter((x) => priv(x).cur.size < MAX_SIZE));
      const p = priv(d);
      // Sometimes from the size the state recorded (stale after a crash): a resize must never truncate the image.
      const from = rng.chance(0.5) ? Math.min(p.cur.size, p.stateSize) : p.cur.size;
      op = { kind: 'resize', name: d.name, size: Math.min(MAX_SIZE, from + rng.int(1, 4) * 256 * 1024) };
      break;
    }
    case 'revert':
      op = { kind: 'revert', name: rng.pick(doms.filter((x) => priv(x).work === null && priv(x).revs.length > 0)).name };
      break;
    case 'import': {
      const d = rng.pick(doms.filter((x) => priv(x).work === null));
      const cur = priv(d).cur.size;
      const size = rng.chance(0.7) ? cur : Math.min(MAX_SIZE, cur + rng.int(1, 4) * 256 * 1024);
      op = { kind: 'import', name: d.name, size, offset: page(size), seed: rng.int(1, 2 ** 31) };
      break;
    }
    case 'pool-add':
      op = { kind, ...drawPool() };
      break;
    case 'pool-remove':
      op = { kind };
      break;
  }
  applyOp(m, op);
  return op;
}

// ---- observing --------------------------------------------------------------------

const hashCache = new Map<string, string>();
async function hashFile(file: string, st: Stats): Promise<string> {
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  let h = hashCache.get(key);
  if (!h) {
    h = await sha256(file);
    if (hashCache.size > 20_000) hashCache.clear();
    hashCache.set(key, h);
  }
  return h;
}
/** Hashes of an origin volume's committed image, working copy and revisions (oldest first); null without a committed image. */
async function observeVolume(v: FileReflinkVolume, s: Summary): Promise<{ cur: string; work: string | null; revs: string[]; size: number } | null> {
  const cst = await lstatOrNull(v.files.clean);
  if (!cst) return null;
  const cur = await hashFile(v.files.clean, cst);
  const wst = await lstatOrNull(v.files.dirty);
  const work = wst ? await hashFile(v.files.dirty, wst) : null;
  s.checks.hashesCompared += work ? 2 : 1;
  const revs: string[] = [];
  for (const rv of await v.revisions()) {
    const f = v.files.revision(Number(rv.id), rv.time);
    const rst = await lstatOrNull(f);
    revs.push(rst ? await hashFile(f, rst) : `(listed, but ${path.basename(f)} is missing)`);
    s.checks.revisionsVerified++;
  }
  return { cur, work, revs, size: cst.size };
}

async function lstatOrNull(file: string): Promise<Stats | null> {
  try {
    return await fs.lstat(file);
  } catch {
    return null;
  }
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  const rec = async (rel: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    } catch {
      return;
    }
    for (const en of entries) {
      const r = rel ? `${rel}/${en.name}` : en.name;
      if (en.isDirectory()) await rec(r);
      else out.push(r);
    }
  };
  await rec('');
  return out;
}

/**
 * The file names of each driver's layout, as Qubes has them (not taken from
 * the code under test): the working copy, and whether a volatile volume's
 * running image is NAME.img (the R3.2/R4 file layout's `volatile.img`).
 */
interface Layout {
  dirtySuffix: '-dirty.img' | '-cow.img';
  volatileAsImage: boolean;
}
const LAYOUTS: Record<string, Layout> = {
  'file-reflink': { dirtySuffix: '-dirty.img', volatileAsImage: false },
  file: { dirtySuffix: '-cow.img', volatileAsImage: true },
  xen: { dirtySuffix: '-cow.img', volatileAsImage: true },
};

const FILE_RE = /^([A-Za-z][A-Za-z0-9_]*)(\.img|-dirty\.img|-cow\.img|-base\.img|-import\.img|-tmp-[0-9a-f]+\.img|-export-[0-9a-f]+\.img|\.img\.[1-9][0-9]*@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$/;

interface StrayInfo {
  volKey: string;
  pool: string;
  what: string;
  firstIter: number;
  /** The iteration (and its operations) after which it had to be gone; null: not yet. */
  mustBeGoneSince: string | null;
}

// ---- the campaign -------------------------------------------------------------------

export interface CampaignOptions {
  /** A fresh directory on the filesystem under test. */
  dir: string;
  /** The filesystem makes reflink copies (pools keep setup_check=True). */
  reflink: boolean;
  seed: number;
  iterations: number;
  /** Allow timer kills (their moment is not reproducible). */
  timer?: boolean;
  /** Most operations run by one child. */
  maxOpsPerChild?: number;
  /** Called after each iteration (progress). */
  onIteration?: (i: number, s: Summary) => void;
  /** Label for messages (e.g. the filesystem). */
  label?: string;
  /**
   * The power-loss campaign: `dir` is on this filesystem, and every child
   * ends with a power cut of it (at its failpoint, on the timer, or after it
   * finished), then a remount, before the check.
   */
  powerCut?: LoopFs;
  /** Share of children that run their operations through a daemon over its socket (default 0.25). */
  daemonShare?: number;
  /** Drivers the pools draw from (poolDrawer); default CAMPAIGN_DRIVERS: file-reflink, file, xen. */
  drivers?: readonly string[];
}

export interface Summary {
  label: string;
  seed: number;
  iterations: number;
  children: number;
  crashes: number;
  crashesByFailpoint: Record<string, number>;
  /** Per driver: crashes at failpoints whose interrupted operation had a volume (or was the add/remove) of a pool of that driver. */
  crashesByDriver: Record<string, Record<string, number>>;
  /** Per driver: operations on its pools planned / completed (a domain's operation counts for each driver its pools have). */
  opsByDriver: Record<string, { planned: number; completed: number }>;
  /** Driver and revisions_to_keep of the default pool, and of each extra pool added. */
  poolsMade: Record<string, number>;
  timerKills: number;
  /** Children that ran their operations through the daemon. */
  daemonChildren: number;
  /** Power cuts (power-loss campaign): one per child. */
  powerCuts: number;
  /** `run` that ended with the domain running: a host crash while running. */
  crashesWhileRunning: number;
  /** A failpoint was set but not reached: the child finished. */
  failpointNotReached: number;
  completed: number;
  opsPlanned: Record<string, number>;
  opsCompleted: Record<string, number>;
  opsInterrupted: Record<string, number>;
  checks: { hashesCompared: number; revisionsVerified: number; volumesVerified: number; filesWalked: number };
  /** Recorded sizes found stale (image resized or committed at another size without a state save). */
  staleSizes: number;
  /** What fixes not merged yet would make violations (base-dir.ts KNOWN_PENDING_FIXES). */
  pendingFindings: string[];
  violations: string[];
  ms: number;
}

function bump(r: Record<string, number>, k: string, n = 1): void {
  r[k] = (r[k] ?? 0) + n;
}

export function declaredFailpoints(): string[] {
  return [...FAILPOINTS].filter((f) => f.startsWith('reflink.') || f.startsWith('app.') || f.startsWith('state.')).sort();
}

interface ChildResult {
  how: 'done' | 'failpoint' | 'timer' | 'self' | 'error';
  stderr: string;
  ms: number;
}

/**
 * `stateJournal`: the child saves through the state journal (as a state of
 * 10,000 domains would), else by rewriting qubes.xml; children of both
 * kinds alternate on one state, so each also opens what the other left.
 */
function runChild(
  o: CampaignOptions,
  journal: string,
  ops: Op[],
  failpoint: string,
  timerAfter: number | null,
  stateJournal: boolean,
  viaDaemon: boolean,
): Promise<ChildResult> {
  const { dir, reflink, powerCut } = o;
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CHILD, dir, String(reflink), journal, JSON.stringify(ops), viaDaemon ? 'daemon' : 'app'], {
      env: {
        ...process.env,
        QUBES_STORAGE_FAILPOINTS: failpoint,
        QUBES_STORAGE_FAILPOINT_TRACE: '',
        QUBES_STORAGE_JOURNAL_FROM: stateJournal ? '0' : '',
        QUBES_STORAGE_FAILPOINT_ACTION: powerCut ? `shutdown:${powerCut.mnt}` : '',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    let daemonPid: number | null = null;
    let timerFired = false;
    let timer: NodeJS.Timeout | undefined;
    const killAll = (): void => {
      if (daemonPid !== null) killIfAlive(daemonPid);
      child.kill('SIGKILL');
    };
    const hang = setTimeout(killAll, CHILD_TIMEOUT_MS);
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
      const d = /^D (\d+)$/m.exec(stdout);
      if (d) daemonPid = Number(d[1]);
      if (timerAfter !== null && timer === undefined && /^R$/m.test(stdout))
        timer = setTimeout(() => {
          timerFired = true;
          powerCut?.cut(); // the power goes first: nothing is written after it
          killAll();
        }, timerAfter);
    });
    const onClose = async (code: number | null, signal: NodeJS.Signals | null): Promise<void> => {
      clearTimeout(hang);
      if (timer) clearTimeout(timer);
      // The daemon of a daemon run is gone before anything else looks at its files.
      if (daemonPid !== null) await killAndWait(daemonPid);
      const ms = Date.now() - t0;
      // After a power cut by the timer the child may fail on EIO before the SIGKILL lands.
      if (timerFired) return resolve({ how: 'timer', stderr, ms });
      if (signal === 'SIGKILL' || code === DAEMON_DIED) {
        if (ms >= CHILD_TIMEOUT_MS) return resolve({ how: 'error', stderr: `child hung for ${ms} ms\n${stderr}`, ms });
        return resolve({ how: 'failpoint', stderr, ms });
      }
      resolve({ how: code === 0 ? 'done' : 'error', stderr: stderr || `exit ${code} signal ${signal}`, ms });
    };
    child.on('close', (code, signal) => {
      onClose(code, signal).catch(reject);
    });
  });
}

function killIfAlive(pid: number): boolean {
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false; // already gone
  }
}

async function killAndWait(pid: number): Promise<void> {
  while (killIfAlive(pid)) await new Promise((r) => setTimeout(r, 20));
}

async function readJournal(file: string): Promise<Step[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  const out: Step[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as Step);
    } catch {
      // a line cut by the kill is not a step
    }
  }
  return out;
}

export async function runCampaign(o: CampaignOptions): Promise<Summary> {
  const t0 = Date.now();
  const rng = new Rng(o.seed);
  const label = o.label ?? '';
  const s: Summary = {
    label,
    seed: o.seed,
    iterations: 0,
    children: 0,
    crashes: 0,
    crashesByFailpoint: {},
    crashesByDriver: {},
    opsByDriver: {},
    poolsMade: {},
    timerKills: 0,
    powerCuts: 0,
    daemonChildren: 0,
    crashesWhileRunning: 0,
    failpointNotReached: 0,
    completed: 0,
    opsPlanned: {},
    opsCompleted: {},
    opsInterrupted: {},
    checks: { hashesCompared: 0, revisionsVerified: 0, volumesVerified: 0, filesWalked: 0 },
    staleSizes: 0,
    pendingFindings: [],
    violations: [],
    ms: 0,
  };
  // The child's journal lives outside the base directory (and, for power cuts, outside the cut filesystem).
  const journalDir = await fs.mkdtemp(path.join(os.tmpdir(), 'campaign-journal-'));
  const journal = path.join(journalDir, 'journal.log');
  try {
    return await campaignLoop(o, s, rng, journal, t0);
  } finally {
    await fs.rm(journalDir, { recursive: true, force: true });
  }
}

async function campaignLoop(o: CampaignOptions, s: Summary, rng: Rng, journal: string, t0: number): Promise<Summary> {
  const label = o.label ?? '';
  const allFps = declaredFailpoints();

  const drawPool = poolDrawer(o.seed, o.drivers ?? CAMPAIGN_DRIVERS);
  // Setup (not crashed): pool `default` and template `tpl`.
  const defaultPool = drawPool(false);
  bump(s.poolsMade, `default ${defaultPool.driver} keep=${defaultPool.keep}`);
  {
    const app = await openCampaignApp(o.dir);
    try {
      await addCampaignPool(app, o.dir, 'default', o.reflink, defaultPool);
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    } finally {
      await app.close();
    }
  }
  let model: Model = {
    domains: new Map([['tpl', newDom('tpl', 'TemplateVM', null, 'default', 'default', defaultPool.keep)]]),
    pools: new Map([['default', defaultPool]]),
  };
  const strays = new Map<string, StrayInfo>();
  const sizePending = new Set<string>();
  let emaMs = 150;

  for (let it = 1; it <= o.iterations; it++) {
    const where = `seed ${o.seed} iteration ${it}${label ? ` on ${label}` : ''}`;
    let context = '';
    const fail = (msg: string): void => {
      s.violations.push(`${where}: ${msg}${context}`);
      context = '';
    };
    // Plan.
    const plan = cloneModel(model);
    const viaDaemon = rng.chance(o.daemonShare ?? 0.25);
    const n = rng.chance(0.6) ? 1 : rng.chance(0.6) ? 2 : 3;
    const ops: Op[] = [];
    const fresh = new Set<string>();
    for (let k = 0; k < (o.maxOpsPerChild ? Math.min(n, o.maxOpsPerChild) : n); k++) ops.push(planOp(plan, rng, fresh, viaDaemon, () => drawPool(true)));
    for (const op of ops) bump(s.opsPlanned, op.kind);
    for (const op of ops) if (op.kind === 'pool-add') bump(s.poolsMade, `extra ${op.driver} keep=${op.keep}`);
    // The drivers each op works with, from the model before the child (as planned, in order).
    const opDrivers = driversOfOps(model, ops);
    for (const ds of opDrivers) for (const d of ds) (s.opsByDriver[d] ??= { planned: 0, completed: 0 }).planned++;
    const mode = rng.next();
    const stateJournal = rng.chance(0.5);
    let failpoint = '';
    let timerAfter: number | null = null;
    const relevant = [...new Set(ops.flatMap((op) => OP_FAILPOINTS[op.kind]))];
    if (mode < 0.65) {
      const name = relevant.length && rng.chance(0.9) ? rng.pick(relevant) : rng.pick(allFps);
      const hit = rng.next();
      failpoint = `${name}:${hit < 0.7 ? 1 : hit < 0.9 ? 2 : 3}`;
    } else if (mode < 0.92 && o.timer !== false) {
      timerAfter = Math.floor(rng.next() * emaMs * 1.1);
    }

    context = ` [ops ${JSON.stringify(ops)}, kill ${failpoint || (timerAfter !== null ? `timer ${timerAfter} ms` : 'none')}]`;
    // Run the child.
    await fs.rm(journal, { force: true });
    const r = await runChild(o, journal, ops, failpoint, timerAfter, stateJournal, viaDaemon);
    if (viaDaemon) s.daemonChildren++;
    if (o.powerCut) {
      // Every child ends with a power cut (a second one, after a cut at a failpoint or by the
      // timer, changes nothing), then the reboot: unmount, mount, log recovery.
      o.powerCut.cut();
      o.powerCut.remount();
      hashCache.clear(); // the same inode may now hold other data
      s.powerCuts++;
    }
    s.children++;
    s.iterations = it;
    const steps = await readJournal(journal);
    const leftRunning = steps.some((x) => x.s === 'left-running');
    if (r.how === 'error') {
      fail(`child failed (ops ${JSON.stringify(ops)}, failpoint '${failpoint}'): ${r.stderr.trim().split('\n').slice(0, 6).join(' | ')}`);
    } else if (r.how === 'failpoint' && leftRunning) {
      // Its own SIGKILL after `left-running`: a host crash while the domain runs.
      s.crashes++;
      s.crashesWhileRunning++;
      if (failpoint) s.failpointNotReached++;
    } else if (r.how === 'failpoint') {
      s.crashes++;
      bump(s.crashesByFailpoint, failpoint.split(':')[0]!);
      const cut = ops.findIndex((_, i) => steps.some((x) => x.i === i) && !steps.some((x) => x.i === i && x.s === 'done'));
      for (const d of opDrivers[cut] ?? []) bump((s.crashesByDriver[d] ??= {}), failpoint.split(':')[0]!);
    } else if (r.how === 'timer') {
      s.crashes++;
      s.timerKills++;
    } else {
      s.completed++;
      if (failpoint) s.failpointNotReached++;
      if (!failpoint) emaMs = emaMs * 0.9 + Math.max(20, r.ms - 80) * 0.1;
    }
    for (let i = 0; i < ops.length; i++) {
      const st = steps.filter((x) => x.i === i);
      if (st.some((x) => x.s === 'done')) {
        bump(s.opsCompleted, ops[i]!.kind);
        for (const d of opDrivers[i]!) s.opsByDriver[d]!.completed++;
      }
      else if (st.length) bump(s.opsInterrupted, ops[i]!.kind);
    }

    // Check.
    const e = expectFrom(model, ops, steps, o.powerCut !== undefined);
    for (const v of e.violations) fail(v);
    const next = await checkAfterChild(o, e, strays, sizePending, it, context, s, fail);
    if (next === null) {
      fail('the model cannot follow the observed state; campaign stopped');
      break;
    }
    model = next;
    o.onIteration?.(it, s);
  }
  s.ms = Date.now() - t0;
  return s;
}

/**
 * Opens the App (finishing what a crash interrupted, as the next start
 * does), checks every invariant, closes it again; returns the model as
 * observed (null when it cannot be followed).
 */
async function checkAfterChild(
  o: CampaignOptions,
  e: Expect,
  strays: Map<string, StrayInfo>,
  sizePending: Set<string>,
  it: number,
  /** This iteration's operations and kill, for messages. */
  context: string,
  s: Summary,
  fail: (msg: string) => void,
): Promise<Model | null> {
  const m = e.model;
  /** Data differs from every outcome the model allows: reported, and the model cannot follow. */
  let lost = false;
  let app: QubesApp;
  try {
    app = await openCampaignApp(o.dir);
  } catch (err) {
    fail(`the state file does not load: ${(err as Error).message}`);
    return null;
  }
  try {
    // The state file carries no unfinished write-ahead mark.
    const xml = await fs.readFile(path.join(o.dir, 'qubes.xml'), 'utf8');
    if (/qubes-storage-pending/.test(xml)) fail('a write-ahead mark is left in the state file after open');

    // Pools: exactly the model's, with its driver and revisions_to_keep.
    const hasExtra = app.poolNames().includes('extra');
    if (hasExtra !== m.pools.has('extra') && !e.maybeExtra) fail(`pool extra ${hasExtra ? 'exists' : 'is missing'}, the model says otherwise`);
    if (!hasExtra) m.pools.delete('extra');
    else if (!m.pools.has('extra')) m.pools.set('extra', e.extraIfAdded ?? { driver: '(unknown)', keep: -2 });
    const namingOf = new Map<string, Layout>();
    for (const [name, spec] of m.pools) {
      const p = app.pool(name);
      if (p.driver !== spec.driver || p.revisions_to_keep !== spec.keep)
        fail(`pool ${name}: driver ${p.driver}, revisions_to_keep=${p.revisions_to_keep}; the model says ${spec.driver}, ${spec.keep}`);
      const layout = LAYOUTS[spec.driver];
      if (layout) namingOf.set(name, layout);
    }

    // Domains.
    const names = app.domainList().map((d) => d.name).filter((n) => n !== 'dom0');
    for (const n of names) {
      if (!m.domains.has(n)) {
        fail(`domain ${n} exists, the model has no such domain`);
        return null;
      }
    }
    for (const n of [...m.domains.keys()]) {
      if (names.includes(n)) continue;
      if (e.maybeDomains.has(n)) m.domains.delete(n);
      else {
        fail(`domain ${n} is missing`);
        return null;
      }
    }
    // A domain that the in-flight op removed or created stays in the model as observed.

    /** Debris seen now, by file#inode. */
    const current = new Map<string, { volKey: string; pool: string; what: string }>();
    // Volumes: verify, then committed data, working copy and revisions against the model.
    const owners = new Map<string, { dom: DomModel; vol: string; kind: string }>();
    for (const dm of m.domains.values()) {
      const d = app.domain(dm.name);
      if (d.klass !== dm.klass || (d.template?.name ?? null) !== dm.template) fail(`domain ${dm.name}: class/template ${d.klass}/${d.template?.name} not ${dm.klass}/${dm.template}`);
      try {
        await d.storage.verify();
        s.checks.volumesVerified += d.storage.volumes.size;
      } catch (err) {
        fail(`domain ${dm.name}: verify failed: ${(err as Error).message}`);
      }
      for (const v of d.storage.volumes.values()) owners.set(`${v.pool.name}:${v.vid}`, { dom: dm, vol: v.name, kind: v.kind });
      for (const vn of originVols(dm)) {
        const v = d.storage.get(vn) as FileReflinkVolume;
        const id = `${dm.name}/${vn}`;
        const obs = await observeVolume(v, s);
        if (!obs) {
          fail(`${id}: the committed image ${v.files.clean} is missing (data lost)`);
          lost = true;
          continue;
        }
        const alts = e.alts.get(id) ?? [dm.vols.get(vn)!];
        const match = alts.find(
          (a) => obs.cur === contentHash(a.cur) && obs.work === (a.work && contentHash(a.work)) && revisionsMatch(obs.revs, a.revs, a.keep),
        );
        if (!match) {
          fail(`${id}: neither the old nor the new state: ${alts.map((a, k) => `[outcome ${k + 1}: ${describeMismatch(obs, a)}]`).join(' ')}`);
          lost = true;
          continue;
        }
        // The state records the image's size, unless a crash cut a resize/import of this volume
        // before the state was saved; then the image's size wins at the next resize or start.
        // A stale record is harmless since the image's size wins (Volume.storedSize); it is counted.
        // What would hurt, a resize truncating the image, is checked on every resize.
        if (obs.size !== v.size) {
          if (!(e.sizeOps.has(id) || sizePending.has(id))) s.staleSizes++;
          sizePending.add(id);
        } else sizePending.delete(id);
        dm.vols.set(vn, { ...cloneVol(match), stateSize: v.size });
      }
      // Working copies of the other volumes (volatile, snapshot) exist only while a crash left the domain running.
      if (!dm.running) {
        for (const v of d.storage.volumes.values()) {
          const f = (v as FileReflinkVolume).files;
          const st = await lstatOrNull(f.dirty);
          if (!st) continue;
          // A stop unlinks these without a directory fsync: a power cut may bring one back; the
          // next start of the domain discards it.
          if (o.powerCut && v.kind !== 'origin')
            current.set(`${f.dirty}#${st.ino}`, { volKey: `${v.pool.name}:${v.vid}`, pool: v.pool.name, what: 'working copy of a stopped domain, back after a power cut' });
          else fail(`${dm.name}/${v.name}: a working copy after a clean stop`);
        }
      }
    }

    // Every other file of the base directory: a known kind; no temporary file of the state after this open.
    const base = await checkBaseDir(o.dir, ['default', 'extra'].map((p) => poolDir(o.dir, p)));
    s.checks.filesWalked += base.files;
    for (const v of base.violations) fail(v);
    for (const p of base.pending) if (!s.pendingFindings.some((f) => f.endsWith(p))) s.pendingFindings.push(`seed ${o.seed} iteration ${it}: ${p}`);

    // Files in the pools: every one belongs to a volume of a domain; debris goes at the next operation.
    for (const pool of ['default', 'extra']) {
      const root = poolDir(o.dir, pool);
      const files = await walk(root);
      s.checks.filesWalked += files.length;
      const byVol = new Map<string, string[]>();
      // (a removed pool holds no volume file: any is a violation, whatever its naming)
      const naming = namingOf.get(pool) ?? LAYOUTS['file-reflink']!;
      const otherDirty = naming.dirtySuffix === '-dirty.img' ? '-cow.img' : '-dirty.img';
      for (const rel of files) {
        const parts = rel.split('/');
        const mm = parts.length === 3 ? FILE_RE.exec(parts[2]!) : null;
        if (!mm || (namingOf.has(pool) && mm[2] === otherDirty)) {
          fail(`unknown file ${pool}:${rel}`);
          continue;
        }
        const volKey = `${pool}:${parts[0]}/${parts[1]}/${mm[1]}`;
        if (!owners.has(volKey)) {
          fail(`${pool}:${rel}: a volume file without a domain`);
          continue;
        }
        byVol.set(volKey, [...(byVol.get(volKey) ?? []), mm[2]!]);
      }
      for (const [volKey, suffixes] of byVol) {
        const owner = owners.get(volKey)!;
        const dirOf = path.join(root, volKey.slice(pool.length + 1));
        const clean = await lstatOrNull(`${dirOf}.img`);
        const revs: { sfx: string; id: number }[] = [];
        for (const sfx of suffixes) {
          const file = `${dirOf}${sfx}`;
          const st = await lstatOrNull(file);
          if (!st) continue;
          const add = (what: string): void => void current.set(`${file}#${st.ino}`, { volKey, pool, what });
          if (/^-(tmp|export)-|^-import/.test(sfx)) add(`temporary file ${sfx}`);
          else if (sfx === '-base.img' && !suffixes.includes(naming.dirtySuffix)) add(`-base without ${naming.dirtySuffix}`);
          // (the file layout names a volatile volume's running image NAME.img: its working copy, checked above)
          else if (sfx === '.img' && owner.kind !== 'origin' && !(owner.kind === 'volatile' && naming.volatileAsImage))
            fail(`${volKey}: committed image for a ${owner.kind} volume`);
          else if (sfx.startsWith('.img.')) {
            if (clean && st.ino === clean.ino) add(`revision ${sfx} sharing the committed image's inode`);
            else revs.push({ sfx, id: Number(sfx.slice(5).split('@')[0]) });
          }
        }
        revs.sort((a, b) => a.id - b.id);
        const keep = Math.max(0, keepOf(m, pool));
        for (const r of revs.slice(0, Math.max(0, revs.length - keep))) {
          const st = await lstatOrNull(`${dirOf}${r.sfx}`);
          if (st) current.set(`${dirOf}${r.sfx}#${st.ino}`, { volKey, pool, what: `revision ${r.sfx} beyond the limit of ${keep}` });
        }
      }
    }
    // Debris seen before must be gone once an operation on its volume (or
    // a sweep of its pool, for temporary files) completed since.
    for (const info of strays.values()) {
      const poolLevel = info.what.startsWith('temporary');
      // (a crash in the interrupted op may have made it again: ext4 reuses inode numbers at once)
      if (e.inFlight.some((n) => info.volKey.includes(`/${n}/`))) continue;
      if (info.mustBeGoneSince === null && (e.touched.has(info.volKey) || (poolLevel && e.swept.has(info.pool))))
        info.mustBeGoneSince = `iteration ${it} ${context}`;
    }
    for (const [key, cur] of current) {
      const old = strays.get(key);
      if (old?.mustBeGoneSince) fail(`${key.split('#')[0]}: ${old.what} (first seen after iteration ${old.firstIter}) still there after an operation on it completed (${old.mustBeGoneSince})`);
      if (!old) strays.set(key, { ...cur, firstIter: it, mustBeGoneSince: null });
    }
    for (const key of [...strays.keys()]) if (!current.has(key)) strays.delete(key);
  } finally {
    await app.close();
  }
  return lost ? null : m;
}

export function formatSummary(s: Summary): string {
  const lines: string[] = [];
  const sec = (s.ms / 1000).toFixed(1);
  const kind = s.powerCuts ? 'power-loss campaign' : 'crash campaign';
  lines.push(`${kind}${s.label ? ` on ${s.label}` : ''}: seed ${s.seed}, ${s.iterations} iterations (${s.children} children, ${s.daemonChildren} of them through the daemon's socket) in ${sec} s`);
  if (s.powerCuts) lines.push(`  power cuts (shutdown without log flush, then remount): ${s.powerCuts}, one per child; those during an operation are the crashes below`);
  lines.push(
    `  crashes: ${s.crashes} = ${Object.values(s.crashesByFailpoint).reduce((a, b) => a + b, 0)} at failpoints + ${s.timerKills} by timer + ${s.crashesWhileRunning} while running (domain left running)`,
  );
  lines.push(`  children that finished: ${s.completed} (failpoint set but not reached: ${s.failpointNotReached})`);
  lines.push('  crashes by failpoint:');
  for (const fp of declaredFailpoints()) lines.push(`    ${fp.padEnd(40)} ${s.crashesByFailpoint[fp] ?? 0}`);
  lines.push(`  pools made: ${Object.entries(s.poolsMade).sort().map(([k, n]) => `${k}: ${n}`).join(', ')}`);
  for (const d of Object.keys(s.opsByDriver).sort()) {
    const fps = Object.entries(s.crashesByDriver[d] ?? {}).sort();
    const o = s.opsByDriver[d]!;
    lines.push(
      `  driver ${d}: ${o.planned} operations planned, ${o.completed} completed; ${fps.reduce((a, [, n]) => a + n, 0)} crashes at failpoints` +
        (fps.length ? `: ${fps.map(([f, n]) => `${f} ${n}`).join(', ')}` : ''),
    );
  }
  lines.push('  operations (planned / completed / interrupted by a crash):');
  for (const k of Object.keys(s.opsPlanned).sort())
    lines.push(`    ${k.padEnd(12)} ${String(s.opsPlanned[k]).padStart(6)} ${String(s.opsCompleted[k] ?? 0).padStart(6)} ${String(s.opsInterrupted[k] ?? 0).padStart(6)}`);
  lines.push(
    `  checks: ${s.checks.hashesCompared} images and working copies compared by hash, ${s.checks.revisionsVerified} revisions verified, ${s.checks.volumesVerified} volume verify() calls, ${s.checks.filesWalked} files of the base directory and pools classified`,
  );
  lines.push(`  recorded sizes found stale without an interrupted resize/import/revert (harmless: the image's size wins): ${s.staleSizes}`);
  if (s.pendingFindings.length) {
    lines.push(`  findings of fixes not merged yet (${[...KNOWN_PENDING_FIXES].join(', ')}): ${s.pendingFindings.length}`);
    for (const f of s.pendingFindings.slice(0, 5)) lines.push(`    ${f}`);
  }
  lines.push(`  violations: ${s.violations.length}`);
  for (const v of s.violations.slice(0, 30)) lines.push(`    ${v}`);
  if (s.violations.length > 30) lines.push(`    ... ${s.violations.length - 30} more`);
  lines.push(`${s.crashes} crashes${s.powerCuts ? ` (${s.powerCuts} power cuts)` : ''}, ${s.violations.length} violations`);
  return lines.join('\n');
}

/**
 * The drivers of the pools each op works with, following the ops on a copy
 * of the model (for the summary): a domain's pools, a create's or clone's
 * target, the extra pool an add or remove makes or drops.
 */
function driversOfOps(before: Model, ops: Op[]): string[][] {
  const m = cloneModel(before);
  return ops.map((op) => {
    const pools = new Set<string>();
    const domPools = (n: string) => {
      const d = m.domains.get(n);
      if (d) [d.pool, d.rootPool].forEach((p) => pools.add(p));
    };
    switch (op.kind) {
      case 'create':
        pools.add(op.pool);
        domPools(op.template);
        break;
      case 'clone':
        domPools(op.src);
        if (op.pool) pools.add(op.pool);
        break;
      case 'pool-add':
      case 'pool-remove':
        pools.add('extra');
        break;
      default:
        domPools(op.name);
    }
    const drivers = [...pools].map((p) => (op.kind === 'pool-add' ? op.driver : m.pools.get(p)?.driver ?? '?'));
    applyOp(m, op);
    return [...new Set(drivers)];
  });
}
