/**
 * The driver registry: which drivers exist, by name, and how a pool is made
 * from a driver reference and raw options.
 *
 * Drivers come from three places:
 * - built in (src/drivers/builtin.ts);
 * - installed npm packages that declare drivers in their package.json, the
 *   counterpart of the `qubes.storage` entry points of Qubes R4:
 *   `"qubes-storage": { "drivers": { "NAME": "./path/module.js#exportName" } }`;
 *   a new driver then needs no change to this project;
 * - a module path and export name given where a pool is configured (the
 *   R3.2 `class=` key): `./my-driver.js#BtrfsDriver` (relative to a base
 *   directory, usually the one of storage.conf), `/abs/driver.js#X`, or
 *   `some-package/sub#ZDriver` (resolved in the configured node_modules).
 *
 * Whatever its origin, a driver is a `StorageDriver` object; its shape and
 * its interface version are checked before it is used. Errors in loading
 * name the pool, the module and the reason.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { builtinDrivers } from '../drivers/builtin.js';
import { resolveInside } from '../files/files.js';
import { canShrink, createPoolFrom, DRIVER_API_AGE, DRIVER_API_VERSION, type StorageDriver } from '../storage/driver.js';
import { oneLineReason, StoragePoolException } from '../storage/errors.js';
import type { OptionSpec, OptionValue } from '../storage/options.js';
import { checkPoolName, type Pool } from '../storage/pool.js';
import { printable } from '../storage/volume.js';

// ---- types ---------------------------------------------------------------

/** Where a pool's driver comes from: a registered name or a `class=` reference. */
export interface DriverRef {
  readonly driver?: string;
  /** `MODULE#EXPORT`; wins over `driver` when both are given. */
  readonly class?: string;
}

/** Where a registered driver came from. */
export type DriverOrigin =
  | { readonly kind: 'builtin' }
  | { readonly kind: 'given' }
  | { readonly kind: 'package'; readonly package: string; readonly module: string };

/** One line of admin.pool.ListDrivers, plus what `--help-drivers` shows. */
export interface DriverListing {
  readonly name: string;
  /** Option names besides `name`, in declaration order. */
  readonly options: readonly string[];
  readonly description: string;
  readonly origin: DriverOrigin;
}

/** A third-party driver that could not be registered, and why. */
export interface DriverProblem {
  /** The declared driver name, when there is one. */
  readonly name: string | null;
  readonly package: string;
  readonly module: string | null;
  readonly reason: string;
}

export interface RegistryOptions {
  /** Register the built-in drivers (default true). */
  readonly builtins?: boolean;
  /** More drivers to register (tests, embedders). */
  readonly drivers?: readonly StorageDriver[];
  /** node_modules directories to scan for driver packages and to resolve `class=pkg/...` in. */
  readonly nodeModules?: readonly string[];
}

export interface LoadContext {
  /** The pool being configured, for messages. */
  readonly pool?: string;
  /** Directory relative `class=./x.js#X` paths are taken from (default: the process's cwd). */
  readonly baseDir?: string;
}

// ---- limits --------------------------------------------------------------

/** Most directory entries looked at per node_modules (or @scope) directory. */
export const MAX_SCAN_ENTRIES = 10_000;
/** Largest package.json read. */
export const MAX_PACKAGE_JSON_BYTES = 1 << 20;
/** Most drivers one package may declare. */
export const MAX_DRIVERS_PER_PACKAGE = 64;

