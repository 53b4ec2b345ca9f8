/**
 * storage.conf, the pool list of Qubes R3.2: an INI file whose sections are
 * pools. `driver=NAME` picks a registered driver, `class=MODULE#EXPORT`
 * loads one (and wins over `driver`), every other key is an option of the
 * driver. The pool named `default` gets `dir_path` = the base directory
 * unless it sets one (when its driver takes a dir_path).
 *
 * Loading makes the pools only. The App then checks each one's places
 * against the pools before it, and the base and state directories, as an
 * add would (storage/places.ts), and sets it up; one that fails stays listed
 * as unavailable with the reason. An R3.2 `[default]` without dir_path
 * (file pools: xen, file, file-reflink) lives in the base directory beside
 * qubes.xml, as in Qubes: its writes stay in its class folders, so it loads.
 *
 * The INI reader and writer keep the file as lines, so adding or removing a
 * pool changes only that pool's lines: comments, blank lines, the order of
 * keys and the other sections stay byte for byte. Writes are atomic.
 *
 * Syntax: `[name]` starts a section; `key=value` (spaces around both are
 * trimmed; the value runs to the end of the line, `#` included); lines whose
 * first non-blank character is `#` or `;` are comments. There are no
 * continuation lines and no inline comments. Errors are `FILE:LINE: what`.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { writeFileAtomic } from '../files/files.js';
import { poolOptionSpecs } from '../storage/driver.js';
import { QubesException, QubesPoolInUseError, QubesValueError, StoragePoolException } from '../storage/errors.js';
import { KeyedMutex } from '../storage/lock.js';
import { parseOptions, type OptionValue } from '../storage/options.js';
import { checkPoolName, type Pool } from '../storage/pool.js';
import { printable } from '../storage/volume.js';
import type { DriverRef, DriverRegistry } from './drivers.js';

// ---- types -----------------------------------------------------------------

export type IniLine =
  | { readonly kind: 'blank' | 'comment'; readonly raw: string }
  | { readonly kind: 'section'; readonly raw: string; readonly name: string }
  | { readonly kind: 'entry'; readonly raw: string; readonly key: string; readonly value: string };

export interface IniEntry {
  readonly key: string;
  readonly value: string;
  /** 1-based line number. */
  readonly line: number;
}

export interface IniSection {
  readonly name: string;
  readonly line: number;
  readonly entries: readonly IniEntry[];
}

/** An INI file as lines (each with its own line ending) and the sections read from them. */
export interface IniDocument {
  readonly file: string;
  readonly lines: readonly IniLine[];
  readonly sections: readonly IniSection[];
}

/** A pool as storage.conf declares it (before its driver is looked at). */
export interface PoolDefinition {
  readonly name: string;
  readonly line: number;
  readonly driver?: string;
  readonly class?: string;
  /** Every key besides driver and class, in file order. */
  readonly options: Readonly<Record<string, string>>;
  /** Line of each key (driver and class included). */
  readonly keyLines: Readonly<Record<string, number>>;
}

export interface StorageConfContext {
  readonly registry: DriverRegistry;
  /** dir_path of the `default` pool unless it sets one (R3.2: /var/lib/qubes). */
  readonly baseDir: string;
  /** Directory relative `class=./x.js#X` paths start from (default: the file's directory). */
  readonly classBaseDir?: string;
}

export interface LoadedStorageConf {
  readonly file: string;
  readonly doc: IniDocument;
  readonly definitions: readonly PoolDefinition[];
  /** The pools, made by their drivers (nothing on disk touched), in file order. */
  readonly pools: ReadonlyMap<string, Pool>;
}

/** A pool to add: a name, a driver name or class reference, and options. */
export interface NewPool {
  readonly name: string;
  readonly driver?: string;
  readonly class?: string;
  readonly options: Readonly<Record<string, OptionValue>>;
}

// ---- paths and limits --------------------------------------------------------

/** Largest storage.conf read. */
export const MAX_STORAGE_CONF_BYTES = 1 << 20;
/** Where root's storage.conf lives (as in Qubes R3.2). */
export const SYSTEM_STORAGE_CONF = '/etc/qubes/storage.conf';

/** The system's base directory, whose R3.2 pools root keeps in SYSTEM_STORAGE_CONF. */
export const SYSTEM_BASE_DIR = '/var/lib/qubes';

/**
 * The storage.conf that goes with a base directory: `QUBES_STORAGE_CONF`
 * when set (the tools' counterpart of qubesd's --storage-conf), else
 * /etc/qubes/storage.conf for root on the system base directory, else
 * storage.conf in the base directory. The system file follows the system
 * base only: root working on another base directory must not get the
 * system's pools mixed in.
 */
