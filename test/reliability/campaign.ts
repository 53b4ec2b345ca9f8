/**
 * The crash campaign: a seeded, repeatable random walk over the operations
 * users run on domains and volumes, each run in a child process that is
 * killed with SIGKILL at a random failpoint (name and hit count), at a
 * random moment (timer), or not at all; after every child the parent opens
 * the App itself and checks the invariants of the storage contract against
 * a reference model (see checkAfterChild and docs/reliability.md).
 *
 * The model knows, for every origin volume (every private, and the root of
 * templates), its committed hash, every hash it ever committed (what its
 * revisions may hold), the working copy's hash while a domain is "running"
 * (left running by a crash), and its size. For the one operation a crash
 * interrupted, both its old and its new outcome are accepted; the model then
 * follows what is observed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import type { Stats } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS } from '../../src/files/failpoint.js';
import '../../src/drivers/file-reflink/volume.js'; // declares the reflink.* failpoints
import '../../src/domain/app.js'; // declares the app.* failpoints
import type { QubesApp } from '../../src/domain/app.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import { sha256 } from '../helpers/data.js';
import {
  addCampaignPool,
  openCampaignApp,
  PAGE,
  poolDir,
  PRIVATE_SIZE,
  REVISIONS_TO_KEEP,
  ROOT_SIZE,
  shaPadded,
  type Op,
  type Step,
} from './child.js';

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

// ---- the model ----------------------------------------------------------------

type VolName = 'private' | 'root';

interface VolModel {
  /** sha256 of the committed image. */
  cur: string;
  /** Every hash this volume has committed: what a revision may hold. */
  known: Set<string>;
  /** sha256 the working copy must have when it exists; null: it must not exist. */
  work: string | null;
  /** Size of the committed image. */
  size: number;
  /** Size the state file records (differs from size only after a crash between a resize/import and the save). */
  stateSize: number;
  revs: number;
}

interface DomModel {
  name: string;
  klass: 'TemplateVM' | 'AppVM';
  template: string | null;
  /** Pool of private and volatile (and root of a template). */
  pool: string;
  /** Pool of the root volume (an AppVM's snapshot stays in its template's pool). */
  rootPool: string;
  vols: Map<VolName, VolModel>;
  /** Left running (or between start and a clean stop) by a crash. */
  running: boolean;
}

interface Model {
  domains: Map<string, DomModel>;
  extra: boolean;
}

function cloneVol(v: VolModel): VolModel {
  return { cur: v.cur, known: new Set(v.known), work: v.work, size: v.size, stateSize: v.stateSize, revs: v.revs };
}
function cloneDom(d: DomModel): DomModel {
  return { ...d, vols: new Map([...d.vols].map(([k, v]) => [k, cloneVol(v)])) };
}
function cloneModel(m: Model): Model {
  return { domains: new Map([...m.domains].map(([k, d]) => [k, cloneDom(d)])), extra: m.extra };
}

const zeroHashes = new Map<number, string>();
function zeroHash(size: number): string {
  let h = zeroHashes.get(size);
  if (!h) zeroHashes.set(size, (h = shaPadded(Buffer.alloc(0), size)));
  return h;
}

function prefixOf(d: DomModel): string {
  return d.klass === 'TemplateVM' ? 'vm-templates' : 'appvms';
}
/** pool:vid of each volume of the domain. */
function volKeys(d: DomModel): string[] {
  const p = `${prefixOf(d)}/${d.name}`;
  return [`${d.pool}:${p}/private`, `${d.pool}:${p}/volatile`, `${d.rootPool}:${p}/root`];
}
function originVols(d: DomModel): VolName[] {
  return d.klass === 'TemplateVM' ? ['private', 'root'] : ['private'];
}
function poolUsed(m: Model, pool: string): boolean {
  return [...m.domains.values()].some((d) => d.pool === pool || d.rootPool === pool);
}

// ---- planning --------------------------------------------------------------------

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

