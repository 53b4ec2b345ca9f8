/**
 * What the parent expects after one child: the model advanced by every
 * operation the child acknowledged (its journal says `done`), and for the
 * one operation a crash interrupted, each of its acceptable outcomes (the
 * old state, the new one, and the steps in between that the contract allows,
 * e.g. a stop cut after the commit's rename). Every expectation is computed
 * from the plan and the model (model.ts); the child's journal says only how
 * far it got, and what its start showed (checked, never trusted).
 */
import type { Op, PoolSpec, Step } from './child.js';
import {
  applyOp,
  cloneEmptySizes,
  clonedVol,
  cloneModel,
  cloneVol,
  committed,
  contentHash,
  grown,
  importedContent,
  keepOf,
  newDom,
  originVols,
  reverted,
  volKeys,
  withPage,
  contentKey,
  type Content,
  type DomModel,
  type Model,
  type VolModel,
} from './model.js';

export interface Expect {
  /** The model once every acknowledged op took effect, and the in-flight one's domain changes too. */
  model: Model;
  /** Domains that may or may not exist (the in-flight create, clone or remove). */
  maybeDomains: Set<string>;
  maybeExtra: boolean;
  /** The extra pool the in-flight pool-add makes, if it took effect. */
  extraIfAdded: PoolSpec | null;
  /** Per "domain/volume": the acceptable outcomes (absent: exactly the model's). */
  alts: Map<string, VolModel[]>;
  /** pool:vid of volumes an operation completed on (their recover() ran). */
  touched: Set<string>;
  /** Pools swept of debris by a completed operation. */
  swept: Set<string>;
  /** "domain/volume" whose resize, import or revert was under way: the state may record the old size. */
  sizeOps: Set<string>;
  /** Domains of the operation a crash interrupted. */
  inFlight: string[];
  violations: string[];
}

export function short(h: string | null | undefined): string {
  return h ? h.slice(0, 12) : String(h);
}

/** Applies the journal of a child to (a copy of) the model. */
/**
 * `powerLoss`: the child's end was a power cut, so a domain's writes it did
 * not flush (the campaign's domains never flush: only a commit makes their
 * data durable) may each be lost while the data is not committed.
 */