export function defaultStorageConfPath(
  baseDir: string,
  uid: number | undefined = process.getuid?.(),
  env: NodeJS.ProcessEnv = process.env,
): string {
  const named = env['QUBES_STORAGE_CONF'];
  if (named) return path.resolve(named);
  return uid === 0 && path.resolve(baseDir) === SYSTEM_BASE_DIR ? SYSTEM_STORAGE_CONF : path.join(baseDir, 'storage.conf');
}

// ---- INI -------------------------------------------------------------------

const KEY_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

function confError(file: string, line: number | null, what: string): StoragePoolException {
  return new StoragePoolException(`${file}${line !== null ? `:${line}` : ''}: ${what}`);
}

/** Splits text into lines, each keeping its line ending ('\n' or '\r\n'). */
function splitLines(text: string): string[] {
  const out: string[] = [];
  let start = 0;
  while (start < text.length) {
    const nl = text.indexOf('\n', start);
    const end = nl < 0 ? text.length : nl + 1;
    out.push(text.slice(start, end));
    start = end;
  }
  return out;
}

/** Parses INI text; any malformed line is a StoragePoolException `FILE:LINE: what`. */
export function parseIni(text: string, file: string): IniDocument {
  const lines: IniLine[] = [];
  const sections: { name: string; line: number; entries: IniEntry[] }[] = [];
  const sectionLine = new Map<string, number>();
  let current: { name: string; line: number; entries: IniEntry[]; keys: Map<string, number> } | null = null;
  for (const [i, raw] of splitLines(text).entries()) {
    const n = i + 1;
    let body = raw.replace(/\r?\n$/, '');
    if (i === 0) body = body.replace(/^\uFEFF/, '');
    if (body.includes('\0')) throw confError(file, n, 'NUL byte in line');
    if (body.includes('\r')) throw confError(file, n, 'stray carriage return in line');
    const t = body.trim();
    if (t === '') {
      lines.push({ kind: 'blank', raw });
      continue;
    }
    if (t.startsWith('#') || t.startsWith(';')) {
      lines.push({ kind: 'comment', raw });
      continue;
    }
    if (t.startsWith('[')) {
      if (!t.endsWith(']')) throw confError(file, n, `malformed section header '${printable(t)}': expected [NAME]`);
      const name = t.slice(1, -1);
      try {
        checkPoolName(name);
      } catch (e) {
        throw confError(file, n, (e as Error).message);
      }
      const first = sectionLine.get(name);
      if (first !== undefined) throw confError(file, n, `duplicate section [${name}] (first at line ${first})`);
      sectionLine.set(name, n);
      current = { name, line: n, entries: [], keys: new Map() };
      sections.push(current);
      lines.push({ kind: 'section', raw, name });
      continue;
    }
    const eq = t.indexOf('=');
    if (eq < 0) throw confError(file, n, `expected KEY=VALUE, got '${printable(t)}'`);
    const key = t.slice(0, eq).trim();
    const value = t.slice(eq + 1).trim();
    if (key === '') throw confError(file, n, `missing key before '='`);
    if (!KEY_RE.test(key)) throw confError(file, n, `invalid key '${printable(key)}'`);
    if (!current) throw confError(file, n, `key '${key}' outside of any section (a [POOL] header must come first)`);
    if (value === '') throw confError(file, n, `key '${key}' has no value`);
    const firstKey = current.keys.get(key);
    if (firstKey !== undefined)
      throw confError(file, n, `duplicate key '${key}' in section [${current.name}] (first at line ${firstKey})`);
    current.keys.set(key, n);
    current.entries.push({ key, value, line: n });
    lines.push({ kind: 'entry', raw, key, value });
  }
  return { file, lines, sections: sections.map(({ name, line, entries }) => ({ name, line, entries })) };
}

/** The text of a document: its lines as they were. */
export function formatIni(doc: IniDocument): string {
  return doc.lines.map((l) => l.raw).join('');
}

/** The line ending the file uses (its first), '\n' for a new file. */
function lineEnding(doc: IniDocument): string {
  const first = doc.lines.find((l) => l.raw.endsWith('\n'));
  return first?.raw.endsWith('\r\n') ? '\r\n' : '\n';
}

