// The power-cut test of lvm_thin (power-cut.ts): the operations a child
// runs on the driver (power-cut-child.ts) and the reference model of what
// each volume must then hold, computed from the plan alone (never read back
// from the driver). A volume's data is symbolic: a size plus the seed of
// the one page written at offset 0 (pattern(PAGE, seed); seed 0: zeros).
//
// The model follows the lvm_thin contract (src/drivers/lvm-thin/README.md):
// a commit (stop, import, clone) pushes the old committed data as the newest
// revision and drops the oldest past `keep`; a revert makes the newest
// revision the data and keeps the old data as the newest revision; a resize
// grows the data (and the running copy). A write into a running copy that
// the writer did not flush (a domain that did not fsync) may or may not be
// there after a power cut, also once a stop committed the running copy: the
// contract keeps what a domain flushed; the driver adds no flush of its own
// (as Qubes' driver: a stop is two renames).

export const PAGE = 4096;
export const MiB = 1024 * 1024;
/** Volume names (domains `cN`, volume `private`: LV vm-cN-private). */
export const VOLS = ['c1', 'c2', 'c3'] as const;

export type CutOp =
  | { op: 'create'; vol: string; size: number }
  | { op: 'import'; vol: string; size: number; seed: number }
  | { op: 'start'; vol: string; size: number }
  | { op: 'write'; vol: string; size: number; seed: number; flush: boolean }
  | { op: 'stop'; vol: string; size: number }
  | { op: 'revert'; vol: string; size: number }
  | { op: 'clone'; vol: string; size: number; src: string; srcSize: number }
  | { op: 'resize'; vol: string; size: number }
  | { op: 'remove'; vol: string; size: number };

/** Data: its size, the seed of its first page, and the other seeds it may hold after a cut (unflushed writes). */
export interface Data {
  readonly size: number;
  readonly seed: number;
  readonly maybe: readonly number[];
}
export interface VolModel {
  readonly data: Data;
  /** Oldest first. */
  readonly revs: readonly Data[];
  /** The running copy (LV-snap) while started. */
  readonly run: Data | null;
}
export type Model = ReadonlyMap<string, VolModel>;

/** A small seeded generator (mulberry32): the same seed, the same plan and cut. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pushRev(v: VolModel, keep: number): Data[] {
  const revs = [...v.revs, v.data];
  return revs.slice(Math.max(revs.length - keep, 0));
}

/** The model after `op` (which the plan made valid for it). */
export function applyOp(m: Model, op: CutOp, keep: number): Model {
  const out = new Map(m);
  const v = m.get(op.vol);
  switch (op.op) {
    case 'create':
      out.set(op.vol, { data: { size: op.size, seed: 0, maybe: [] }, revs: [], run: null });
      break;
    case 'import':
      out.set(op.vol, { data: { size: op.size, seed: op.seed, maybe: [] }, revs: pushRev(v!, keep), run: null });
      break;
    case 'start':
      out.set(op.vol, { ...v!, run: v!.data });
      break;
    case 'write': {
      const r = v!.run!;
      const maybe = op.flush ? [] : [r.seed, ...r.maybe];
      out.set(op.vol, { ...v!, run: { size: r.size, seed: op.seed, maybe } });
      break;
    }
    case 'stop':
      // What the domain did not flush stays uncertain: the running copy is committed as it is on the disk.
      out.set(op.vol, { data: v!.run!, revs: pushRev(v!, keep), run: null });
      break;
    case 'revert': {
      const revs = [...v!.revs];
      const back = revs.pop()!;
      revs.push(v!.data);
      out.set(op.vol, { data: back, revs, run: null });
      break;
    }
    case 'clone': {
      const s = m.get(op.src)!;
      out.set(op.vol, { data: { ...s.data }, revs: pushRev(v!, keep), run: null });
      break;
    }
    case 'resize':
      out.set(op.vol, { ...v!, data: { ...v!.data, size: op.size }, run: v!.run ? { ...v!.run, size: op.size } : null });
      break;
    case 'remove':
      out.delete(op.vol);
      break;
  }
  return out;
}

/** What the first operations after a reboot make of it: every running copy committed (a start, which keeps the running copy, and a stop of each dirty volume). */
export function settle(m: Model, keep: number): Model {
  let out = m;
  for (const [vol, v] of m) if (v.run) out = applyOp(out, { op: 'stop', vol, size: v.run.size }, keep);
  return out;
}

/**
 * A plan of `length` operations valid in order from an empty pool: it
 * starts with a create and an import, then picks among what the model
 * allows. Seeds of written data are unique in the plan (base + index).
 */
export function makePlan(seed: number, length: number, keep: number): CutOp[] {
  const rand = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const dataSeed = (i: number): number => ((seed % 100000) + 1) * 1000 + i + 1;
  const plan: CutOp[] = [
    { op: 'create', vol: 'c1', size: 8 * MiB },
    { op: 'import', vol: 'c1', size: 8 * MiB, seed: dataSeed(1) },
  ];
  let m: Model = new Map();
  for (const op of plan) m = applyOp(m, op, keep);
  for (let i = plan.length; i < length; i++) {
    const cands: CutOp[] = [];
    for (const vol of VOLS) {
      const v = m.get(vol);
      if (!v) {
        cands.push({ op: 'create', vol, size: 8 * MiB });
        continue;
      }
      const size = v.data.size;
      // Weights: domains start and write often (a cut then finds running copies), and stop.
      if (v.run) {
        cands.push({ op: 'write', vol, size, seed: dataSeed(i), flush: rand() < 0.6 });
        cands.push({ op: 'write', vol, size, seed: dataSeed(i), flush: rand() < 0.6 });
        cands.push({ op: 'stop', vol, size });
      } else {
        cands.push({ op: 'start', vol, size }, { op: 'start', vol, size }, { op: 'import', vol, size, seed: dataSeed(i) });
        if (v.revs.length > 0) cands.push({ op: 'revert', vol, size });
        for (const src of VOLS) {
          const s = m.get(src);
          if (src !== vol && s) cands.push({ op: 'clone', vol, size, src, srcSize: s.data.size });
        }
        cands.push({ op: 'remove', vol, size });
      }
      if (size < 16 * MiB) cands.push({ op: 'resize', vol, size: size + 4 * MiB });
    }
    const op = pick(cands);
    plan.push(op);
    m = applyOp(m, op, keep);
  }
  return plan;
}

/** The model after the first `n` operations of the plan. */
export function modelAfter(plan: readonly CutOp[], n: number, keep: number): Model {
  let m: Model = new Map();
  for (const op of plan.slice(0, n)) m = applyOp(m, op, keep);
  return m;
}

/** Every seed the plan writes (and 0: zeros), to tell which data a page holds. */
export function planSeeds(plan: readonly CutOp[]): number[] {
  const out = new Set<number>([0]);
  for (const op of plan) if ('seed' in op) out.add(op.seed);
  return [...out];
}
