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
 */
import { readFile } from 'node:fs/promises';

export interface PolicyRule {
  readonly source: string;
  /** Matched against `METHOD` alone, or against `METHOD+ARG` when it contains `+`. */
  readonly method: string;
  readonly dest: string;
  /** Line in the policy text, for messages. */
  readonly line: number;
}

export interface AccessPolicy {
  readonly rules: readonly PolicyRule[];
  /** Where it came from (file path), for logs. */
  readonly origin: string;
}

export interface PolicyQuery {
  readonly source: string;
  readonly method: string;
  readonly arg: string;
  readonly dest: string;
}

/** A policy text that cannot be parsed; names the line. */
export class PolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyError';
  }
}

const FIELD_RE = /^[A-Za-z0-9_.:+@*-]+$/;

/**
 * Used when no policy file is given: the admin domain may call everything,
 * every other source nothing (as Qubes' default policy denies what it does
 * not allow).
 */
export const DEFAULT_POLICY: AccessPolicy = {
  rules: [{ source: 'dom0', method: '*', dest: '*', line: 0 }],
  origin: 'the default policy (no policy file: only dom0 may call)',
};

export function parsePolicy(text: string, origin = 'policy'): AccessPolicy {
  const rules: PolicyRule[] = [];
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
    const [source, method, dest = '*'] = fields as [string, string, string?];
    rules.push({ source, method, dest, line });
  });
  return { rules, origin };
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
      matchPattern(r.method, r.method.includes('+') ? methodArg : q.method) &&
      matchPattern(r.dest, q.dest),
  );
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
