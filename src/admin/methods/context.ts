/**
 * What every admin method works on, and the checks they share. Method files
 * (pools.ts, volumes.ts, domains.ts, ...) each export a function
 * `(ctx: MethodContext) => MethodTable`; index.ts joins them.
 */
import type { QubesApp } from '../../domain/app.js';
import type { Domain } from '../../domain/domain.js';
import type { DriverRegistry } from '../../registry/drivers.js';
import { PermissionDenied, ProtocolError, QubesVMNotFoundError } from '../../storage/errors.js';
import type { Volume } from '../../storage/volume.js';
import type { CallContext } from '../dispatch.js';
import type { EventBus } from '../events.js';

export interface MethodContext {
  readonly app: QubesApp;
  readonly registry: DriverRegistry;
  readonly bus: EventBus;
}

/** Global calls (pools, labels, global properties) go to dom0. */
export function requireDom0(call: CallContext): void {
  if (call.dest !== 'dom0') throw new PermissionDenied(`${call.method} is a global call: its destination must be dom0`);
}

export function requireNoArg(call: CallContext): void {
  if (call.arg !== '') throw new PermissionDenied(`${call.method} takes no argument`);
}

export function requireArg(call: CallContext): string {
  if (call.arg === '') throw new PermissionDenied(`${call.method} needs an argument`);
  return call.arg;
}

export function requireNoPayload(call: CallContext & { payload: Buffer }): void {
  if (call.payload.length !== 0) throw new ProtocolError(`${call.method} takes no payload`);
}

/** The destination domain (a name or uuid:UUID); QubesVMNotFoundError if none. */
export function destDomain(ctx: MethodContext, call: CallContext): Domain {
  try {
    return ctx.app.domain(call.dest);
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
export function destVolume(ctx: MethodContext, call: CallContext): { domain: Domain; volume: Volume } {
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
