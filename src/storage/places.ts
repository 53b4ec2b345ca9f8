/**
 * Pool places: what a pool owns or reads outside itself, so that no two
 * pools (and no pool and the state) step on each other's files.
 *
 * A pool declares its places (`Pool.places()`); the App compares them with
 * every other pool's places and with the state's directories (the base
 * directory and the state file's directory) before the pool is accepted,
 * that is before its setup makes anything on disk.
 *
 * A place's extent is where its pool writes: the whole directory, or, for a
 * confined place (`confinedTo`: a file pool's class folders `appvms/`,
 * `vm-templates/`, `servicevms/`), only those subfolders; anything else it
 * writes at its top is a uniquely named probe file that is nobody else's.
 *
 * The rule:
 * - An `own` place is the pool's alone: it creates and deletes files
 *   anywhere in its extent. Its extent may be neither the same as, nor
 *   inside, nor around the extent of any other pool's place, read-only ones
 *   included: a kernel directory among a file pool's volumes would hand that
 *   pool's files (a volume named `modules`) to a domain as its kernel. So a
 *   file pool at DIR and another pool at DIR/x do not meet (Qubes'
 *   `varlibqubes` at /var/lib/qubes holds vm-kernels and, here, the embedded
 *   BASE/pools/default), while a pool at DIR/appvms lies among the first
 *   pool's volumes and is refused. (So "inside or around another pool's
 *   directory" is refused for what a pool writes, not for its dir_path: the
 *   two-sided rule keeps the order of adds from mattering.)
 * - A `read` place is only read (linux-kernel). Read places may be shared and
 *   nested among themselves; against an own place the rule above applies.
 * - A `home` place is a directory of the state (the base directory, the
 *   state file's directory). A pool may lie inside it, or be at it when
 *   confined (its extent then lies inside it: Qubes' R3.2 `[default]` pool
 *   and R4's `varlibqubes` have dir_path=/var/lib/qubes, beside qubes.xml),
 *   but never hold it: no pool at a parent of it, or at /, although a
 *   confined one would write only beside it (no Qubes layout puts the state
 *   inside a pool's directory, and "/" is a typing error). The names it
 *   `keeps` (qubes.xml, its journal, lock and backups, the socket,
 *   running-domains) no extent may be, hold or lie inside. This is why the
 *   base directory is allowed although "equal to the base directory" reads
 *   as refused: Qubes' own varlibqubes and R3.2 default pools live there.
 * - An own directory that exists must hold nothing but what such a pool puts
 *   there (`entries`): at its top, or, for a confined place, in each of its
 *   class folders (domain directories only), its top being none of its
 *   business (it may be the base directory).
 *
 * Directories are compared as the kernel sees them, not as text: each path
 * is resolved to its real path (symlinks followed; a missing tail is taken as
 * written below its nearest existing ancestor), then to its filesystem and
 * its path inside that filesystem (/proc/self/mountinfo), so a bind mount
 * cannot make one directory look like two; and the device and inode of the
 * directory and of each of its ancestors are compared too. A directory that
 * cannot be resolved (a dangling symlink on the way, a file where a
 * directory should be, no permission) is refused rather than guessed.
 *
 * Names places (Ceph RBD images) are compared by their space (Ceph pool and
 * namespace) and name prefix: two pools whose prefixes are equal, or one a
 * prefix of the other, would list and sweep each other's images. The Ceph
 * cluster is not part of the space: two ceph.conf files may reach one
 * cluster, and refusing a second cluster's same names is the safe mistake.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { QubesValueError, StoragePoolException } from './errors.js';

/** A local directory a pool works in. */
export interface DirectoryPlace {
  readonly kind: 'directory';
  /** Absolute path, as configured. */
  readonly path: string;
  readonly access: 'own' | 'read' | 'home';
  /** What the configuration calls it, for messages (e.g. `dir_path`). */
  readonly option: string;
  /**
   * The subfolders the pool writes in (its extent); absent: the whole
   * directory. Besides them it may write only uniquely named files at its top.
   */
  readonly confinedTo?: readonly string[];
  /**
   * Names an existing own directory may already hold when the pool moves in
   * (anything else is someone else's): at its top, or for a confined place in
   * each of its subfolders, which then hold directories only; absent: not checked.
   */
  readonly entries?: RegExp;
  /** For a home place: the names in it that are the state's (files or directories). */
  readonly keeps?: readonly string[];
}

