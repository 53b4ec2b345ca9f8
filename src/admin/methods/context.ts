/**
 * What every admin method works on, and the shapes and lookups they share.
 * Method files (pools.ts, volumes.ts, domains.ts, ...) each export a
 * function `(ctx: MethodContext) => MethodTable`; index.ts joins them. Each
 * method declares its shape (argument, payload, destination, scope,
 * access), which the dispatcher enforces before the method runs.
 */
import type { QubesApp } from '../../domain/app.js';
import type { Domain } from '../../domain/domain.js';
import type { DriverRegistry } from '../../registry/drivers.js';
import { PermissionDenied, QubesVMNotFoundError } from '../../storage/errors.js';
import type { Volume } from '../../storage/volume.js';
import type { CallContext } from '../dispatch.js';
import type { MethodShape } from '../method-shape.js';
import { parseDestination } from '../protocol/validate.js';
import type { EventBus } from '../events.js';

export interface MethodContext {
  readonly app: QubesApp;
  readonly registry: DriverRegistry;
  readonly bus: EventBus;
}

/** What a method file declares per method besides the destination (method-shape.ts); no argument and no payload unless given. */
export type ShapeSpec = Pick<MethodShape, 'scope' | 'access'> & Partial<Pick<MethodShape, 'arg' | 'argNames' | 'payload' | 'checkArg'>>;

/** A method about the domain DEST names (dom0 included); an unknown one is QubesVMNotFoundError before anything else. */
export function aboutDomain(ctx: MethodContext, s: ShapeSpec): MethodShape {
  return { arg: 'none', argNames: '', payload: 'none', ...s, dest: 'domain', lookupDest: domainLookup(ctx) };
}

/**
 * A global call: DEST must be dom0 (ProtocolError). With `ctx`, a DEST
 * naming no domain is QubesVMNotFoundError first, as for the domain
 * methods; the pool methods check the name only.
 */
export function globalCall(s: ShapeSpec, ctx?: MethodContext): MethodShape {
  return { arg: 'none', argNames: '', payload: 'none', ...s, dest: 'dom0', ...(ctx ? { lookupDest: domainLookup(ctx) } : {}) };
}

/** Throws QubesVMNotFoundError when `dest` (a name or uuid:UUID) names no domain. */
export function domainLookup(ctx: MethodContext): (dest: string) => void {
  return (dest) => {
    destDomain(ctx, { dest });
  };
}

/** The destination domain (a name or uuid:UUID); QubesVMNotFoundError if none, QubesVMInvalidUUIDError for a malformed uuid. */
export function destDomain(ctx: MethodContext, call: Pick<CallContext, 'dest'>): Domain {
  // A malformed uuid: destination is QubesVMInvalidUUIDError, as Qubes answers, not "not found".
  const dest = parseDestination(call.dest);
  try {
    return ctx.app.domain(dest.kind === 'uuid' ? `uuid:${dest.uuid}` : dest.name);
  } catch (e) {
    if (e instanceof QubesVMNotFoundError) throw e;
    throw new QubesVMNotFoundError(`no such domain: ${call.dest}`);
  }
}

/**
 * The destination domain's volume named by the argument. A volume the domain
 * does not have is an argument the method does not accept: PermissionDenied,
 * as the reference answers.
 */
export function destVolume(ctx: MethodContext, call: Pick<CallContext, 'dest' | 'arg'>): { domain: Domain; volume: Volume } {
  const domain = destDomain(ctx, call);
  const volume = domain.storage?.volumes.get(call.arg);
  if (!volume) throw new PermissionDenied(`domain ${domain.name} has no volume '${call.arg.slice(0, 64)}'`);
  return { domain, volume };
}

/** `True`/`False` as Qubes prints booleans. */
export function qbool(b: boolean): string {
  return b ? 'True' : 'False';
}

/** Lines of `key=value`, sorted by key, each ending in a newline. */
export function sortedKeyValues(entries: Record<string, string | number | boolean | null | undefined>): string {
  return Object.keys(entries)
    .sort()
    .filter((k) => entries[k] !== undefined)
    .map((k) => {
      const v = entries[k];
      return `${k}=${typeof v === 'boolean' ? qbool(v) : v === null ? '' : String(v)}\n`;
    })
    .join('');
}
