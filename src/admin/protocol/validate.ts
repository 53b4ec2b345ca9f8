/**
 * Validation of untrusted request fields, per the rules of the reference
 * daemon. Pure functions; each throws the error class a Qubes client expects:
 * - malformed wire values (numbers, booleans, pool and revision names,
 *   payload syntax, unknown payload keys) -> ProtocolError;
 * - a number out of the method's range, a bad domain name -> QubesValueError;
 * - a `uuid:` destination that is not a well-formed UUID -> QubesVMInvalidUUIDError (as Qubes).
 */
import { domainNameProblem } from '../../domain/names.js';
import { ProtocolError, QubesValueError, QubesVMInvalidUUIDError } from '../../storage/errors.js';

export interface IntegerRule {
  /** Accept a leading `-` (default false). */
  readonly allowNegative?: boolean;
  readonly min?: number;
  readonly max?: number;
  /** Names the value in messages, e.g. "size". */
  readonly what?: string;
}

const DIGITS_RE = /^[0-9]+$/;

/**
 * Parses an integer: ASCII digits only, no leading zeros (except `0`), fewer
 * than 20 digits, `-` only when allowed (and not `-0`), and it must be a safe
 * integer. Accepts the raw payload bytes or a string.
 */
export function parseInteger(raw: string | Uint8Array, rule: IntegerRule = {}): number {
  const what = rule.what ?? 'number';
  let text = typeof raw === 'string' ? raw : decodeAscii(raw, what);
  let negative = false;
  if (rule.allowNegative && text.startsWith('-')) {
    negative = true;
    text = text.slice(1);
  }
  if (!DIGITS_RE.test(text)) throw new ProtocolError(`${what} must be ASCII digits only`);
  if (text.length >= 20) throw new ProtocolError(`${what} is limited to 19 decimal digits`);
  if (text.length > 1 && text.startsWith('0')) throw new ProtocolError(`${what}: leading zeros are not allowed`);
  if (negative && text === '0') throw new ProtocolError(`${what}: -0 is not allowed`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ProtocolError(`${what} is too large`);
  const value = negative ? -n : n;
  if (rule.min !== undefined && value < rule.min)
    throw new QubesValueError(`${what} must be at least ${rule.min}, got ${value}`);
  if (rule.max !== undefined && value > rule.max)
    throw new QubesValueError(`${what} must be at most ${rule.max}, got ${value}`);
  return value;
}

/** `True` or `False`, as the stock clients send booleans. */
export function parseBoolean(raw: string | Uint8Array, what = 'value'): boolean {
  const text = typeof raw === 'string' ? raw : decodeAscii(raw, what);
  if (text === 'True') return true;
  if (text === 'False') return false;
  throw new ProtocolError(`${what} must be True or False`);
}

const POOL_NAME_RE = /^[A-Za-z0-9_.-]+$/;
const REVISION_RE = /^[A-Za-z0-9:_.-]+$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isPoolName(name: string): boolean {
  return POOL_NAME_RE.test(name);
}

/** Pool names: `[A-Za-z0-9_.-]+`. */
export function validatePoolName(name: string): string {
  if (!isPoolName(name)) throw new ProtocolError(`invalid pool name ${show(name)}`);
  return name;
}

export function isRevisionId(rev: string): boolean {
  return REVISION_RE.test(rev);
}

/** Revision ids: `[A-Za-z0-9:_.-]+`. */
export function validateRevisionId(rev: string): string {
  if (!isRevisionId(rev)) throw new ProtocolError(`invalid revision id ${show(rev)}`);
  return rev;
}

/** Domain names: at most 31 characters, a letter then `[A-Za-z0-9_.-]`, not reserved, not `-dm`. */
export function validateDomainName(name: string): string {
  const problem = domainNameProblem(name);
  if (problem) throw new QubesValueError(`invalid domain name ${show(name)}: ${problem}`);
  return name;
}

export type Destination = { readonly kind: 'name'; readonly name: string } | { readonly kind: 'uuid'; readonly uuid: string };

/** Splits a destination into a name or a (lower-cased) `uuid:UUID`. */
export function parseDestination(dest: string): Destination {
  if (dest.startsWith('uuid:')) {
    const uuid = dest.slice(5);
    if (!UUID_RE.test(uuid)) throw new QubesVMInvalidUUIDError(`not a valid domain uuid: ${show(uuid)}`);
    return { kind: 'uuid', uuid: uuid.toLowerCase() };
  }
  return { kind: 'name', name: dest };
}

/** Strict ASCII text (no byte above 0x7f, no NUL). */
export function decodeAscii(bytes: Uint8Array, what = 'payload'): string {
  for (const b of bytes) {
    if (b === 0 || b > 0x7f) throw new ProtocolError(`${what} must be ASCII text`);
  }
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

/** Strict UTF-8 text (invalid sequences and NUL refused). */
export function decodeUtf8(bytes: Uint8Array, what = 'payload'): string {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ProtocolError(`${what} is not valid UTF-8`);
  }
  if (text.includes('\0')) throw new ProtocolError(`${what} contains a NUL byte`);
  return text;
}

export interface KeyValueRule {
  /** Accepted keys: a list, or a predicate (e.g. for `pool:VOLUME`). */
  readonly keys: Iterable<string> | ((key: string) => boolean);
  /** `line`: one `key=value` per line (admin.pool.Add); `space`: separated by spaces (admin.vm.Create). */
  readonly separator: 'line' | 'space';
  readonly what?: string;
}

/**
 * Parses a `key=value` payload (ASCII). Empty items are skipped; an item
 * without `=`, an empty or unknown key, or a repeated key is a ProtocolError.
 * The value is everything after the first `=`.
 */
export function parseKeyValues(payload: string | Uint8Array, rule: KeyValueRule): Record<string, string> {
  const what = rule.what ?? 'payload';
  const text = typeof payload === 'string' ? payload : decodeAscii(payload, what);
  if (typeof payload === 'string' && /[^\x01-\x7f]/.test(text)) throw new ProtocolError(`${what} must be ASCII text`);
  const allowed =
    typeof rule.keys === 'function' ? rule.keys : ((set: Set<string>) => (k: string) => set.has(k))(new Set(rule.keys));
  const result = Object.create(null) as Record<string, string>;
  const items = rule.separator === 'line' ? text.split('\n') : text.split(' ');
  for (const item of items) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    if (eq < 1) throw new ProtocolError(`${what}: expected key=value, got ${show(item)}`);
    const key = item.slice(0, eq);
    if (!allowed(key)) throw new ProtocolError(`${what}: unknown key ${show(key)}`);
    if (Object.hasOwn(result, key)) throw new ProtocolError(`${what}: key ${show(key)} given twice`);
    result[key] = item.slice(eq + 1);
  }
  return result;
}

function show(s: string): string {
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s);
}
