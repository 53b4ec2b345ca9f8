/**
 * Every admin method of the daemon, in one table: pools, volumes, domains
 * and admin.Events. Each part is a function of the shared MethodContext.
 */
import type { MethodTable } from '../dispatch.js';
import { adminEventsMethod } from '../events.js';
import { domainLookup, type MethodContext } from './context.js';
import { domainMethods } from './domains.js';
import { poolMethods } from './pools.js';
import { volumeMethods, type VolumeMethodsOptions } from './volumes.js';

export type { MethodContext } from './context.js';
export { domainMethods } from './domains.js';
export { poolMethods } from './pools.js';
export { volumeMethods, type VolumeMethodsOptions } from './volumes.js';
export { internalMethods, type InternalMethods, type InternalMethodsOptions } from './internal.js';

export interface AllMethodsOptions {
  readonly volumes?: VolumeMethodsOptions;
}

export function allMethods(ctx: MethodContext, opts: AllMethodsOptions = {}): MethodTable {
  return {
    ...domainMethods(ctx),
    ...poolMethods(ctx),
    ...volumeMethods(ctx, opts.volumes),
    'admin.Events': adminEventsMethod(ctx.bus, { checkDest: domainLookup(ctx) }),
  };
}