const DRIVER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const EXPORT_NAME_RE = /^[A-Za-z_$][A-Za-z0-9_$]{0,127}$/;
const PACKAGE_NAME_RE = /^(@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/i;
const OPTION_TYPES = new Set(['string', 'path', 'int', 'bool']);
const VOLUME_KINDS = new Set(['volatile', 'snapshot', 'origin', 'origin_snapshot']);

/** The node_modules directory of this project (next to package.json). */
export function defaultNodeModulesDirs(): string[] {
  // dist/src/registry/drivers.js -> the project root is three levels up.
  const here = path.dirname(fileURLToPath(import.meta.url));
  return [path.resolve(here, '..', '..', '..', 'node_modules')];
}

// ---- the registry --------------------------------------------------------

interface Entry {
  readonly driver: StorageDriver;
  readonly origin: DriverOrigin;
}

export class DriverRegistry {
  private readonly entries = new Map<string, Entry>();
  /** Names that cannot be used, with the reason (broken or conflicting packages). */
  private readonly broken = new Map<string, string>();
  private readonly _problems: DriverProblem[] = [];
  private readonly classCache = new Map<string, Promise<StorageDriver>>();
  readonly nodeModules: readonly string[];

  private constructor(nodeModules: readonly string[]) {
    this.nodeModules = nodeModules.map((d) => path.resolve(d));
  }

  /**
   * Makes a registry: built-ins, given drivers, then every driver declared by
   * a package in `nodeModules` (imported now, so lookups afterwards are
   * synchronous). A broken package does not stop the others: it is listed
   * in `problems` and its driver names give its reason when used.
   */
  static async open(opts: RegistryOptions = {}): Promise<DriverRegistry> {
    const reg = new DriverRegistry(opts.nodeModules ?? []);
    if (opts.builtins ?? true) for (const d of builtinDrivers(reg)) reg.register(d, { kind: 'builtin' });
    for (const d of opts.drivers ?? []) reg.register(d, { kind: 'given' });
    for (const dir of reg.nodeModules) await reg.scanNodeModules(dir);
    return reg;
  }

  /** Third-party drivers that could not be registered. */
  get problems(): readonly DriverProblem[] {
    return this._problems;
  }

  /** Adds a driver under its own name; refuses a bad shape or a taken name. */
  register(driver: unknown, origin: DriverOrigin = { kind: 'given' }): StorageDriver {
    const d = checkDriverShape(driver);
    if (this.entries.has(d.name))
      throw new StoragePoolException(`driver '${d.name}' is already registered (${describeOrigin(this.entries.get(d.name)!.origin)})`);
    this.entries.set(d.name, { driver: d, origin });
    return d;
  }

  /** Names of the usable drivers, sorted. */
  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The driver registered as `name`; an unknown or broken name is a StoragePoolException. */
  get(name: string, ctx: LoadContext = {}): StorageDriver {
    const e = this.entries.get(name);
    if (e) return e.driver;
    const pre = ctx.pool !== undefined ? `pool ${ctx.pool}: ` : '';
    const why = this.broken.get(name);
    if (why !== undefined) throw new StoragePoolException(`${pre}driver '${printable(name)}' cannot be used: ${why}`);
    const known = this.names().join(', ') || 'none';
    throw new StoragePoolException(`${pre}unknown driver '${printable(name)}' (known: ${known})`);
  }

  /**
   * Loads a driver from `MODULE#EXPORT` (the `class=` key): a path starting
   * with `./`, `../` or `/` is a file (relative ones from ctx.baseDir);
   * anything else is `package[/subpath]`, resolved in the configured
   * node_modules directories. The export must be a StorageDriver.
   */
  async loadClass(ref: string, ctx: LoadContext = {}): Promise<StorageDriver> {
    const pre = `${ctx.pool !== undefined ? `pool ${ctx.pool}: ` : ''}cannot load driver class '${printable(ref)}'`;
    let file: string;
    let exportName: string;
    try {
      const parsed = parseClassRef(ref);
      exportName = parsed.exportName;
      file = await this.resolveModule(parsed.module, ctx.baseDir ?? process.cwd());
    } catch (e) {
      throw new StoragePoolException(`${pre}: ${oneLineReason(e)}`, { cause: e });
    }
    const key = `${file}#${exportName}`;
    let p = this.classCache.get(key);
    if (!p) {
      p = importDriver(file, exportName);
      this.classCache.set(key, p);
      // A failed load may succeed later (file fixed): do not cache failures.
      p.catch(() => this.classCache.delete(key));
    }
    try {
      return await p;
    } catch (e) {
      throw new StoragePoolException(`${pre}: module ${file}: ${oneLineReason(e)}`, { cause: e });
    }
  }

  /** The driver a reference names: `class` wins over `driver`. */
  async resolve(ref: DriverRef | string, ctx: LoadContext = {}): Promise<StorageDriver> {
    const r = typeof ref === 'string' ? refFromString(ref) : ref;
    if (r.class !== undefined && r.class !== '') return this.loadClass(r.class, ctx);
    if (r.driver === undefined || r.driver === '') {
      const pre = ctx.pool !== undefined ? `pool ${ctx.pool}: ` : '';
      throw new StoragePoolException(`${pre}neither a driver nor a class is given`);
    }
    return this.get(r.driver, ctx);
  }

  /**
   * Makes a pool: resolves the driver (a name, or `MODULE#EXPORT`), checks the
   * name, and makes the pool from the driver's declaration (storage/driver.ts
   * createPoolFrom: raw options validated, capabilities bound). Nothing on
   * disk is touched.
   */
  async createPool(
    ref: DriverRef | string,
    name: string,
    rawOptions: Record<string, OptionValue>,
    ctx: Omit<LoadContext, 'pool'> = {},
  ): Promise<Pool> {
    checkPoolName(name);
    const driver = await this.resolve(ref, { ...ctx, pool: name });
    return createPoolFrom(driver, name, rawOptions);
  }

  /** createPool for a registered driver name, synchronously (for drivers that wrap others). */
  createPoolSync(driverName: string, name: string, rawOptions: Record<string, OptionValue>): Pool {
    checkPoolName(name);
    return createPoolFrom(this.get(driverName, { pool: name }), name, rawOptions);
  }

  /** Every usable driver with its option names (admin.pool.ListDrivers), sorted by name. */
  listDrivers(): DriverListing[] {
    return this.names().map((name) => {
      const e = this.entries.get(name)!;
      return {
        name,
        options: e.driver.options.map((o) => o.name),
        description: e.driver.description,
        origin: e.origin,
      };
    });
  }

  /** Help for every driver, from the same declarations (`qvm-pool --help-drivers`). */
  helpText(): string {
    return this.names()
      .map((n) => driverHelp(this.entries.get(n)!.driver))
      .join('\n');
  }

  // ---- discovery ---------------------------------------------------------

  private async scanNodeModules(dir: string): Promise<void> {
    for (const pkgDir of await listPackageDirs(dir)) {
      const pkgName = path.relative(dir, pkgDir).split(path.sep).join('/');
      let decl: Record<string, string> | null;
      try {
        decl = await readDriverDeclarations(pkgDir);
      } catch (e) {
        this.problem({ name: null, package: pkgName, module: null, reason: oneLineReason(e) });
        continue;
      }
      if (!decl) continue;
      for (const [name, target] of Object.entries(decl)) await this.loadDeclared(pkgName, pkgDir, name, target);
    }
  }

  private async loadDeclared(pkgName: string, pkgDir: string, name: string, target: string): Promise<void> {
    const fail = (module: string | null, reason: string): void => {
      this.problem({ name, package: pkgName, module, reason });
      if (!this.entries.has(name))
        this.broken.set(name, `package ${pkgName}${module ? ` (module ${module})` : ''}: ${reason}`);
    };
    if (!DRIVER_NAME_RE.test(name)) return fail(null, `invalid driver name '${printable(name)}'`);
    let parsed: { module: string; exportName: string };
    let file: string;
    try {
      parsed = parseClassRef(target);
      if (!parsed.module.startsWith('./')) throw new Error(`'${printable(target)}' must start with './' (a file in the package)`);
      file = resolveInside(pkgDir, parsed.module);
    } catch (e) {
      return fail(null, oneLineReason(e));
    }
    const existing = this.entries.get(name);
    if (existing?.origin.kind === 'package') {
      // Two packages claim the same name: neither wins silently.
      this.entries.delete(name);
      this.broken.set(name, `declared by more than one package: ${existing.origin.package}, also declared by package ${pkgName}`);
      return this.problem({
        name,
        package: pkgName,
        module: file,
        reason: `driver name '${name}' is declared by more than one package (${existing.origin.package}, ${pkgName})`,
      });
    }
    if (existing) return fail(file, `driver name '${name}' is already taken (${describeOrigin(existing.origin)})`);
    if (this.broken.has(name)) {
      this.broken.set(name, `${this.broken.get(name)}; also declared by package ${pkgName}`);
      return this.problem({ name, package: pkgName, module: file, reason: `driver name '${name}' is declared by more than one package` });
    }
    let driver: StorageDriver;
    try {
      driver = await importDriver(file, parsed.exportName);
      if (driver.name !== name)
        throw new Error(`the export is driver '${printable(driver.name)}', but package.json declares it as '${name}'`);
    } catch (e) {
      return fail(file, oneLineReason(e));
    }
    this.entries.set(name, { driver, origin: { kind: 'package', package: pkgName, module: file } });
  }

  private problem(p: DriverProblem): void {
    this._problems.push(p);
  }

  // ---- module resolution ---------------------------------------------------

  /** A file for a module specifier: a path (relative to baseDir) or package[/subpath]. */
  private async resolveModule(spec: string, baseDir: string): Promise<string> {
    if (spec.startsWith('/')) return path.normalize(spec);
    if (spec.startsWith('./') || spec.startsWith('../')) return path.resolve(baseDir, spec);
    const { pkg, sub } = splitPackageSpec(spec);
    if (this.nodeModules.length === 0) throw new Error(`no node_modules directory is configured to find package '${pkg}' in`);
    return resolvePackageFile(this.nodeModules, pkg, sub);
  }
}

// ---- driver shape -----------------------------------------------------------

/** Checks that `d` is a StorageDriver written for a supported interface version. */
export function checkDriverShape(d: unknown): StorageDriver {
  const bad = (why: string): never => {
    throw new StoragePoolException(`not a storage driver: ${why}`);
  };
  if (typeof d !== 'object' || d === null) return bad(`expected an object, got ${d === null ? 'null' : typeof d}`);
  const o = d as Record<string, unknown>;
  if (typeof o['name'] !== 'string' || !DRIVER_NAME_RE.test(o['name']))
    bad(`'name' must be a driver name (letters, digits, '_', '.', '-'), got ${describeValue(o['name'])}`);
  const v = o['apiVersion'];
  if (typeof v !== 'number' || !Number.isInteger(v)) bad(`'apiVersion' must be an integer, got ${describeValue(v)}`);
  const lo = DRIVER_API_VERSION - DRIVER_API_AGE;
  if ((v as number) < lo || (v as number) > DRIVER_API_VERSION)
    bad(
      `driver '${o['name'] as string}' was written for driver API version ${v as number}; this program supports ` +
        (lo === DRIVER_API_VERSION ? `version ${lo}` : `versions ${lo} to ${DRIVER_API_VERSION}`),
    );
  if (typeof o['description'] !== 'string') bad(`'description' must be a string`);
  if (typeof o['createPool'] !== 'function') bad(`'createPool' must be a function`);
  if (!Array.isArray(o['options'])) bad(`'options' must be an array of option declarations`);
  const seen = new Set<string>();
  for (const [i, spec] of (o['options'] as unknown[]).entries()) {
    const s = spec as Partial<OptionSpec> | null;
    if (typeof s !== 'object' || s === null || typeof s.name !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(s.name))
      bad(`options[${i}] needs a 'name' made of letters, digits and '_'`);
    if (s!.name === 'name') bad(`options[${i}]: 'name' is not an option (every pool has it)`);
    if (seen.has(s!.name!)) bad(`option '${s!.name}' is declared twice`);
    seen.add(s!.name!);
    if (!OPTION_TYPES.has(String(s!.type))) bad(`option '${s!.name}': type must be string, path, int or bool`);
    if (typeof s!.help !== 'string') bad(`option '${s!.name}': 'help' must be a string`);
  }
  const caps = o['capabilities'] as Record<string, unknown> | null | undefined;
  if (typeof caps !== 'object' || caps === null) bad(`'capabilities' must be an object`);
  if (!Array.isArray(caps!['volumeKinds']) || !(caps!['volumeKinds'] as unknown[]).every((k) => VOLUME_KINDS.has(String(k))))
    bad(`'capabilities.volumeKinds' must list volume kinds (volatile, snapshot, origin, origin_snapshot)`);
  for (const k of ['remote', 'writable'])
    if (typeof caps![k] !== 'boolean') bad(`'capabilities.${k}' must be a boolean`);
  if (typeof caps!['maxRevisions'] !== 'number') bad(`'capabilities.maxRevisions' must be a number`);
  // Added after version 1 was published: absent means false (cannot shrink).
  if (caps!['shrink'] !== undefined && typeof caps!['shrink'] !== 'boolean') bad(`'capabilities.shrink' must be a boolean when given`);
  if (caps!['listing'] !== undefined && caps!['listing'] !== 'pool' && caps!['listing'] !== 'domains')
    bad(`'capabilities.listing' must be 'pool' or 'domains' when given`);
  return d as StorageDriver;
}

// ---- class references and module loading -----------------------------------

/** Splits `MODULE#EXPORT`; both parts are required. */
export function parseClassRef(ref: string): { module: string; exportName: string } {
  if (ref.includes('\0')) throw new Error('contains a NUL byte');
  const hash = ref.lastIndexOf('#');
  if (hash <= 0) throw new Error(`expected MODULE#EXPORT (for example ./my-driver.js#MyDriver)`);
  const module = ref.slice(0, hash).trim();
  const exportName = ref.slice(hash + 1).trim();
  if (!EXPORT_NAME_RE.test(exportName)) throw new Error(`'${printable(exportName)}' is not an export name`);
  if (module === '') throw new Error('the module part is empty');
  return { module, exportName };
}

/** A string given where a driver is expected: `MODULE#EXPORT` is a class reference, else a name. */
function refFromString(s: string): DriverRef {
  return s.includes('#') || s.startsWith('./') || s.startsWith('../') || s.startsWith('/') ? { class: s } : { driver: s };
}

async function importDriver(file: string, exportName: string): Promise<StorageDriver> {
  let st;
  try {
    st = await fs.stat(file);
  } catch (e) {
    throw new Error((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : oneLineReason(e), { cause: e });
  }
  if (!st.isFile()) throw new Error('not a regular file');
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`import failed: ${oneLineReason(e)}`, { cause: e });
  }
  if (!Object.prototype.hasOwnProperty.call(mod, exportName)) {
    const names = Object.keys(mod).slice(0, 20).join(', ') || 'none';
    throw new Error(`no export '${exportName}' (exports: ${names})`);
  }
  try {
    return checkDriverShape(mod[exportName]);
  } catch (e) {
    throw new Error(`export '${exportName}' is ${oneLineReason(e)}`, { cause: e });
  }
}