/** Text with a new section at the end, separated by a blank line; the rest untouched. */
export function appendSection(doc: IniDocument, name: string, entries: readonly (readonly [string, string])[]): string {
  const eol = lineEnding(doc);
  let text = formatIni(doc);
  if (text !== '' && !text.endsWith('\n')) text += eol;
  const last = doc.lines[doc.lines.length - 1];
  if (last && last.kind !== 'blank') text += eol;
  text += `[${name}]${eol}`;
  for (const [k, v] of entries) text += `${k}=${v}${eol}`;
  return text;
}

/**
 * Text without section `name`: the comments leading straight into its
 * header (they introduce it; unless they open the file), its header, its keys, the comments among them,
 * and the comments right after its last key unless they lead straight into
 * the next header (then they introduce that section and stay). One blank
 * line is dropped too when the section sat between two, so the file does
 * not grow gaps.
 */
export function removeSection(doc: IniDocument, name: string): string {
  const lines = doc.lines;
  const start = lines.findIndex((l) => l.kind === 'section' && l.name === name);
  if (start < 0) throw new QubesValueError(`${doc.file}: no pool named '${printable(name)}'`);
  let end = start;
  for (let i = start + 1; i < lines.length && lines[i]!.kind !== 'section'; i++) if (lines[i]!.kind === 'entry') end = i;
  let j = end + 1;
  while (lines[j]?.kind === 'comment') j++;
  if (lines[j] === undefined || lines[j]!.kind === 'blank') end = j - 1;
  let from = start;
  while (lines[from - 1]?.kind === 'comment') from--;
  if (from === 0) from = start; // a comment block opening the file is the file's header: it stays
  let to = end + 1;
  const before = lines[from - 1];
  const after = lines[end + 1];
  if (before?.kind === 'blank' && (after === undefined || after.kind === 'blank')) {
    if (after) to++;
    else from--;
  }
  return lines
    .slice(0, from)
    .concat(lines.slice(to))
    .map((l) => l.raw)
    .join('');
}

// ---- pools -------------------------------------------------------------------

/** The pools of a document; a section with neither driver nor class is an error. */
export function poolDefinitions(doc: IniDocument): PoolDefinition[] {
  return doc.sections.map((s) => {
    const options: Record<string, string> = {};
    const keyLines: Record<string, number> = {};
    let driver: string | undefined;
    let cls: string | undefined;
    for (const e of s.entries) {
      keyLines[e.key] = e.line;
      if (e.key === 'driver') driver = e.value;
      else if (e.key === 'class') cls = e.value;
      else options[e.key] = e.value;
    }
    if (driver === undefined && cls === undefined)
      throw confError(doc.file, s.line, `pool ${s.name}: neither driver= nor class= is given`);
    const def: PoolDefinition = { name: s.name, line: s.line, options, keyLines };
    return { ...def, ...(driver !== undefined ? { driver } : {}), ...(cls !== undefined ? { class: cls } : {}) };
  });
}