/** One feasible random operation on the (planning) model, applied to it as if it completed. */
function planOp(m: Model, rng: Rng): Op {
  const doms = [...m.domains.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  const templates = doms.filter((d) => d.klass === 'TemplateVM');
  const used = (d: DomModel) => doms.some((x) => x.template === d.name);
  const freeA = APPVM_NAMES.filter((n) => !m.domains.has(n));
  const freeT = TEMPLATE_NAMES.filter((n) => !m.domains.has(n));
  const pools = m.extra ? ['default', 'extra'] : ['default'];
  const feasible = (k: Op['kind']): boolean => {
    switch (k) {
      case 'run':
        return true;
      case 'create':
        return freeA.length > 0;
      case 'clone':
        return doms.some((d) => (d.klass === 'TemplateVM' ? freeT : freeA).length > 0);
      case 'remove':
        return doms.some((d) => d.name !== 'tpl' && !used(d));
      case 'resize':
        return doms.some((d) => d.vols.get('private')!.size < MAX_SIZE);
      case 'revert':
        return doms.some((d) => d.vols.get('private')!.work === null && d.vols.get('private')!.revs > 0);
      case 'import':
        return doms.some((d) => d.vols.get('private')!.work === null);
      case 'pool-add':
        return !m.extra;
      case 'pool-remove':
        return m.extra && !poolUsed(m, 'extra');
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
  const mark = (d: DomModel, dirty: boolean, commit: boolean): void => {
    const p = d.vols.get('private')!;
    p.work = dirty ? 'planned' : null;
    if (commit) p.revs = Math.min(p.revs + 1, REVISIONS_TO_KEEP);
  };
  switch (kind) {
    case 'run': {
      const d = rng.pick(doms);
      const writes: { vol: VolName; offset: number; seed: number }[] = [];
      for (let n = rng.int(0, 2); n > 0; n--)
        writes.push({ vol: 'private', offset: rng.int(0, d.vols.get('private')!.size / PAGE - 1) * PAGE, seed: rng.int(1, 2 ** 31) });
      if (d.klass === 'TemplateVM' && rng.chance(0.6))
        writes.push({ vol: 'root', offset: rng.int(0, d.vols.get('root')!.size / PAGE - 1) * PAGE, seed: rng.int(1, 2 ** 31) });
      const stop = rng.chance(0.75);
      mark(d, !stop, stop);
      return { kind: 'run', name: d.name, writes, stop };
    }
    case 'create': {
      const t = rng.pick(templates);
      const name = rng.pick(freeA);
      const pool = rng.pick(pools);
      m.domains.set(name, newDom(name, 'AppVM', t.name, pool, t.rootPool));
      return { kind: 'create', name, template: t.name, pool };
    }
    case 'clone': {
      const srcs = doms.filter((d) => (d.klass === 'TemplateVM' ? freeT.length : freeA.length) > 0);
      const s = rng.pick(srcs);
      const dst = rng.pick(s.klass === 'TemplateVM' ? freeT : freeA);
      const pool = rng.chance(0.4) ? null : rng.pick(pools);
      const d = cloneDom(s);
      d.name = dst;
      d.pool = pool ?? s.pool;
      if (s.klass === 'TemplateVM') d.rootPool = d.pool;
      for (const v of d.vols.values()) {
        v.work = null;
        v.revs = 1;
      }
      m.domains.set(dst, d);
      return { kind: 'clone', src: s.name, dst, pool };
    }
    case 'remove': {
      const d = rng.pick(doms.filter((x) => x.name !== 'tpl' && !used(x)));
      m.domains.delete(d.name);
      return { kind: 'remove', name: d.name };
    }
    case 'resize': {
      const d = rng.pick(doms.filter((x) => x.vols.get('private')!.size < MAX_SIZE));
      const p = d.vols.get('private')!;
      // Sometimes from the size the state recorded (stale after a crash): a resize must never truncate the image.
      const from = rng.chance(0.5) ? Math.min(p.size, p.stateSize) : p.size;
      const size = Math.min(MAX_SIZE, from + rng.int(1, 4) * 256 * 1024);
      p.size = p.stateSize = Math.max(size, p.size);
      return { kind: 'resize', name: d.name, size };
    }
    case 'revert': {
      const d = rng.pick(doms.filter((x) => x.vols.get('private')!.work === null && x.vols.get('private')!.revs > 0));
      return { kind: 'revert', name: d.name };
    }
    case 'import': {
      const d = rng.pick(doms.filter((x) => x.vols.get('private')!.work === null));
      const p = d.vols.get('private')!;
      const size = rng.chance(0.7) ? p.size : Math.min(MAX_SIZE, p.size + rng.int(1, 4) * 256 * 1024);
      p.size = p.stateSize = size;
      mark(d, false, true);
      return { kind: 'import', name: d.name, size, offset: rng.int(0, size / PAGE - 1) * PAGE, seed: rng.int(1, 2 ** 31) };
    }
    case 'pool-add':
      m.extra = true;
      return { kind: 'pool-add' };
    case 'pool-remove':
      m.extra = false;
      return { kind: 'pool-remove' };
  }
}

function newDom(name: string, klass: 'TemplateVM' | 'AppVM', template: string | null, pool: string, rootPool: string): DomModel {
  const vols = new Map<VolName, VolModel>();
  const z = zeroHash(PRIVATE_SIZE);
  vols.set('private', { cur: z, known: new Set([z]), work: null, size: PRIVATE_SIZE, stateSize: PRIVATE_SIZE, revs: 0 });
  if (klass === 'TemplateVM') {
    const zr = zeroHash(ROOT_SIZE);
    vols.set('root', { cur: zr, known: new Set([zr]), work: null, size: ROOT_SIZE, stateSize: ROOT_SIZE, revs: 0 });
  }
  return { name, klass, template, pool, rootPool, vols, running: false };
}

// ---- expectations of one child ------------------------------------------------------

/** An acceptable outcome of one origin volume. */
interface Alt {
  cur: string;
  /** Acceptable hashes of the working copy when it exists. */
  work: string[];
  /** The working copy must exist. */
  workMust: boolean;
  sizes: number[];
}

interface Expect {
  /** The model as it is if every completed op took effect and the in-flight one did too. */
  model: Model;
  /** Domains that may or may not exist (the in-flight create, clone or remove). */
  maybeDomains: Set<string>;
  maybeExtra: boolean;
  /** Per "domain/volume": acceptable outcomes (absent: exactly the model's). */
  alts: Map<string, Alt[]>;
  /** pool:vid of volumes an operation completed on (their recover() ran). */
  touched: Set<string>;
  /** Pools swept of debris by a completed operation. */
  swept: Set<string>;
  /** "domain/volume" whose resize or import was under way: the state may record the old size. */
  sizeOps: Set<string>;
  /** Domains of the operation a crash interrupted. */
  inFlight: string[];
  violations: string[];
}

function exactAlt(v: VolModel): Alt {
  return { cur: v.cur, work: v.work ? [v.work] : [], workMust: v.work !== null, sizes: [v.size, v.stateSize] };
}

/** Applies the journal of a child to (a copy of) the model. */
function expectFrom(before: Model, ops: Op[], steps: Step[]): Expect {
  const m = cloneModel(before);
  const e: Expect = { model: m, maybeDomains: new Set(), maybeExtra: false, alts: new Map(), touched: new Set(), swept: new Set(), sizeOps: new Set(), inFlight: [], violations: [] };
  const touch = (keys: string[]): void => {
    for (const k of keys) {
      e.touched.add(k);
      e.swept.add(k.split(':')[0]!);
    }
  };
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i]!;
    const st = steps.filter((s) => s.i === i);
    if (st.length === 0) break; // not started
    const has = (name: string) => st.some((s) => s.s === name);
    const step = (name: string) => st.find((s) => s.s === name);
    const done = has('done');
    const inFlight = !done;
    switch (op.kind) {
      case 'pool-add':
      case 'pool-remove':
        if (done) m.extra = op.kind === 'pool-add';
        else e.maybeExtra = true;
        break;
      case 'create': {
        const t = m.domains.get(op.template)!;
        const d = newDom(op.name, 'AppVM', op.template, op.pool, t.rootPool);
        m.domains.set(op.name, d);
        if (inFlight) e.maybeDomains.add(op.name);
        else touch(volKeys(d));
        break;
      }
      case 'clone': {
        const s = m.domains.get(op.src)!;
        const d = cloneDom(s);
        d.name = op.dst;
        d.pool = op.pool ?? s.pool;
        if (s.klass === 'TemplateVM') d.rootPool = d.pool;
        d.running = false;
        for (const v of d.vols.values()) {
          // created empty at the recorded size, then filled with a copy of the image
          v.known = new Set([zeroHash(v.size), zeroHash(v.stateSize), v.cur]);
          v.stateSize = v.size;
          v.work = null;
          v.revs = 1;
        }
        m.domains.set(op.dst, d);
        if (inFlight) e.maybeDomains.add(op.dst);
        else {
          touch(volKeys(d));
          touch(volKeys(s).filter((k) => !k.endsWith('/volatile') && (s.klass === 'TemplateVM' || !k.endsWith('/root'))));
        }
        break;
      }
      case 'remove':
        if (done) m.domains.delete(op.name);
        else e.maybeDomains.add(op.name);
        break;
      case 'run': {
        const d = m.domains.get(op.name)!;
        const started = step('started');
        if (done) touch(volKeys(d));
        for (const vn of originVols(d)) {
          const v = d.vols.get(vn)!;
          const C = v.cur;
          const W = v.work;
          if (!started) {
            e.alts.set(`${d.name}/${vn}`, [{ cur: C, work: [W ?? C], workMust: W !== null, sizes: [v.size] }]);
            continue;
          }
          const seen = (started['seen'] as Record<string, string>)[vn];
          if (seen !== (W ?? C))
            e.violations.push(
              W !== null
                ? `${d.name}/${vn}: uncommitted data lost: the start after a crash showed ${short(seen)}, the domain had written ${short(W)}`
                : `${d.name}/${vn}: start showed ${short(seen)}, not the committed data ${short(C)}`,
            );
          let works = [seen ?? C];
          for (const s of st) {
            if (s['vol'] !== vn) continue;
            if (s.s === 'writing') works = [works.at(-1)!, s['h'] as string];
            if (s.s === 'wrote') works = [works.at(-1)!];
          }
          if (done) {
            v.cur = works[0]!;
            v.known.add(v.cur);
            v.work = null;
            v.revs = Math.min(v.revs + 1, REVISIONS_TO_KEEP);
          } else if (has('stopping')) {
            e.alts.set(`${d.name}/${vn}`, [
              { cur: C, work: works, workMust: true, sizes: [v.size] },
              ...works.map((h) => ({ cur: h, work: [], workMust: false, sizes: [v.size] })),
            ]);
          } else {
            e.alts.set(`${d.name}/${vn}`, [{ cur: C, work: works, workMust: true, sizes: [v.size] }]);
          }
        }
        d.running = !done;
        break;
      }
      case 'resize': {
        const d = m.domains.get(op.name)!;
        const v = d.vols.get('private')!;
        const r = step('resizing');
        if (done) touch([volKeys(d)[0]!]);
        if (r) e.sizeOps.add(`${d.name}/private`);
        if (has('refused')) {
          if (op.size >= (r!['cleanSize'] as number))
            e.violations.push(`${d.name}/private: resize to ${op.size} refused, the image has ${String(r!['cleanSize'])} bytes`);
        } else if (r && done && op.size < (r['cleanSize'] as number)) {
          e.violations.push(`${d.name}/private: resize to ${op.size} truncated the ${String(r['cleanSize'])}-byte image (data lost)`);
        } else if (r && done) {
          v.cur = r['clean'] as string;
          v.known.add(v.cur);
          v.work = (r['work'] as string | null) ?? null;
          v.size = v.stateSize = op.size;
        } else if (r) {
          const curs = [v.cur, r['clean'] as string];
          const works = v.work ? [v.work, r['work'] as string] : [];
          e.alts.set(`${d.name}/private`, curs.map((c) => ({ cur: c, work: works, workMust: v.work !== null, sizes: [v.size, op.size] })));
        }
        break;
      }
      case 'revert':
      case 'import': {
        const d = m.domains.get(op.name)!;
        const v = d.vols.get('private')!;
        if (has('skip')) {
          e.violations.push(`${op.kind} ${op.name} skipped: ${String(step('skip')!['why'])} (the model disagrees with the volume)`);
          break;
        }
        const r = step(op.kind === 'revert' ? 'reverting' : 'importing');
        if (r) e.sizeOps.add(`${d.name}/private`);
        if (done) touch([volKeys(d)[0]!]);
        const newSize = op.kind === 'import' ? op.size : v.size;
        if (r && done) {
          v.cur = r['h'] as string;
          v.known.add(v.cur);
          v.size = v.stateSize = newSize;
        } else if (r) {
          e.alts.set(`${d.name}/private`, [
            { cur: v.cur, work: [], workMust: false, sizes: [v.size, newSize] },
            { cur: r['h'] as string, work: [], workMust: false, sizes: [v.size, newSize] },
          ]);
        }
        break;
      }
    }
    if (inFlight) {
      // A crash in this op may have made new debris with the same names (a -base link has
      // the template root's inode every time): its domains' volumes do not count as cleaned.
      const names = 'name' in op ? [op.name] : op.kind === 'clone' ? [op.src, op.dst] : [];
      e.inFlight = names;
      for (const k of [...e.touched]) if (names.some((n) => k.includes(`/${n}/`))) e.touched.delete(k);
      break;
    }
  }
  return e;
}

function short(h: string | null | undefined): string {
  return h ? h.slice(0, 12) : String(h);
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

const FILE_RE = /^([A-Za-z][A-Za-z0-9_]*)(\.img|-dirty\.img|-base\.img|-import\.img|-tmp-[0-9a-f]+\.img|-export-[0-9a-f]+\.img|\.img\.[1-9][0-9]*@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$/;

interface StrayInfo {
  volKey: string;
  pool: string;
  what: string;
  firstIter: number;
  mustBeGone: boolean;
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
}

export interface Summary {
  label: string;
  seed: number;
  iterations: number;
  children: number;
  crashes: number;
  crashesByFailpoint: Record<string, number>;
  timerKills: number;
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
function runChild(dir: string, reflink: boolean, journal: string, ops: Op[], failpoint: string, timerAfter: number | null, stateJournal: boolean): Promise<ChildResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CHILD, dir, String(reflink), journal, JSON.stringify(ops)], {
      env: { ...process.env, QUBES_STORAGE_FAILPOINTS: failpoint, QUBES_STORAGE_FAILPOINT_TRACE: '', QUBES_STORAGE_JOURNAL_FROM: stateJournal ? '0' : '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let timerFired = false;
    let timer: NodeJS.Timeout | undefined;
    const hang = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdout.on('data', (b: Buffer) => {
      if (timerAfter !== null && timer === undefined && b.toString().includes('R'))
        timer = setTimeout(() => {
          timerFired = true;
          child.kill('SIGKILL');
        }, timerAfter);
    });
    child.on('close', (code, signal) => {
      clearTimeout(hang);
      if (timer) clearTimeout(timer);
      const ms = Date.now() - t0;
      if (signal === 'SIGKILL') {
        if (ms >= CHILD_TIMEOUT_MS) return resolve({ how: 'error', stderr: `child hung for ${ms} ms\n${stderr}`, ms });
        return resolve({ how: timerFired ? 'timer' : 'failpoint', stderr, ms });
      }
      resolve({ how: code === 0 ? 'done' : 'error', stderr: stderr || `exit ${code} signal ${signal}`, ms });
    });
  });
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
    timerKills: 0,
    crashesWhileRunning: 0,
    failpointNotReached: 0,
    completed: 0,
    opsPlanned: {},
    opsCompleted: {},
    opsInterrupted: {},
    checks: { hashesCompared: 0, revisionsVerified: 0, volumesVerified: 0, filesWalked: 0 },
    staleSizes: 0,
    violations: [],
    ms: 0,
  };
  const allFps = declaredFailpoints();
  const journal = path.join(o.dir, 'journal.log');

  // Setup (not crashed): pool `default` and template `tpl`.
  {
    const app = await openCampaignApp(o.dir);
    try {
      await addCampaignPool(app, o.dir, 'default', o.reflink);
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    } finally {
      await app.close();
    }
  }
  let model: Model = { domains: new Map([['tpl', newDom('tpl', 'TemplateVM', null, 'default', 'default')]]), extra: false };
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
    const n = rng.chance(0.6) ? 1 : rng.chance(0.6) ? 2 : 3;
    const ops: Op[] = [];
    for (let k = 0; k < (o.maxOpsPerChild ? Math.min(n, o.maxOpsPerChild) : n); k++) ops.push(planOp(plan, rng));
    for (const op of ops) bump(s.opsPlanned, op.kind);
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
    const r = await runChild(o.dir, o.reflink, journal, ops, failpoint, timerAfter, stateJournal);
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
      if (st.some((x) => x.s === 'done')) bump(s.opsCompleted, ops[i]!.kind);
      else if (st.length) bump(s.opsInterrupted, ops[i]!.kind);
    }

    // Check.
    const e = expectFrom(model, ops, steps);
    for (const v of e.violations) fail(v);
    const next = await checkAfterChild(o, e, strays, sizePending, it, s, fail);
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
  s: Summary,
  fail: (msg: string) => void,
): Promise<Model | null> {
  const m = e.model;
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

    // Pools.
    const hasExtra = app.poolNames().includes('extra');
    if (hasExtra !== m.extra && !e.maybeExtra) fail(`pool extra ${hasExtra ? 'exists' : 'is missing'}, the model says otherwise`);
    m.extra = hasExtra;

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

    // Volumes: verify, committed data, working copies, revisions, sizes.
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
        const vm = dm.vols.get(vn)!;
        const v = d.storage.get(vn) as FileReflinkVolume;
        const id = `${dm.name}/${vn}`;
        const cst = await lstatOrNull(v.files.clean);
        if (!cst) {
          fail(`${id}: the committed image ${v.files.clean} is missing (data lost)`);
          continue;
        }
        const cur = await hashFile(v.files.clean, cst);
        const wst = await lstatOrNull(v.files.dirty);
        const work = wst ? await hashFile(v.files.dirty, wst) : null;
        s.checks.hashesCompared += work ? 2 : 1;
        const alts = e.alts.get(id) ?? [exactAlt(vm)];
        const ok = alts.find((a) => a.cur === cur && (work === null ? !a.workMust : a.work.includes(work)));
        if (!ok) {
          const lost = work === null && alts.every((a) => a.workMust || a.cur !== cur) ? ' (uncommitted data lost?)' : '';
          fail(
            `${id}: committed ${short(cur)} working copy ${short(work)} is neither old nor new${lost}; acceptable: ` +
              alts.map((a) => `{cur ${short(a.cur)}, work ${a.workMust ? '' : 'none or '}${a.work.map(short).join('|') || '-'}}`).join(' '),
          );
        }
        // The state records the image's size, unless a crash cut a resize/import of this volume
        // before the state was saved; then the image's size wins at the next resize or start.
        // A stale record is harmless since the image's size wins (Volume.storedSize); it is counted.
        // What would hurt, a resize truncating the image, is checked on every resize.
        if (cst.size !== v.size) {
          if (!(e.sizeOps.has(id) || sizePending.has(id))) s.staleSizes++;
          sizePending.add(id);
        } else sizePending.delete(id);
        vm.cur = cur;
        vm.known.add(cur);
        vm.work = work;
        vm.size = cst.size;
        vm.stateSize = v.size;
        // Every revision holds data this volume once committed.
        const revs = await v.revisions();
        vm.revs = Math.min(revs.length, REVISIONS_TO_KEEP);
        for (const rv of revs) {
          const f = v.files.revision(Number(rv.id), rv.time);
          const rst = await lstatOrNull(f);
          if (!rst) {
            fail(`${id}: revision ${rv.id} listed but ${f} is missing`);
            continue;
          }
          const h = await hashFile(f, rst);
          s.checks.revisionsVerified++;
          // A clone or create planned from a size the in-flight op changed (a revert
          // restores an older size) starts from an empty image the model did not size:
          // an all-zero revision is that image, never lost data.
          if (!vm.known.has(h) && h !== zeroHash(rst.size))
            fail(`${id}: revision ${rv.id} holds ${short(h)}, data this volume never committed`);
        }
      }
      // Working copies exist only for a domain a crash left running.
      if (!dm.running && !e.alts.has(`${dm.name}/private`)) {
        for (const v of d.storage.volumes.values()) {
          const f = (v as FileReflinkVolume).files;
          if (await lstatOrNull(f.dirty)) fail(`${dm.name}/${v.name}: a working copy after a clean stop`);
        }
      }
      if ([...dm.vols.values()].some((x) => x.work !== null)) dm.running = true;
    }

    // Files in the pools: every one belongs to a volume of a domain; debris goes at the next operation.
    const current = new Map<string, { volKey: string; pool: string; what: string }>();
    for (const pool of ['default', 'extra']) {
      const root = poolDir(o.dir, pool);
      const files = await walk(root);
      s.checks.filesWalked += files.length;
      const byVol = new Map<string, string[]>();
      for (const rel of files) {
        const parts = rel.split('/');
        const mm = parts.length === 3 ? FILE_RE.exec(parts[2]!) : null;
        if (!mm) {
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
          else if (sfx === '-base.img' && !suffixes.includes('-dirty.img')) add('-base without -dirty');
          else if (sfx === '.img' && owner.kind !== 'origin') fail(`${volKey}: committed image for a ${owner.kind} volume`);
          else if (sfx.startsWith('.img.')) {
            if (clean && st.ino === clean.ino) add(`revision ${sfx} sharing the committed image's inode`);
            else revs.push({ sfx, id: Number(sfx.slice(5).split('@')[0]) });
          }
        }
        revs.sort((a, b) => a.id - b.id);
        for (const r of revs.slice(0, Math.max(0, revs.length - REVISIONS_TO_KEEP))) {
          const st = await lstatOrNull(`${dirOf}${r.sfx}`);
          if (st) current.set(`${dirOf}${r.sfx}#${st.ino}`, { volKey, pool, what: `revision ${r.sfx} beyond the limit of ${REVISIONS_TO_KEEP}` });
        }
      }
    }
    // Debris seen before must be gone once an operation on its volume (or
    // a sweep of its pool, for temporary files) completed since.
    for (const info of strays.values()) {
      const poolLevel = info.what.startsWith('temporary');
      // (a crash in the interrupted op may have made it again: ext4 reuses inode numbers at once)
      if (e.inFlight.some((n) => info.volKey.includes(`/${n}/`))) continue;
      if (e.touched.has(info.volKey) || (poolLevel && e.swept.has(info.pool))) info.mustBeGone = true;
    }
    for (const [key, cur] of current) {
      const old = strays.get(key);
      if (old?.mustBeGone) fail(`${key.split('#')[0]}: ${old.what} (first seen after iteration ${old.firstIter}) still there after the next operation`);
      if (!old) strays.set(key, { ...cur, firstIter: it, mustBeGone: false });
    }
    for (const key of [...strays.keys()]) if (!current.has(key)) strays.delete(key);
  } finally {
    await app.close();
  }
  return m;
}