function splitPackageSpec(spec: string): { pkg: string; sub: string } {
  const parts = spec.split('/');
  const n = spec.startsWith('@') ? 2 : 1;
  const pkg = parts.slice(0, n).join('/');
  const sub = parts.slice(n).join('/');
  if (!PACKAGE_NAME_RE.test(pkg) || parts.length < n) throw new Error(`'${printable(spec)}' is neither a path nor a package name`);
  if (sub.split('/').some((p) => p === '..' || p === '.')) throw new Error(`'${printable(spec)}': '.' and '..' are not allowed after the package name`);
  return { pkg, sub };
}

/**
 * Finds the file for `pkg[/sub]` in the first node_modules that has the
 * package: the package.json `exports` map when there is one (exact keys and
 * one `*` pattern; conditions `import`, `node`, `default`), else the path
 * itself (or `main`, or index.js, for the bare package). Never leaves the
 * package directory.
 */
async function resolvePackageFile(nodeModules: readonly string[], pkg: string, sub: string): Promise<string> {
  for (const nm of nodeModules) {
    const dir = path.join(nm, ...pkg.split('/'));
    const manifest = await readJson(path.join(dir, 'package.json'));
    if (manifest === undefined) continue;
    const m = (manifest ?? {}) as Record<string, unknown>;
    const key = sub === '' ? '.' : `./${sub}`;
    if (m['exports'] !== undefined) {
      const target = matchExports(m['exports'], key);
      if (target === null) throw new Error(`package ${pkg} does not export '${key}'`);
      return resolveInside(dir, target);
    }
    if (sub !== '') return resolveInside(dir, sub);
    return resolveInside(dir, typeof m['main'] === 'string' ? m['main'] : 'index.js');
  }
  throw new Error(`package '${pkg}' is not installed in ${nodeModules.join(', ')}`);
}