/** Names in a shared name space (e.g. RBD images of a Ceph pool and namespace). */
export interface NamesPlace {
  readonly kind: 'names';
  /** The name space, e.g. `Ceph pool rbd, namespace qubes`. */
  readonly space: string;
  /** Every name the pool uses starts with this. */
  readonly prefix: string;
  readonly access: 'own' | 'read';
  readonly option: string;
}

export type PoolPlace = DirectoryPlace | NamesPlace;

/**
 * The places of a pool whose driver cannot answer (not installed, or it
 * refused the options): the contract's conventional `dir_path` option, when
 * it is an absolute path, is taken as the pool's own directory, so a pool
 * that cannot be used here still keeps new pools out of its data. Reads the
 * raw options only: nothing else may guess at a driver's options.
 */
export function placesWithoutDriver(rawOptions: Readonly<Record<string, unknown>>): PoolPlace[] {
  const dir = rawOptions['dir_path'];
  return typeof dir === 'string' && path.isAbsolute(dir) ? [{ kind: 'directory', path: dir, access: 'own', option: 'dir_path' }] : [];
}

/** A directory place as the kernel sees it. */
interface ResolvedDirectory {
  readonly place: DirectoryPlace;
  /** Real path (symlinks resolved; a missing tail appended as written). */
  readonly real: string;
  /** Filesystem (major:minor) and path inside it, from mountinfo; null if unknown. */
  readonly fsPath: { readonly dev: string; readonly path: string } | null;
  /** dev:ino of the directory itself when it exists. */
  readonly id: string | null;
  /** dev:ino of its existing proper ancestors. */
  readonly ancestors: ReadonlySet<string>;
  /** A confined place's subfolders (its extent), resolved; else null. */
  readonly folders: readonly ResolvedDirectory[] | null;
  /** A home place's kept names, resolved (they need not be directories); else empty. */
  readonly kept: readonly ResolvedDirectory[];
}

export type ResolvedPlace = ResolvedDirectory | { readonly place: NamesPlace };

/** Whose a place is, for messages: `pool NAME`, `the base directory`... */
export interface PlaceHolder {
  /** e.g. `pool default`; null for a reserved directory (described by `what`). */
  readonly pool: string | null;
  /** e.g. `the base directory`, `the directory of the state file /x/qubes.xml`. */
  readonly what: string;
  readonly places: readonly ResolvedPlace[];
}

/** One mount of /proc/self/mountinfo. */
interface Mount {
  readonly dev: string;
  readonly root: string;
  readonly at: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mounts of this process, or null when /proc is not there. */
export async function readMounts(): Promise<readonly Mount[] | null> {
  let text: string;
  try {
    text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return null;
  }
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    out.push({ dev: f[2]!, root: unescapeMount(f[3]!), at: unescapeMount(f[4]!) });
  }
  return out;
}

function isInside(inner: string, outer: string): boolean {
  return inner !== outer && (outer === '/' || inner.startsWith(outer + '/'));
}

/** The filesystem of a real path and the path inside it (the last, i.e. topmost, of the longest mount point). */
function fsPathOf(real: string, mounts: readonly Mount[] | null): ResolvedDirectory['fsPath'] {
  if (!mounts) return null;
  let best: Mount | null = null;
  for (const m of mounts)
    if ((m.at === real || isInside(real, m.at)) && (!best || m.at.length >= best.at.length)) best = m;
  if (!best) return null;
  const rest = best.at === '/' ? real.slice(1) : real.slice(best.at.length + 1);
  return { dev: best.dev, path: path.posix.join(best.root, rest) };
}