export function formatSummary(s: Summary): string {
  const lines: string[] = [];
  const sec = (s.ms / 1000).toFixed(1);
  lines.push(`crash campaign${s.label ? ` on ${s.label}` : ''}: seed ${s.seed}, ${s.iterations} iterations (${s.children} children) in ${sec} s`);
  lines.push(
    `  crashes: ${s.crashes} = ${Object.values(s.crashesByFailpoint).reduce((a, b) => a + b, 0)} at failpoints + ${s.timerKills} by timer + ${s.crashesWhileRunning} while running (domain left running)`,
  );
  lines.push(`  children that finished: ${s.completed} (failpoint set but not reached: ${s.failpointNotReached})`);
  lines.push('  crashes by failpoint:');
  for (const fp of declaredFailpoints()) lines.push(`    ${fp.padEnd(40)} ${s.crashesByFailpoint[fp] ?? 0}`);
  lines.push('  operations (planned / completed / interrupted by a crash):');
  for (const k of Object.keys(s.opsPlanned).sort())
    lines.push(`    ${k.padEnd(12)} ${String(s.opsPlanned[k]).padStart(6)} ${String(s.opsCompleted[k] ?? 0).padStart(6)} ${String(s.opsInterrupted[k] ?? 0).padStart(6)}`);
  lines.push(
    `  checks: ${s.checks.hashesCompared} images and working copies compared by hash, ${s.checks.revisionsVerified} revisions verified, ${s.checks.volumesVerified} volume verify() calls, ${s.checks.filesWalked} pool files classified`,
  );
  lines.push(`  recorded sizes found stale without an interrupted resize/import/revert (harmless: the image's size wins): ${s.staleSizes}`);
  lines.push(`  violations: ${s.violations.length}`);
  for (const v of s.violations.slice(0, 30)) lines.push(`    ${v}`);
  if (s.violations.length > 30) lines.push(`    ... ${s.violations.length - 30} more`);
  return lines.join('\n');
}
