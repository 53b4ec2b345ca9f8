/**
 * What a method declares about itself in the method table, as Qubes
 * declares it on each API method (`@qubes.api.method(name, no_payload=...,
 * scope=..., read=/write=/execute=...)` in qubes-core-admin): the argument,
 * the payload, the destination, and its policy class (scope and access).
 *
 * The dispatcher enforces the argument, payload and destination before the
 * method runs (`checkShape`), so methods hold no such checks; the policy
 * matches method classes (`@admin-local-ro`, ...) against scope and access;
 * the method list in README.md is generated from the same declarations.
 */
import { ProtocolError } from '../storage/errors.js';
import type { RequestHeader } from './protocol/header.js';

/**
 * The argument after `+`: `none` refuses one, `required` refuses an empty
 * one (both ProtocolError, as Qubes' `wants_arg` check); `any` lets every value through, the empty one included, and
 * the method judges it (an unknown property, a tag with bad characters).
 */
export type ArgRule = 'none' | 'required' | 'any';

/**
 * `none`: must be empty (ProtocolError). `bounded`: buffered, at most 64 KiB
 * with the header, parsed by the method. `streaming`: read as a stream, no
 * limit (imports). An events method's payload is not read at all: its
 * stream starts after the header, so it declares `none`.
 */
export type PayloadRule = 'none' | 'bounded' | 'streaming';

/**
 * `dom0`: a global call, the destination must be dom0 (ProtocolError, as Qubes).
 * `domain`: about one domain (dom0 included), which must exist
 * (QubesVMNotFoundError, through `lookupDest`). `any`: not checked (a table
 * without domains, such as the tests' echo methods).
 */
export type DestRule = 'dom0' | 'domain' | 'any';

/** Qubes' policy scope: `global` (the system: pools, labels, creating and listing domains) or `local` (one domain). */
export type Scope = 'global' | 'local';

/** Qubes' classifier: reads, changes persistent state, or acts (start, stop). */
export type Access = 'read' | 'write' | 'execute';

export interface MethodShape {
  readonly arg: ArgRule;
  /** What the argument names (`volume`, `pool`, ...), for the method list; empty for `none`. */
  readonly argNames: string;
  readonly payload: PayloadRule;
  readonly dest: DestRule;
  readonly scope: Scope;
  readonly access: Access;
  /**
   * Throws QubesVMNotFoundError when the destination names no domain; run
   * first, before the other checks. Required for `dest: 'domain'`; a global
   * method may have one too (then an unknown name is QubesVMNotFoundError
   * rather than ProtocolError, as for admin.vmclass.List).
   */
  readonly lookupDest?: (dest: string) => void | Promise<void>;
  /**
   * Throws when the argument names nothing the method knows (no such pool,
   * volume or property, characters a tag cannot have); run after the
   * presence check and before the payload check. The method may look the
   * named thing up again: a lookup is cheap, and the handler keeps its types.
   */
  readonly checkArg?: (h: RequestHeader) => void | Promise<void>;
}

export const ARG_RULES: readonly ArgRule[] = ['none', 'required', 'any'];
export const PAYLOAD_RULES: readonly PayloadRule[] = ['none', 'bounded', 'streaming'];
export const DEST_RULES: readonly DestRule[] = ['dom0', 'domain', 'any'];
export const SCOPES: readonly Scope[] = ['global', 'local'];
export const ACCESSES: readonly Access[] = ['read', 'write', 'execute'];

/** Qubes' policy classes, one include file each there (`/etc/qubes/policy.d/include/admin-local-ro`, ...). */
export const POLICY_CLASSES = ['admin-global-ro', 'admin-global-rwx', 'admin-local-ro', 'admin-local-rwx'] as const;
export type PolicyClass = (typeof POLICY_CLASSES)[number];

/** The class a method belongs to: its scope, `ro` when it only reads, else `rwx`. */
export function policyClass(shape: Pick<MethodShape, 'scope' | 'access'>): PolicyClass {
  return `admin-${shape.scope}-${shape.access === 'read' ? 'ro' : 'rwx'}`;
}

/**
 * Whether a method of this shape is in the class a policy rule names. As in
 * Qubes (admin-local-ro includes admin-local-rwx), the `rwx` class also
 * grants the read-only methods of its scope.
 */
export function inPolicyClass(shape: Pick<MethodShape, 'scope' | 'access'>, cls: PolicyClass): boolean {
  const own = policyClass(shape);
  return own === cls || (own.endsWith('-ro') && cls === `${own.slice(0, -3)}-rwx`);
}

/**
 * Refuses a call that does not fit its method's declaration, in this order:
 * destination lookup, global destination, argument presence, what the
 * argument names, payload (`undefined`
 * for a payload that is a stream or not read). The messages are those the
 * methods gave when they checked this themselves.
 */
export async function checkShape(shape: MethodShape, h: RequestHeader, payload: Buffer | undefined): Promise<void> {
  if (shape.lookupDest) await shape.lookupDest(h.dest);
  // Qubes raises ProtocolError for these three (a client that should have known better).
  if (shape.dest === 'dom0' && h.dest !== 'dom0') throw new ProtocolError(`${h.method} is a global call: its destination must be dom0`);
  if (shape.arg === 'none' && h.arg !== '') throw new ProtocolError(`${h.method} takes no argument`);
  if (shape.arg === 'required' && h.arg === '') throw new ProtocolError(`${h.method} needs an argument`);
  if (shape.checkArg) await shape.checkArg(h);
  if (shape.payload === 'none' && payload !== undefined && payload.length !== 0) throw new ProtocolError(`${h.method} takes no payload`);
}

/** What is missing or wrong in a declaration (empty when it is complete), for the tests and the method list. */
export function shapeProblems(shape: MethodShape | undefined, kind: 'call' | 'streaming' | 'events' | 'reply-stream'): string[] {
  if (!shape) return ['no declared shape'];
  const p: string[] = [];
  if (!ARG_RULES.includes(shape.arg)) p.push(`arg ${String(shape.arg)}`);
  if (!PAYLOAD_RULES.includes(shape.payload)) p.push(`payload ${String(shape.payload)}`);
  if (!DEST_RULES.includes(shape.dest)) p.push(`dest ${String(shape.dest)}`);
  if (!SCOPES.includes(shape.scope)) p.push(`scope ${String(shape.scope)}`);
  if (!ACCESSES.includes(shape.access)) p.push(`access ${String(shape.access)}`);
  if ((shape.arg === 'none') !== (shape.argNames === '')) p.push(`argNames '${shape.argNames}' with arg ${shape.arg}`);
  if (shape.dest === 'domain' && !shape.lookupDest) p.push('dest domain without lookupDest');
  if (shape.arg === 'none' && shape.checkArg) p.push('checkArg without an argument');
  if ((shape.payload === 'streaming') !== (kind === 'streaming')) p.push(`payload ${shape.payload} for a ${kind} method`);
  if ((kind === 'events' || kind === 'reply-stream') && shape.payload !== 'none') p.push(`a ${kind} method reads no payload`);
  return p;
}
