/**
 * Driver options declared as data (the Incus/Proxmox way): each driver lists
 * its options once; the same list validates pool creation, answers
 * admin.pool.ListDrivers and prints help.
 */
import { QubesValueError } from './errors.js';

export type OptionType = 'string' | 'path' | 'int' | 'bool';
export type OptionValue = string | number | boolean;

export interface OptionSpec {
  readonly name: string;
  readonly type: OptionType;
  readonly required?: boolean;
  readonly default?: OptionValue;
  /** May be changed after the pool was created (admin.pool.Set.*). */
  readonly mutable?: boolean;
  /** Smallest accepted value for `int` options. */
  readonly min?: number;
  /** Largest accepted value for `int` options. */
  readonly max?: number;
  readonly help: string;
}

export type PoolOptions = Record<string, OptionValue>;

/** Options every pool takes, whatever its driver. */
export const COMMON_POOL_OPTIONS: readonly OptionSpec[] = [
  {
    name: 'revisions_to_keep',
    type: 'int',
    default: 1,
    min: -1,
    mutable: true,
    help: 'revisions kept per volume by default (-1 disables snapshots)',
  },
  {
    name: 'ephemeral_volatile',
    type: 'bool',
    default: false,
    mutable: true,
    help: 'volatile volumes get a throw-away encryption key by default',
  },
];

const INT_RE = /^(0|-?[1-9][0-9]{0,15})$/;

const TRUE_WORDS: ReadonlySet<string> = new Set(['true', '1', 'yes', 'on']);
const FALSE_WORDS: ReadonlySet<string> = new Set(['false', '0', 'no', 'off']);

/**
 * The words Qubes takes for a boolean, in any case: True/1/yes/on and
 * False/0/no/off; null for anything else. Every lenient boolean (options,
 * property values, qubes.xml attributes, tool arguments) is read with it;
 * the admin API's own arguments are exactly True or False (protocol/validate.ts).
 */
export function boolFromWord(word: string): boolean | null {
  const w = word.toLowerCase();
  if (TRUE_WORDS.has(w)) return true;
  if (FALSE_WORDS.has(w)) return false;
  return null;
}

/** Parses True/False the way Qubes writes them, plus the usual spellings; blank is False. */
export function parseBool(raw: string, what: string): boolean {
  const v = raw.trim();
  const b = v === '' ? false : boolFromWord(v);
  if (b === null) throw new QubesValueError(`${what}: expected True or False, got '${raw}'`);
  return b;
}

export function parseInt10(raw: string, what: string): number {
  if (!INT_RE.test(raw)) throw new QubesValueError(`${what}: expected an integer, got '${raw}'`);
  return Number(raw);
}

function convert(spec: OptionSpec, raw: OptionValue, where: string): OptionValue {
  const what = `${where}: option ${spec.name}`;
  switch (spec.type) {
    case 'bool':
      return typeof raw === 'boolean' ? raw : parseBool(String(raw), what);
    case 'int': {
      const n = typeof raw === 'number' ? raw : parseInt10(String(raw), what);
      if (!Number.isSafeInteger(n)) throw new QubesValueError(`${what}: expected an integer, got '${raw}'`);
      if (spec.min !== undefined && n < spec.min)
        throw new QubesValueError(`${what}: must be at least ${spec.min}, got ${n}`);
      if (spec.max !== undefined && n > spec.max)
        throw new QubesValueError(`${what}: must be at most ${spec.max}, got ${n}`);
      return n;
    }
    case 'path':
    case 'string': {
      const s = String(raw);
      if (s.includes('\0')) throw new QubesValueError(`${what}: contains a NUL byte`);
      if (spec.required && s === '') throw new QubesValueError(`${what}: must not be empty`);
      if (spec.type === 'path' && s !== '' && !s.startsWith('/'))
        throw new QubesValueError(`${what}: must be an absolute path, got '${s}'`);
      return s;
    }
  }
}

/**
 * Validates raw options (strings from storage.conf or the admin API, or typed
 * values) against the declaration: unknown keys, missing required keys and
 * wrong types are refused with an error naming the key. Defaults fill gaps.
 */
export function parseOptions(
  specs: readonly OptionSpec[],
  raw: Record<string, OptionValue>,
  where: string,
): PoolOptions {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const out: PoolOptions = {};
  for (const [key, value] of Object.entries(raw)) {
    const spec = byName.get(key);
    if (!spec) {
      const known = specs.map((s) => s.name).join(', ');
      throw new QubesValueError(`${where}: unknown option '${key}' (known: ${known})`);
    }
    out[key] = convert(spec, value, where);
  }
  for (const spec of specs) {
    if (key(out, spec.name)) continue;
    if (spec.required) throw new QubesValueError(`${where}: missing required option '${spec.name}'`);
    if (spec.default !== undefined) out[spec.name] = spec.default;
  }
  return out;
}

/** Checks a change of options after creation: only mutable keys may change. */
export function checkOptionChange(
  specs: readonly OptionSpec[],
  current: PoolOptions,
  changes: Record<string, OptionValue>,
  where: string,
): PoolOptions {
  const merged = parseOptions(specs, { ...current, ...changes }, where);
  for (const name of Object.keys(changes)) {
    const spec = specs.find((s) => s.name === name)!;
    if (!spec.mutable && merged[name] !== current[name])
      throw new QubesValueError(`${where}: option '${name}' cannot be changed after the pool was created`);
  }
  return merged;
}

function key(o: object, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}
