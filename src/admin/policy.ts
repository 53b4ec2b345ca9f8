/**
 * Optional access policy of the admin daemon: which calling domain (SOURCE)
 * may call which methods, on which destinations. Format (see README.md):
 *
 *   # SOURCE   METHOD[+ARG]          [DEST]
 *   dom0       *
 *   mgmt       admin.pool.List
 *   mgmt       admin.vm.volume.*     work
 *
 * `*` matches any run of characters in any field. Rules only allow; a call
 * that matches no rule is denied. Without a policy file, DEFAULT_POLICY
 * applies: only dom0 may call.
 *
 * A second line form lets a non-root local user relay calls for other
 * domains (name a SOURCE other than dom0 in the header), as root may:
 *
 *   @relay     uid:1000              mgmt*
 *
 * A method field may also name a class of methods by their declaration
 * (method-shape.ts), as Qubes' include files admin-local-ro, ... do:
 *
 *   mgmt       @admin-local-rwx      work
 */
import { readFile } from 'node:fs/promises';
import { inPolicyClass, POLICY_CLASSES, type MethodShape, type PolicyClass } from './method-shape.js';

export interface PolicyRule {
  readonly source: string;
  /**
   * Matched against `METHOD` alone, or against `METHOD+ARG` when it
   * contains `+`; `@admin-SCOPE-ro|rwx` matches the methods of that class.
   */
  readonly method: string;
  readonly dest: string;
  /** Line in the policy text, for messages. */
  readonly line: number;
}

/** `@relay uid:N SOURCE`: the local user N may name SOURCE (a pattern) as the caller. */
export interface RelayRule {
  readonly uid: number;
  readonly source: string;
  readonly line: number;
}

export interface AccessPolicy {
  readonly rules: readonly PolicyRule[];
  /** Who besides root may name a source other than dom0 (see mayRelay). */
  readonly relays: readonly RelayRule[];
  /** Where it came from (file path), for logs. */
  readonly origin: string;
}

export interface PolicyQuery {
  readonly source: string;
  readonly method: string;
  readonly arg: string;
  readonly dest: string;
  /** The called method's declaration, when the table has one: class rules match only declared methods. */
  readonly shape?: Pick<MethodShape, 'scope' | 'access'> | undefined;
}

/** A policy text that cannot be parsed; names the line. */
export class PolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyError';
  }
}

const FIELD_RE = /^[A-Za-z0-9_.:+@*-]+$/;
const UID_RE = /^uid:(0|[1-9][0-9]{0,9})$/;

/**
 * Used when no policy file is given: the admin domain may call everything,
 * every other source nothing (as Qubes' default policy denies what it does
 * not allow). No relays: only root may name another source, and then only
 * to be refused here.
 */
export const DEFAULT_POLICY: AccessPolicy = {
  rules: [{ source: 'dom0', method: '*', dest: '*', line: 0 }],
  relays: [],
  origin: 'the default policy (no policy file: only dom0 may call)',
};

export function parsePolicy(text: string, origin = 'policy'): AccessPolicy {
  const rules: PolicyRule[] = [];
  const relays: RelayRule[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const hash = raw.indexOf('#');
    const body = (hash < 0 ? raw : raw.slice(0, hash)).trim();
    if (body === '') return;
    const fields = body.split(/[ \t]+/);
    if (fields.length < 2 || fields.length > 3)
      throw new PolicyError(`${origin}:${line}: expected SOURCE METHOD [DEST], got ${fields.length} fields`);
    for (const f of fields) {
      if (!FIELD_RE.test(f)) throw new PolicyError(`${origin}:${line}: bad pattern ${JSON.stringify(f)}`);
    }
    // Domain names never start with `@`, so the keyword cannot be a SOURCE.
    if (fields[0]!.startsWith('@')) {
      const uid = fields[1] === undefined ? null : UID_RE.exec(fields[1]);
      if (fields[0] !== '@relay' || fields.length !== 3 || !uid || Number(uid[1]) > 0xffffffff)
        throw new PolicyError(`${origin}:${line}: expected @relay uid:N SOURCE, got ${JSON.stringify(body)}`);
      relays.push({ uid: Number(uid[1]), source: fields[2]!, line });
      return;
    }
    const [source, method, dest = '*'] = fields as [string, string, string?];
    if (method.startsWith('@') && !isPolicyClass(method.slice(1)))
      throw new PolicyError(
        `${origin}:${line}: unknown method class ${JSON.stringify(method)} (known: ${POLICY_CLASSES.map((c) => `@${c}`).join(', ')})`,
      );
    rules.push({ source, method, dest, line });
  });
  return { rules, relays, origin };
}

export async function loadPolicy(path: string): Promise<AccessPolicy> {
  return parsePolicy(await readFile(path, 'utf8'), path);
}

/** The first rule allowing the call, or undefined (denied). */
export function findAllowingRule(policy: AccessPolicy, q: PolicyQuery): PolicyRule | undefined {
  const methodArg = q.arg === '' ? q.method : `${q.method}+${q.arg}`;
  return policy.rules.find(
    (r) =>
      matchPattern(r.source, q.source) &&
      (r.method.startsWith('@')
        ? q.shape !== undefined && inPolicyClass(q.shape, r.method.slice(1) as PolicyClass)
        : matchPattern(r.method, r.method.includes('+') ? methodArg : q.method)) &&
      matchPattern(r.dest, q.dest),
  );
}

function isPolicyClass(name: string): name is PolicyClass {
  return (POLICY_CLASSES as readonly string[]).includes(name);
}

/** Whether the local user `uid` (not root) may name `source` as the calling domain. */
export function mayRelay(policy: AccessPolicy, uid: number, source: string): boolean {
  return policy.relays.some((r) => r.uid === uid && matchPattern(r.source, source));
}

export function isAllowed(policy: AccessPolicy, q: PolicyQuery): boolean {
  return findAllowingRule(policy, q) !== undefined;
}

/** Glob match where `*` is any run of characters and everything else is literal. */
export function matchPattern(pattern: string, value: string): boolean {
  if (!pattern.includes('*')) return pattern === value;
  const parts = pattern.split('*');
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (value.length < first.length + last.length) return false;
  if (!value.startsWith(first) || !value.endsWith(last)) return false;
  let pos = first.length;
  const end = value.length - last.length;
  for (const mid of parts.slice(1, -1)) {
    const at = value.indexOf(mid, pos);
    if (at < 0 || at + mid.length > end) return false;
    pos = at + mid.length;
  }
  return true;
}