/** Parsed JSON of a small file; undefined if it is missing. */
async function readJson(file: string): Promise<unknown> {
  let st;
  try {
    st = await fs.stat(file);
  } catch {
    return undefined;
  }
  if (!st.isFile() || st.size > MAX_PACKAGE_JSON_BYTES) throw new Error(`${file}: not a regular file of at most 1 MiB`);
  try {
    return JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${oneLineReason(e)}`, { cause: e });
  }
}

function pickCondition(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  for (const c of ['import', 'node', 'default']) {
    if (c in o) {
      const r = pickCondition(o[c]);
      if (r !== null) return r;
    }
  }
  return null;
}

function matchExports(exp: unknown, key: string): string | null {
  if (typeof exp === 'string' || (typeof exp === 'object' && exp !== null && !Object.keys(exp).some((k) => k.startsWith('.'))))
    return key === '.' ? pickCondition(exp) : null;
  if (typeof exp !== 'object' || exp === null) return null;
  const map = exp as Record<string, unknown>;
  if (key in map) return pickCondition(map[key]);
  for (const [pattern, target] of Object.entries(map)) {
    const star = pattern.indexOf('*');
    if (star < 0 || pattern.indexOf('*', star + 1) >= 0) continue;
    const before = pattern.slice(0, star);
    const after = pattern.slice(star + 1);
    if (key.length >= before.length + after.length && key.startsWith(before) && key.endsWith(after)) {
      const middle = key.slice(before.length, key.length - after.length);
      const t = pickCondition(target);
      if (t !== null) return t.replace('*', middle);
    }
  }
  return null;
}

// ---- package discovery -------------------------------------------------------

/** Package directories directly in `dir` and in its @scope directories (bounded). */
async function listPackageDirs(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdirBounded(dir)) {
    if (name.startsWith('.')) continue;
    const full = path.join(dir, name);
    if (name.startsWith('@')) {
      for (const inner of await readdirBounded(full)) if (!inner.startsWith('.')) out.push(path.join(full, inner));
    } else {
      out.push(full);
    }
  }
  return out;
}

async function readdirBounded(dir: string): Promise<string[]> {
  const names: string[] = [];
  let d;
  try {
    d = await fs.opendir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return names;
    throw e;
  }
  try {
    for await (const ent of d) {
      if (ent.isDirectory() || ent.isSymbolicLink()) names.push(ent.name);
      if (names.length >= MAX_SCAN_ENTRIES) break;
    }
  } finally {
    await d.close().catch(() => undefined);
  }
  return names.sort();
}

/** The `qubes-storage.drivers` map of a package, or null if it declares none. */
async function readDriverDeclarations(pkgDir: string): Promise<Record<string, string> | null> {
  const file = path.join(pkgDir, 'package.json');
  let fh;
  try {
    fh = await fs.open(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
  let text: string;
  try {
    const st = await fh.stat();
    if (!st.isFile()) return null;
    if (st.size > MAX_PACKAGE_JSON_BYTES) throw new Error(`package.json is larger than ${MAX_PACKAGE_JSON_BYTES} bytes`);
    text = await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
  // Cheap filter first: most packages have nothing to do with us.
  if (!text.includes('"qubes-storage"')) return null;
  let manifest: unknown;
  try {
    manifest = JSON.parse(text);
  } catch (e) {
    throw new Error(`package.json: ${oneLineReason(e)}`, { cause: e });
  }
  const field = (manifest as Record<string, unknown> | null)?.['qubes-storage'];
  if (field === undefined) return null;
  const drivers = (field as Record<string, unknown> | null)?.['drivers'];
  if (typeof drivers !== 'object' || drivers === null || Array.isArray(drivers))
    throw new Error(`package.json: "qubes-storage" must be { "drivers": { "NAME": "./module.js#export" } }`);
  const entries = Object.entries(drivers as Record<string, unknown>);
  if (entries.length > MAX_DRIVERS_PER_PACKAGE)
    throw new Error(`package.json declares ${entries.length} drivers (at most ${MAX_DRIVERS_PER_PACKAGE})`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (typeof v !== 'string') throw new Error(`package.json: driver '${printable(k)}' must map to "./module.js#export"`);
    out[k] = v;
  }
  return out;
}

// ---- listings and help -------------------------------------------------------

/** admin.pool.ListDrivers payload: `DRIVER OPT OPT...\n` per driver. */
export function formatListDrivers(list: readonly DriverListing[]): string {
  return list.map((d) => [d.name, ...d.options].join(' ') + '\n').join('');
}

function formatDefault(v: OptionValue): string {
  return typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v);
}

/** Help for one driver, from its declarations. */
export function driverHelp(d: StorageDriver): string {
  const lines = [`${d.name}: ${d.description}`];
  const caps = d.capabilities;
  lines.push(
    `  volume kinds: ${caps.volumeKinds.join(', ') || 'none'}; ${caps.writable ? 'writable' : 'read-only'}` +
      `${caps.remote ? '; remote' : ''}; revisions: ${caps.maxRevisions === Infinity ? 'unbounded' : caps.maxRevisions}` +
      (caps.writable ? `; ${canShrink(caps) ? 'can shrink (the old data kept as a revision)' : 'cannot shrink'}` : ''),
  );
  if (d.options.length === 0) lines.push('  (no options)');
  const width = Math.max(0, ...d.options.map((o) => o.name.length));
  for (const o of d.options) {
    const facts: string[] = [o.type];
    if (o.required) facts.push('required');
    if (o.default !== undefined) facts.push(`default ${formatDefault(o.default)}`);
    if (o.mutable) facts.push('can be changed later');
    lines.push(`  ${o.name.padEnd(width)}  ${o.help} (${facts.join(', ')})`);
  }
  return lines.join('\n') + '\n';
}

// ---- small helpers -----------------------------------------------------------

function describeOrigin(o: DriverOrigin): string {
  switch (o.kind) {
    case 'builtin':
      return 'built in';
    case 'given':
      return 'registered by the program';
    case 'package':
      return `from package ${o.package}`;
  }
}

function describeValue(v: unknown): string {
  return typeof v === 'string' ? `'${printable(v)}'` : v === null ? 'null' : typeof v;
}