export function expectFrom(before: Model, ops: Op[], steps: Step[], powerLoss = false): Expect {
  const m = cloneModel(before);
  const e: Expect = {
    model: m,
    maybeDomains: new Set(),
    maybeExtra: false,
    extraIfAdded: null,
    alts: new Map(),
    touched: new Set(),
    swept: new Set(),
    sizeOps: new Set(),
    inFlight: [],
    violations: [],
  };
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
    if (has('skip')) e.violations.push(`${op.kind} ${'name' in op ? op.name : ''} skipped: ${String(step('skip')!['why'])} (the model disagrees with the volume)`);
    switch (op.kind) {
      case 'pool-add':
      case 'pool-remove':
        if (done) applyOp(m, op);
        else {
          e.maybeExtra = true;
          if (op.kind === 'pool-add') e.extraIfAdded = { driver: op.driver, keep: op.keep };
        }
        break;
      case 'create': {
        const t = m.domains.get(op.template)!;
        const d = newDom(op.name, 'AppVM', op.template, op.pool, t.rootPool, keepOf(m, op.pool));
        m.domains.set(op.name, d);
        if (done) touch(volKeys(d));
        else e.maybeDomains.add(op.name);
        break;
      }
      case 'clone': {
        const s = m.domains.get(op.src)!;
        applyOp(m, op);
        const d = m.domains.get(op.dst)!;
        for (const vn of originVols(s)) {
          const sizes = cloneEmptySizes(s.vols.get(vn)!);
          if (sizes.length > 1) e.alts.set(`${op.dst}/${vn}`, sizes.map((z) => clonedVol(s.vols.get(vn)!, z, d.vols.get(vn)!.keep)));
        }
        if (done) {
          touch(volKeys(d));
          touch(volKeys(s).filter((k) => !k.endsWith('/volatile') && (s.klass === 'TemplateVM' || !k.endsWith('/root'))));
        } else e.maybeDomains.add(op.dst);
        break;
      }
      case 'remove':
        if (done) m.domains.delete(op.name);
        else e.maybeDomains.add(op.name);
        break;
      case 'run': {
        const d = m.domains.get(op.name)!;
        checkSeen(e, d, step('started'));
        if (done) {
          touch(volKeys(d));
          applyOp(m, op);
        } else {
          for (const vn of originVols(d)) e.alts.set(`${d.name}/${vn}`, runOutcomes(d.vols.get(vn)!, op, vn, st, powerLoss));
          d.running = true;
        }
        break;
      }
      case 'resize': {
        const d = m.domains.get(op.name)!;
        const v = d.vols.get('private')!;
        const shrink = op.size < v.cur.size;
        if (has('resizing')) e.sizeOps.add(`${d.name}/private`);
        if (done) {
          if (!has('refused')) touch([volKeys(d)[0]!]); // a refused resize never reaches the driver's repair
          if (has('refused') !== shrink)
            e.violations.push(
              `${d.name}/private: resize to ${op.size} of a ${v.cur.size}-byte image was ${has('refused') ? 'refused' : 'done'}; the model says ${shrink ? 'refuse (a shrink)' : 'grow'}`,
            );
          applyOp(m, op);
        } else if (has('resizing') && !shrink) {
          // The working copy is truncated first, then the committed image: each old or new.
          const g = grown(v, op.size);
          const works = v.work ? [v.work, g.work!] : [null];
          e.alts.set(`${d.name}/private`, [v.cur, g.cur].flatMap((cur) => works.map((work) => ({ ...cloneVol(v), cur, work }))));
        }
        break;
      }
      case 'revert':
      case 'import': {
        const d = m.domains.get(op.name)!;
        const v = d.vols.get('private')!;
        if (has(op.kind === 'revert' ? 'reverting' : 'importing')) e.sizeOps.add(`${d.name}/private`);
        if (done) {
          touch([volKeys(d)[0]!]);
          if (!has('skip')) applyOp(m, op);
        } else if (has(op.kind === 'revert' ? 'reverting' : 'importing')) {
          const after = op.kind === 'revert' ? reverted(v) : { ...committed(v, importedContent(op)), stateSize: op.size };
          e.alts.set(`${d.name}/private`, [v, after]);
        }
        break;
      }
    }
    if (!done) {
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

/** The start must show the working copy a crash left, or else the committed data. */
function checkSeen(e: Expect, d: DomModel, started: Step | undefined): void {
  if (!started) return;
  const seen = started['seen'] as Record<string, string>;
  for (const vn of originVols(d)) {
    const v = d.vols.get(vn)!;
    const want = contentHash(v.work ?? v.cur);
    if (seen[vn] !== want)
      e.violations.push(
        v.work
          ? `${d.name}/${vn}: uncommitted data lost: the start after a crash showed ${short(seen[vn])}, the domain had written ${short(want)}`
          : `${d.name}/${vn}: start showed ${short(seen[vn])}, not the committed data ${short(want)}`,
      );
  }
}

/**
 * The outcomes a run cut short may leave on one origin volume: before the
 * start, the old state (or a working copy of the committed data); after it,
 * a working copy holding every write made (the one under way maybe not;
 * after a power cut, any of them maybe not: none was flushed); once the stop
 * began, also all of that data committed (a commit makes it durable before
 * it renames, so a committed image never lacks a write).
 */
function runOutcomes(v: VolModel, op: Extract<Op, { kind: 'run' }>, vn: 'private' | 'root', st: Step[], powerLoss: boolean): VolModel[] {
  if (!st.some((s) => s.s === 'started')) return v.work ? [v] : [v, { ...cloneVol(v), work: v.cur }];
  const start = v.work ?? v.cur;
  const begun = st.filter((s) => s.s === 'writing' && s['vol'] === vn).map((s) => s['w'] as number);
  const acked = st.filter((s) => s.s === 'wrote' && s['vol'] === vn).map((s) => s['w'] as number);
  const apply = (ws: number[]): Content => ws.reduce((c, k) => withPage(c, op.writes[k]!.offset, op.writes[k]!.seed), start);
  const sets = powerLoss ? subsets(begun) : [acked, begun];
  const works = new Map(sets.map((ws) => apply(ws)).map((c) => [contentKey(c), c]));
  const outcomes: VolModel[] = [...works.values()].map((w) => ({ ...cloneVol(v), work: w }));
  if (st.some((s) => s.s === 'stopping')) outcomes.push(committed(v, apply(acked)));
  return outcomes;
}

/** Every subsequence of `xs`, in order. */
function subsets(xs: number[]): number[][] {
  return xs.reduce<number[][]>((acc, x) => [...acc, ...acc.map((a) => [...a, x])], [[]]);
}

/**
 * Observed revisions match the expected ones: the same hashes in the same
 * order; older ones past the limit (a commit cut before its prune, or a
 * prune a power cut undid) are debris the stray check follows, not data.
 * `keep`: the volume's revisions_to_keep.
 */
export function revisionsMatch(observed: string[], expected: Content[], keep: number): boolean {
  const want = expected.map(contentHash);
  if (observed.length < want.length) return false;
  if (observed.length > want.length && want.length < keep) return false;
  return observed.slice(observed.length - want.length).every((h, k) => h === want[k]);
}

/** One line per part of `v` that differs from what was observed. */
export function describeMismatch(obs: { cur: string; work: string | null; revs: string[] }, v: VolModel): string {
  const out: string[] = [];
  if (obs.cur !== contentHash(v.cur)) out.push(`committed ${short(obs.cur)} not ${short(contentHash(v.cur))}`);
  const w = v.work && contentHash(v.work);
  if (obs.work !== w) out.push(`working copy ${short(obs.work)} not ${short(w)}`);
  if (!revisionsMatch(obs.revs, v.revs, v.keep)) {
    const want = v.revs.map(contentHash);
    const missing = want.filter((h) => !obs.revs.includes(h)).length;
    out.push(`revisions [${obs.revs.map(short).join(',')}] not [${want.map(short).join(',')}]${missing ? ` (${missing} missing)` : ''}`);
  }
  return out.join('; ') || 'same';
}