/** Reads a storage.conf (at most 1 MiB); a missing file reads as empty. */
export async function readIniFile(file: string): Promise<IniDocument> {
  let fh;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return parseIni('', file);
    throw confError(file, null, `cannot read: ${(e as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw confError(file, null, 'not a regular file');
    if (st.size > MAX_STORAGE_CONF_BYTES)
      throw confError(file, null, `${st.size} bytes is too large (at most ${MAX_STORAGE_CONF_BYTES})`);
    const buf = Buffer.alloc(st.size + 1);
    let off = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, off, buf.length - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
      if (off > MAX_STORAGE_CONF_BYTES) throw confError(file, null, `too large (at most ${MAX_STORAGE_CONF_BYTES} bytes)`);
      if (off === buf.length) break;
    }
    return parseIni(buf.subarray(0, off).toString('utf8'), file);
  } finally {
    await fh.close();
  }
}

/** Makes the pool a definition describes; errors carry FILE:LINE of the key at fault. */
async function makePool(def: PoolDefinition, file: string, ctx: StorageConfContext): Promise<Pool> {
  const at = (line: number, e: unknown): QubesException => {
    const msg = e instanceof Error ? e.message : String(e);
    return confError(file, line, msg.startsWith(`pool ${def.name}`) ? msg : `pool ${def.name}: ${msg}`);
  };
  const ref: DriverRef = def.class !== undefined ? { class: def.class } : { driver: def.driver! };
  const refLine = def.class !== undefined ? def.keyLines['class']! : def.keyLines['driver']!;
  const loadCtx = { pool: def.name, baseDir: ctx.classBaseDir ?? path.dirname(path.resolve(file)) };
  let driver;
  try {
    driver = await ctx.registry.resolve(ref, loadCtx);
  } catch (e) {
    throw at(refLine, e);
  }
  const raw: Record<string, OptionValue> = { ...def.options };
  if (def.name === 'default' && raw['dir_path'] === undefined && driver.options.some((o) => o.name === 'dir_path'))
    raw['dir_path'] = ctx.baseDir;
  // Each given key on its own first, so an error points at its line.
  const specs = new Map(poolOptionSpecs(driver).map((o) => [o.name, o]));
  for (const [k, v] of Object.entries(def.options)) {
    const spec = specs.get(k);
    if (!spec) {
      const known = driver.options.map((o) => o.name).join(', ') || 'none';
      throw at(def.keyLines[k]!, `pool ${def.name}: unknown option '${k}' for driver ${driver.name} (known: ${known})`);
    }
    try {
      parseOptions([spec], { [k]: v }, `pool ${def.name}`);
    } catch (e) {
      throw at(def.keyLines[k]!, e);
    }
  }
  for (const spec of driver.options)
    if (spec.required && raw[spec.name] === undefined)
      throw at(def.line, `pool ${def.name}: driver ${driver.name} requires option '${spec.name}', which is missing`);
  try {
    return await ctx.registry.createPool(ref, def.name, raw, { baseDir: loadCtx.baseDir });
  } catch (e) {
    throw at(def.line, e);
  }
}

/**
 * Loads storage.conf: parses it, checks every pool's driver and options and
 * makes the pools (nothing on disk is touched). The first error stops the
 * load: `FILE:LINE: what is wrong`.
 */
export async function loadStorageConf(file: string, ctx: StorageConfContext): Promise<LoadedStorageConf> {
  const doc = await readIniFile(file);
  const definitions = poolDefinitions(doc);
  const pools = new Map<string, Pool>();
  for (const def of definitions) pools.set(def.name, await makePool(def, file, ctx));
  return { file, doc, definitions, pools };
}

/** One writer per file at a time in this process. */
const fileLocks = new KeyedMutex();

function confValue(v: OptionValue): string {
  return typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
}

/**
 * Adds a pool at the end of storage.conf (made first by its driver, so a bad
 * pool never reaches the file) and rewrites the file atomically; every other
 * line stays as it was. A taken name is QubesPoolInUseError.
 */
export async function addPoolToStorageConf(file: string, pool: NewPool, ctx: StorageConfContext): Promise<Pool> {
  checkPoolName(pool.name);
  if ((pool.driver === undefined || pool.driver === '') && (pool.class === undefined || pool.class === ''))
    throw new QubesValueError(`pool ${pool.name}: give a driver or a class`);
  const entries: [string, string][] = [];
  if (pool.class !== undefined && pool.class !== '') entries.push(['class', pool.class]);
  else entries.push(['driver', pool.driver!]);
  for (const [k, v] of Object.entries(pool.options)) {
    if (k === 'driver' || k === 'class' || k === 'name') throw new QubesValueError(`pool ${pool.name}: '${k}' is not an option`);
    if (!KEY_RE.test(k)) throw new QubesValueError(`pool ${pool.name}: invalid option name '${printable(k)}'`);
    entries.push([k, confValue(v)]);
  }
  for (const [k, v] of entries)
    if (v === '' || v !== v.trim() || /[\x00-\x1f\x7f]/.test(v))
      throw new QubesValueError(
        `pool ${pool.name}: option ${k}: a value in storage.conf must be non-empty, one line, without surrounding spaces`,
      );
  return fileLocks.run(path.resolve(file), async () => {
    const doc = await readIniFile(file);
    const existing = doc.sections.find((s) => s.name === pool.name);
    if (existing) throw new QubesPoolInUseError(`${file}:${existing.line}: pool '${pool.name}' already exists`);
    const text = appendSection(doc, pool.name, entries);
    const newDoc = parseIni(text, file);
    const def = poolDefinitions(newDoc).find((d) => d.name === pool.name)!;
    const made = await makePool(def, file, ctx);
    await writeFileAtomic(file, text, await fileMode(file));
    return made;
  });
}

/** Removes a pool's section from storage.conf, atomically; an unknown name is QubesValueError. */
export async function removePoolFromStorageConf(file: string, name: string): Promise<void> {
  await fileLocks.run(path.resolve(file), async () => {
    const doc = await readIniFile(file);
    const text = removeSection(doc, name);
    parseIni(text, file);
    await writeFileAtomic(file, text, await fileMode(file));
  });
}

async function fileMode(file: string): Promise<number> {
  try {
    return (await fs.stat(file)).mode & 0o7777;
  } catch {
    return 0o644;
  }
}
