/**
 * The campaigns' reference model: what every origin volume (each private,
 * and each template's root) must hold, kept independently of the code under
 * test. Contents are symbolic: an image is its size plus the deterministic
 * pages written into it (pattern(PAGE, seed) at a page offset, zeros
 * elsewhere), so the model computes every expected hash itself from the data
 * the campaign planned; nothing expected is read back from the volumes.
 *
 * The operations' effects on revisions follow the volume contract
 * (src/storage/volume.ts, src/drivers/file-reflink/README.md):
 * - a commit (stop, import, clone's copy) pushes the old committed data as
 *   the newest revision, then drops the oldest past the revisions_to_keep
 *   of the volume's pool (each pool has its own: file-reflink 2, file and
 *   xen at most 1; a clone into another pool takes the target's);
 * - a revert pops the newest revision as the committed data and pushes the
 *   old committed data as the newest revision (so it can be undone);
 * - a resize grows the committed image and the working copy in place,
 *   revisions untouched;
 * - create makes an empty image; a clone creates an empty image at the
 *   source's recorded size, then commits a copy of the source over it.
 */
import { createHash } from 'node:crypto';
import { pattern } from '../helpers/data.js';
import { PAGE, PRIVATE_SIZE, ROOT_SIZE, type Op, type PoolSpec } from './child.js';

// ---- contents --------------------------------------------------------------

/** An image: `size` bytes of zeros with `pages` (offset -> pattern seed) written over them. */
export interface Content {
  readonly size: number;
  /** Sorted by offset; every page lies inside the image. */
  readonly pages: readonly (readonly [number, number])[];
}

export function zeros(size: number): Content {
  return { size, pages: [] };
}

export function withPage(c: Content, offset: number, seed: number): Content {
  if (offset % PAGE !== 0 || offset + PAGE > c.size) throw new Error(`model: page at ${offset} outside a ${c.size}-byte image`);
  const pages = c.pages.filter(([o]) => o !== offset);
  pages.push([offset, seed]);
  pages.sort((a, b) => a[0] - b[0]);
  return { size: c.size, pages };
}

/** The image truncated to `size` (a grow keeps every page; a shrink drops pages past the end). */
export function resized(c: Content, size: number): Content {
  return { size, pages: c.pages.filter(([o]) => o + PAGE <= size) };
}

export function contentKey(c: Content): string {
  return `${c.size}:${c.pages.map(([o, s]) => `${o}=${s}`).join(',')}`;
}

export function sameContent(a: Content | null, b: Content | null): boolean {
  return a === b || (a !== null && b !== null && contentKey(a) === contentKey(b));
}

const hashes = new Map<string, string>();
const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** sha256 of the image the content describes, computed from the plan alone. */
export function contentHash(c: Content): string {
  const key = contentKey(c);
  let h = hashes.get(key);
  if (h) return h;
  const hash = createHash('sha256');
  let at = 0;
  const zerosUpTo = (end: number): void => {
    while (at < end) {
      const n = Math.min(end - at, ZERO_CHUNK.length);
      hash.update(ZERO_CHUNK.subarray(0, n));
      at += n;
    }
  };
  for (const [offset, seed] of c.pages) {
    zerosUpTo(offset);
    hash.update(pattern(PAGE, seed));
    at += PAGE;
  }
  zerosUpTo(c.size);
  h = hash.digest('hex');
  if (hashes.size > 50_000) hashes.clear();
  hashes.set(key, h);
  return h;
}

// ---- volumes and domains --------------------------------------------------------

export type VolName = 'private' | 'root';

export interface VolModel {
  /** The committed image. */
  cur: Content;
  /** The working copy; null: it must not exist (the domain is not running). */
  work: Content | null;
  /** Exactly the revisions that must exist, oldest first (at most `keep`). */
  revs: Content[];
  /** revisions_to_keep of the volume: its pool's (the campaign sets none per volume). */
  keep: number;
  /** Size the state file records (differs from cur.size only after a crash between a resize/import and the save). */
  stateSize: number;
}

export interface DomModel {
  name: string;
  klass: 'TemplateVM' | 'AppVM';
  template: string | null;
  /** Pool of private and volatile (and root of a template). */
  pool: string;
  /** Pool of the root volume (an AppVM's snapshot stays in its template's pool). */
  rootPool: string;
  vols: Map<VolName, VolModel>;
  /** A start began and no clean stop followed (a crash left it running): its volumes may have working copies. */
  running: boolean;
}

export interface Model {
  domains: Map<string, DomModel>;
  /** The pools that exist: `default` always, `extra` while added; driver and revisions_to_keep of each. */
  pools: Map<string, PoolSpec>;
}

export function cloneVol(v: VolModel): VolModel {
  return { cur: v.cur, work: v.work, revs: [...v.revs], keep: v.keep, stateSize: v.stateSize };
}
export function cloneDom(d: DomModel): DomModel {
  return { ...d, vols: new Map([...d.vols].map(([k, v]) => [k, cloneVol(v)])) };
}
export function cloneModel(m: Model): Model {
  return { domains: new Map([...m.domains].map(([k, d]) => [k, cloneDom(d)])), pools: new Map(m.pools) };
}

/** `keep`: revisions_to_keep of `pool`, where its origin volumes live. */
export function newDom(name: string, klass: 'TemplateVM' | 'AppVM', template: string | null, pool: string, rootPool: string, keep: number): DomModel {
  const vols = new Map<VolName, VolModel>();
  vols.set('private', { cur: zeros(PRIVATE_SIZE), work: null, revs: [], keep, stateSize: PRIVATE_SIZE });
  if (klass === 'TemplateVM') vols.set('root', { cur: zeros(ROOT_SIZE), work: null, revs: [], keep, stateSize: ROOT_SIZE });
  return { name, klass, template, pool, rootPool, vols, running: false };
}