async function idOf(p: string): Promise<string | null> {
  try {
    const st = await fs.stat(p, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

function refuse(where: string, place: DirectoryPlace, why: string, cause?: unknown): StoragePoolException {
  return new StoragePoolException(`${where}: ${place.option} ${place.path} ${why}`, cause === undefined ? undefined : { cause });
}

/**
 * Resolves a directory place without changing anything on disk. `where`
 * (e.g. `pool fast`) leads the messages of refusals: a path that passes a
 * dangling symlink or a non-directory, or cannot be looked at.
 */
export async function resolveDirectory(place: DirectoryPlace, where: string, mounts: readonly Mount[] | null): Promise<ResolvedDirectory> {
  if (!path.isAbsolute(place.path)) throw new QubesValueError(`${where}: ${place.option} must be an absolute path`);
  let existing = path.resolve(place.path);
  const missing: string[] = [];
  let real: string;
  for (;;) {
    try {
      real = await fs.realpath(existing);
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw refuse(where, place, `cannot be resolved (${code ?? String(e)} at ${existing})`, e);
      // ENOENT also comes from a dangling symlink: that is no missing directory.
      const st = await fs.lstat(existing).catch(() => null);
      if (st) throw refuse(where, place, `passes through ${existing}, a symlink to nothing`);
      missing.unshift(path.basename(existing));
      existing = path.dirname(existing);
    }
  }
  const st = await fs.stat(real, { bigint: true });
  if (!st.isDirectory()) throw refuse(where, place, missing.length ? `passes through ${real}, which is not a directory` : 'is not a directory');
  const full = path.join(real, ...missing);
  const ancestors = new Set<string>();
  for (let p = missing.length ? real : path.dirname(real); ; p = path.dirname(p)) {
    const id = await idOf(p);
    if (id) ancestors.add(id);
    if (p === path.dirname(p)) break;
  }
  const me = {
    place,
    real: full,
    fsPath: fsPathOf(full, mounts),
    id: missing.length ? null : `${st.dev}:${st.ino}`,
    ancestors,
  };
  const folders: ResolvedDirectory[] = [];
  for (const sub of place.confinedTo ?? [])
    folders.push(await resolveDirectory({ ...place, path: path.join(place.path, sub), confinedTo: undefined, keeps: undefined }, where, mounts));
  return { ...me, folders: place.confinedTo ? folders : null, kept: await resolveKept(me, mounts) };
}

/** The kept names of a home place, each as a place inside it (existing or not, file or directory). */
async function resolveKept(home: Omit<ResolvedDirectory, 'folders' | 'kept'>, mounts: readonly Mount[] | null): Promise<ResolvedDirectory[]> {
  const out: ResolvedDirectory[] = [];
  const ancestors = new Set(home.ancestors);
  if (home.id) ancestors.add(home.id);
  for (const name of home.place.keeps ?? []) {
    const real = path.join(home.real, name);
    const place: DirectoryPlace = { kind: 'directory', path: path.join(home.place.path, name), access: 'own', option: 'entry' };
    out.push({ place, real, fsPath: fsPathOf(real, mounts), id: await idOf(real), ancestors, folders: null, kept: [] });
  }
  return out;
}

/**
 * Resolves every place (see resolveDirectory). `loose`: for the places of
 * pools already there, a directory that cannot be resolved is taken as
 * written (still compared by its path) instead of refused.
 */
export async function resolvePlaces(
  places: readonly PoolPlace[],
  where: string,
  mounts: readonly Mount[] | null,
  loose = false,
): Promise<ResolvedPlace[]> {
  const out: ResolvedPlace[] = [];
  for (const p of places) {
    if (p.kind === 'names') out.push({ place: p });
    else if (!loose) out.push(await resolveDirectory(p, where, mounts));
    else
      out.push(
        await resolveDirectory(p, where, mounts).catch(() => {
          const real = path.resolve(p.path);
          const folders = p.confinedTo
            ? p.confinedTo.map((sub) => {
                const r = path.join(real, sub);
                const place: DirectoryPlace = { ...p, path: path.join(p.path, sub), confinedTo: undefined };
                return { place, real: r, fsPath: fsPathOf(r, mounts), id: null, ancestors: new Set<string>(), folders: null, kept: [] };
              })
            : null;
          return { place: p, real, fsPath: fsPathOf(real, mounts), id: null, ancestors: new Set<string>(), folders, kept: [] };
        }),
      );
  }
  return out;
}

type Relation = 'same' | 'inside' | 'around';

/** How directory a stands to directory b, and how that was seen ('' = by the real paths). */
function directoryRelation(a: ResolvedDirectory, b: ResolvedDirectory): { rel: Relation; how: string } | null {
  const byPath = (x: string, y: string): Relation | null => (x === y ? 'same' : isInside(x, y) ? 'inside' : isInside(y, x) ? 'around' : null);
  const r = byPath(a.real, b.real);
  if (r) return { rel: r, how: '' };
  if (a.fsPath && b.fsPath && a.fsPath.dev === b.fsPath.dev) {
    const m = byPath(a.fsPath.path, b.fsPath.path);
    if (m) return { rel: m, how: ` (through a mount: ${a.fsPath.path} and ${b.fsPath.path} on filesystem ${a.fsPath.dev})` };
  }
  if (a.id && a.id === b.id) return { rel: 'same', how: ' (the same device and inode)' };
  if (b.id && a.ancestors.has(b.id)) return { rel: 'inside', how: ' (by device and inode)' };
  if (a.id && b.ancestors.has(a.id)) return { rel: 'around', how: ' (by device and inode)' };
  return null;
}

function namesRelation(a: NamesPlace, b: NamesPlace): Relation | null {
  if (a.space !== b.space) return null;
  return a.prefix === b.prefix ? 'same' : b.prefix.startsWith(a.prefix) ? 'around' : a.prefix.startsWith(b.prefix) ? 'inside' : null;
}

/** Where a place's pool writes: its confined subfolders, else the whole directory. */
function extent(d: ResolvedDirectory): readonly ResolvedDirectory[] {
  return d.folders ?? [d];
}

/** The first relation between an extent of `a` and one of `b` that `counts`, with both directories. */
function extentRelation(
  as: readonly ResolvedDirectory[],
  bs: readonly ResolvedDirectory[],
  counts: (rel: Relation) => boolean,
): { rel: Relation; how: string; a: ResolvedDirectory; b: ResolvedDirectory } | null {
  for (const x of as)
    for (const y of bs) {
      const r = directoryRelation(x, y);
      if (r && counts(r.rel)) return { ...r, a: x, b: y };
    }
  return null;
}

const any = (): boolean => true;

/**
 * Refuses (QubesValueError, naming both sides and the real paths) a place of
 * `mine` that conflicts with a place of `other` under the rule above:
 * extents of pools may not meet; a home place may be neither held by a
 * place nor be or lie inside its extent, and its kept names may not meet
 * any extent.
 */
export function checkPlacesAgainst(mine: { readonly pool: string; readonly places: readonly ResolvedPlace[] }, other: PlaceHolder): void {
  for (const a of mine.places) {
    for (const b of other.places) {
      if (a.place.access === 'read' && b.place.access === 'read') continue;
      if (a.place.kind === 'names' || b.place.kind === 'names') {
        if (a.place.kind !== 'names' || b.place.kind !== 'names') continue;
        const rel = namesRelation(a.place, b.place);
        if (!rel) continue;
        const text = rel === 'same' ? 'is also' : rel === 'inside' ? 'lies within' : 'covers';
        throw new QubesValueError(
          `pool ${mine.pool}: ${a.place.option} '${a.place.prefix}' in ${a.place.space} ${text} ` +
            `${b.place.option} '${b.place.prefix}' of ${other.what}: their names would mix`,
        );
      }
      const ra = a as ResolvedDirectory;
      const rb = b as ResolvedDirectory;
      const whole = directoryRelation(ra, rb);
      let found: { rel: Relation; how: string; a: ResolvedDirectory; b: ResolvedDirectory } | null;
      if (rb.place.access === 'home') {
        // Not held by the place itself; not the same as, nor inside, its extent; its kept names untouched.
        found =
          whole?.rel === 'around'
            ? { ...whole, a: ra, b: rb }
            : extentRelation(extent(ra), [rb], (r) => r !== 'inside') ?? extentRelation(extent(ra), rb.kept, any);
      } else {
        found = extentRelation(extent(ra), extent(rb), any);
      }
      if (!found) continue;
      throw new QubesValueError(`pool ${mine.pool}: ${describe(ra, rb, other, whole, found)}`);
    }
  }
}

/**
 * The conflict in words: the relation of the two places as configured when
 * they have one, else of the extents that met; then the extents that met
 * when they are not the places themselves.
 */
function describe(
  ra: ResolvedDirectory,
  rb: ResolvedDirectory,
  other: PlaceHolder,
  whole: { rel: Relation; how: string } | null,
  found: { rel: Relation; how: string; a: ResolvedDirectory; b: ResolvedDirectory },
): string {
  const name = (d: ResolvedDirectory): string => `${d.place.option} ${d.place.path}${d.real !== path.resolve(d.place.path) ? ` (real path ${d.real})` : ''}`;
  const verb = (rel: Relation): string => (rel === 'same' ? 'is' : rel === 'inside' ? 'lies inside' : 'holds');
  const theirs = (d: ResolvedDirectory): string => `${other.what} (${other.pool === null ? '' : `${d.place.option} `}${d.real})`;
  const kept = rb.kept.includes(found.b);
  if (kept) {
    const r = directoryRelation(ra, found.b) ?? found;
    return `${name(ra)} ${verb(r.rel)} ${found.b.real}, which ${theirs(rb)} keeps${r.how}`;
  }
  const viaExtents = found.a !== ra || found.b !== rb;
  if (whole && !(rb.place.access === 'home' && viaExtents)) {
    const detail = viaExtents && whole.rel !== 'same' ? `: ${found.a.real} ${verb(found.rel)} ${found.b.real}` : '';
    return `${name(ra)} ${verb(whole.rel)} ${theirs(rb)}${whole.how}${detail}`;
  }
  return `${name(found.a)} ${verb(found.rel)} ${theirs(found.b)}${found.how}`;
}

/**
 * Refuses an own directory that exists and holds entries its pool would not
 * put there (see DirectoryPlace.entries): at its top, or for a confined
 * place in each of its subfolders, which must be real directories holding
 * only directories. Reads only.
 */
export async function checkPlaceContents(pool: string, places: readonly ResolvedPlace[]): Promise<void> {
  for (const r of places) {
    const p = r.place;
    if (p.kind !== 'directory' || p.access !== 'own' || !p.entries) continue;
    const d = r as ResolvedDirectory;
    if (d.folders) {
      for (const f of d.folders) {
        const st = await fs.lstat(f.place.path).catch(() => null);
        if (!st) continue; // does not exist yet
        if (st.isSymbolicLink())
          throw new QubesValueError(`pool ${pool}: ${f.place.option} ${f.place.path} is a symlink; a pool keeps its volumes in real directories`);
        await checkEntries(pool, f, p.entries, true);
      }
    } else {
      await checkEntries(pool, d, p.entries, false);
    }
  }
}

async function checkEntries(pool: string, d: ResolvedDirectory, entries: RegExp, dirsOnly: boolean): Promise<void> {
  const p = d.place;
  if (d.id === null) return; // does not exist yet
  let found: import('node:fs').Dirent[];
  try {
    found = await fs.readdir(d.real, { withFileTypes: true });
  } catch (e) {
    throw refuse(`pool ${pool}`, p, `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, e);
  }
  const foreign = found.filter((e) => !entries.test(e.name) || (dirsOnly && !e.isDirectory())).map((e) => e.name).sort();
  if (foreign.length)
    throw new QubesValueError(
      `pool ${pool}: ${p.option} ${p.path}${d.real !== path.resolve(p.path) ? ` (real path ${d.real})` : ''} already holds ` +
        `${foreign.slice(0, 3).map((n) => `'${n.replace(/[\x00-\x1f\x7f]/g, '?')}'`).join(', ')}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''}, ` +
        `which are not a pool's: give a new or empty directory, or one a pool of this kind used`,
    );
}
