/**
 * Pool places: what a pool owns or reads outside itself, so that no two
 * pools (and no pool and the state) step on each other's files.
 *
 * A pool declares its places (`Pool.places()`); the App compares them with
 * every other pool's places and with the reserved directories (the base
 * directory and the state file's directory) before the pool is accepted,
 * that is before its setup makes anything on disk.
 *
 * The rule:
 * - An `own` place is the pool's alone: it creates and deletes files
 *   anywhere under it (a file pool's first-use sweep removes debris it finds
 *   there). It may be neither the same as, nor inside, nor around any other
 *   pool's place, read-only ones included: a kernel directory inside a file
 *   pool's directory would hand that pool's files (a volume named `modules`)
 *   to a domain as its kernel.
 * - A `read` place is only read (linux-kernel). Read places may be shared and
 *   nested among themselves; against an own place the rule above applies.
 * - No place may be the base directory or the state file's directory, nor
 *   hold one of them. A place inside them is fine: BASE/pools/NAME is where
 *   pools belong by default.
 * - An own directory that exists must hold nothing but what such a pool puts
 *   there (`entries`; e.g. `appvms/`, `lost+found`): `/etc` is no pool.
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
  readonly access: 'own' | 'read';
  /** What the configuration calls it, for messages (e.g. `dir_path`). */
  readonly option: string;
  /**
   * Names an existing own directory may already hold at its top when the pool
   * moves in (anything else is someone else's); absent: not checked.
   */
  readonly entries?: RegExp;
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
  return {
    place,
    real: full,
    fsPath: fsPathOf(full, mounts),
    id: missing.length ? null : `${st.dev}:${st.ino}`,
    ancestors,
  };
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
          return { place: p, real, fsPath: fsPathOf(real, mounts), id: null, ancestors: new Set<string>() };
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

/**
 * Refuses (QubesValueError, naming both sides and the real paths) a place of
 * `mine` that conflicts with a place of `other` under the rule above.
 * Reserved directories (`other.pool === null`) only refuse being the same
 * or being held.
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
      const found = directoryRelation(ra, rb);
      if (!found) continue;
      if (other.pool === null && found.rel === 'inside') continue;
      const mineText = `${ra.place.option} ${ra.place.path}${ra.real !== path.resolve(ra.place.path) ? ` (real path ${ra.real})` : ''}`;
      const theirs = `${other.what} (${other.pool === null ? '' : `${rb.place.option} `}${rb.real})`;
      const text = found.rel === 'same' ? 'is' : found.rel === 'inside' ? 'lies inside' : 'holds';
      throw new QubesValueError(`pool ${mine.pool}: ${mineText} ${text} ${theirs}${found.how}`);
    }
  }
}

/**
 * Refuses an own directory that exists and holds entries its pool would not
 * put there (see DirectoryPlace.entries). Reads only.
 */
export async function checkPlaceContents(pool: string, places: readonly ResolvedPlace[]): Promise<void> {
  for (const r of places) {
    const p = r.place;
    if (p.kind !== 'directory' || p.access !== 'own' || !p.entries) continue;
    const d = r as ResolvedDirectory;
    if (d.id === null) continue; // does not exist yet
    let names: string[];
    try {
      names = await fs.readdir(d.real);
    } catch (e) {
      throw refuse(`pool ${pool}`, p, `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, e);
    }
    const foreign = names.filter((n) => !p.entries!.test(n)).sort();
    if (foreign.length)
      throw new QubesValueError(
        `pool ${pool}: ${p.option} ${p.path}${d.real !== path.resolve(p.path) ? ` (real path ${d.real})` : ''} already holds ` +
          `${foreign.slice(0, 3).map((n) => `'${n.replace(/[\x00-\x1f\x7f]/g, '?')}'`).join(', ')}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''}, ` +
          `which are not a pool's: give a new or empty directory, or one a pool of this kind used`,
      );
  }
}