export function prefixOf(d: DomModel): string {
  return d.klass === 'TemplateVM' ? 'vm-templates' : 'appvms';
}
/** pool:vid of each volume of the domain: private, volatile, root. */
export function volKeys(d: DomModel): string[] {
  const p = `${prefixOf(d)}/${d.name}`;
  return [`${d.pool}:${p}/private`, `${d.pool}:${p}/volatile`, `${d.rootPool}:${p}/root`];
}
export function originVols(d: DomModel): VolName[] {
  return d.klass === 'TemplateVM' ? ['private', 'root'] : ['private'];
}
/** revisions_to_keep of an existing pool of the model. */
export function keepOf(m: Model, pool: string): number {
  const p = m.pools.get(pool);
  if (!p) throw new Error(`model: no pool ${pool}`);
  return p.keep;
}
export function poolUsed(m: Model, pool: string): boolean {
  return [...m.domains.values()].some((d) => d.pool === pool || d.rootPool === pool);
}

// ---- the operations' effects -------------------------------------------------------

/** `data` becomes the committed image; the old one the newest revision; the oldest past the limit go. */
export function committed(v: VolModel, data: Content): VolModel {
  const revs = v.keep > 0 ? [...v.revs, v.cur].slice(-v.keep) : [];
  return { cur: data, work: null, revs, keep: v.keep, stateSize: v.stateSize };
}

/** Revert to the newest revision; the current data becomes the newest revision. */
export function reverted(v: VolModel): VolModel {
  const revs = [...v.revs];
  const target = revs.pop();
  if (!target) throw new Error('model: revert without a revision');
  revs.push(v.cur);
  return { cur: target, work: null, revs, keep: v.keep, stateSize: target.size };
}

/** A resize: refused (unchanged) when it would shrink the image; else image and working copy grow. */
export function grown(v: VolModel, size: number): VolModel {
  if (size < v.cur.size) return v;
  return { cur: resized(v.cur, size), work: v.work && resized(v.work, size), revs: v.revs, keep: v.keep, stateSize: size };
}

export function importedContent(op: Extract<Op, { kind: 'import' }>): Content {
  return withPage(zeros(op.size), op.offset, op.seed);
}

/** The working copy a run's writes [0, upTo) leave on `vol`, from what its start showed. */
export function written(op: Extract<Op, { kind: 'run' }>, vol: VolName, start: Content, upTo = op.writes.length): Content {
  let c = start;
  for (const w of op.writes.slice(0, upTo)) if (w.vol === vol) c = withPage(c, w.offset, w.seed);
  return c;
}

/**
 * The clone of one origin volume: the empty image made at the size the
 * source's record had in the cloning process (`emptySize`), then a commit
 * of the source's committed image over it, under the revisions_to_keep
 * (`keep`) of the pool it is made in.
 */
export function clonedVol(src: VolModel, emptySize: number, keep: number): VolModel {
  return committed({ cur: zeros(emptySize), work: null, revs: [], keep, stateSize: emptySize }, src.cur);
}

/** The sizes the cloning process may have recorded for the source (its record, or the image's once adopted). */
export function cloneEmptySizes(src: VolModel): number[] {
  return [...new Set([src.cur.size, src.stateSize])];
}

/** `keep`: revisions_to_keep of the clone's pool (its origin volumes all live there). */
export function clonedDom(s: DomModel, dst: string, pool: string | null, keep: number, emptySize: (v: VolModel) => number): DomModel {
  const d = cloneDom(s);
  d.name = dst;
  d.pool = pool ?? s.pool;
  if (s.klass === 'TemplateVM') d.rootPool = d.pool;
  d.running = false;
  for (const [k, v] of s.vols) d.vols.set(k, clonedVol(v, emptySize(v), keep));
  return d;
}

/**
 * Applies a completed operation to the model (the planning model, and the
 * parent's model for acknowledged operations). A clone's empty revision is
 * sized by `cloneSize` (the planner's guess; the checker accepts either).
 */
export function applyOp(m: Model, op: Op, cloneSize: (v: VolModel) => number = (v) => v.cur.size): void {
  const dom = (n: string) => m.domains.get(n)!;
  switch (op.kind) {
    case 'create': {
      const t = dom(op.template);
      m.domains.set(op.name, newDom(op.name, 'AppVM', op.template, op.pool, t.rootPool, keepOf(m, op.pool)));
      break;
    }
    case 'clone': {
      const s = dom(op.src);
      m.domains.set(op.dst, clonedDom(s, op.dst, op.pool, keepOf(m, op.pool ?? s.pool), cloneSize));
      break;
    }
    case 'remove':
      m.domains.delete(op.name);
      break;
    case 'run': {
      const d = dom(op.name);
      for (const vn of originVols(d)) {
        const v = d.vols.get(vn)!;
        const w = written(op, vn, v.work ?? v.cur);
        d.vols.set(vn, op.stop ? committed(v, w) : { ...cloneVol(v), work: w });
      }
      d.running = !op.stop;
      break;
    }
    case 'resize': {
      const d = dom(op.name);
      d.vols.set('private', grown(d.vols.get('private')!, op.size));
      break;
    }
    case 'revert': {
      const d = dom(op.name);
      d.vols.set('private', reverted(d.vols.get('private')!));
      break;
    }
    case 'import': {
      const d = dom(op.name);
      const v = committed(d.vols.get('private')!, importedContent(op));
      v.stateSize = op.size;
      d.vols.set('private', v);
      break;
    }
    case 'pool-add':
      m.pools.set('extra', { driver: op.driver, keep: op.keep });
      break;
    case 'pool-remove':
      m.pools.delete('extra');
      break;
  }
}
