/**
 * admin.pool.*: the pools of the App (list, drivers, info, usage, add,
 * remove, the two mutable options) and the volumes a pool holds. Global
 * calls: the destination must be dom0 (its name only is checked: an unknown
 * destination is ProtocolError here, as Qubes). A pool argument that names no pool
 * is an argument the method does not accept: PermissionDenied, as the
 * reference answers.
 */
import { PermissionDenied, ProtocolError, QubesValueError } from '../../storage/errors.js';
import type { Pool } from '../../storage/pool.js';
import { formatListDrivers } from '../../registry/drivers.js';
import { method, type AdminCall, type MethodTable } from '../dispatch.js';
import { parseBoolean, parseInteger, parseKeyValues, validatePoolName } from '../protocol/validate.js';
import { globalCall, sortedKeyValues, type MethodContext, type ShapeSpec } from './context.js';

/** Option names as admin.pool.Add accepts them on the wire (the driver then checks them). */
const OPTION_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** The pool named by the argument; PermissionDenied when there is none. */
export function argPool(ctx: MethodContext, call: Pick<AdminCall, 'arg'>): Pool {
  const name = validatePoolName(call.arg);
  if (!ctx.app.hasPool(name)) throw new PermissionDenied(`no such pool '${name}'`);
  return ctx.app.pool(name);
}

/**
 * admin.pool.Info text: the configuration (name, driver, options with their
 * defaults, revisions_to_keep, ephemeral_volatile) as sorted `key=value`
 * lines, booleans True/False; then `size=` and `usage=` when the pool knows
 * them; then `included_in=` when the pool lies inside another pool.
 */
export async function poolInfoText(ctx: MethodContext, pool: Pool): Promise<string> {
  const config: Record<string, string | number | boolean> = {
    ...pool.config(),
    revisions_to_keep: pool.revisions_to_keep,
    ephemeral_volatile: pool.ephemeral_volatile,
  };
  let text = sortedKeyValues(config);
  const [size, usage] = await Promise.all([pool.size(), pool.usage()]);
  if (size !== null) text += `size=${size}\n`;
  if (usage !== null) text += `usage=${usage}\n`;
  const outer = await pool.includedIn(ctx.app.pools().filter((p) => p !== pool));
  if (outer) text += `included_in=${outer.name}\n`;
  return text;
}

export function poolMethods(ctx: MethodContext): MethodTable {
  const { app } = ctx;
  /** A global call on the pool its argument names. */
  const onPool = (s: Pick<ShapeSpec, 'access' | 'payload'>) =>
    globalCall({ ...s, scope: 'global', arg: 'required', argNames: 'pool', checkArg: (h) => { argPool(ctx, h); } });
  const addShape = globalCall({ scope: 'global', access: 'write', arg: 'required', argNames: 'driver', payload: 'bounded' });
  return {
    'admin.pool.List': method(globalCall({ scope: 'global', access: 'read' }), async () => {
      return app.poolNames().map((n) => `${n}\n`).join('');
    }),

    'admin.pool.ListDrivers': method(globalCall({ scope: 'global', access: 'read' }), async () => {
      return formatListDrivers(ctx.registry.listDrivers());
    }),

    'admin.pool.Info': method(onPool({ access: 'read' }), async (call) => {
      return poolInfoText(ctx, argPool(ctx, call));
    }),

    'admin.pool.UsageDetails': method(onPool({ access: 'read' }), async (call) => {
      return sortedKeyValues(await argPool(ctx, call).usageDetails());
    }),

    'admin.pool.Add': method(addShape, async (call) => {
      const driver = call.arg;
      // Unknown (or broken) driver: the registry's error names it and the known ones.
      const declared = ctx.registry.get(driver);
      const raw = parseKeyValues(call.payload, {
        keys: (k) => OPTION_KEY_RE.test(k),
        separator: 'line',
        what: 'pool configuration',
      });
      const name = raw['name'];
      // A malformed request, as Qubes' check of the payload answers.
      if (name === undefined) throw new ProtocolError(`admin.pool.Add: missing required option 'name'`);
      validatePoolName(name);
      delete raw['name'];
      // Checked here too (the App's check is the same) so that nothing is made for a bad request.
      const known = new Set(declared.options.map((o) => o.name));
      const unknown = Object.keys(raw).filter((k) => !known.has(k));
      if (unknown.length)
        throw new QubesValueError(
          `pool ${name}: driver ${driver} has no option ${unknown.map((k) => `'${k}'`).join(', ')} (known: ${[...known].join(', ')})`,
        );
      for (const o of declared.options)
        if (o.required && raw[o.name] === undefined)
          throw new QubesValueError(`pool ${name}: driver ${driver} requires option '${o.name}', which is missing`);
      await app.addPool(driver, name, raw);
    }),

    'admin.pool.Remove': method(onPool({ access: 'write' }), async (call) => {
      await app.removePool(argPool(ctx, call).name);
    }),

    'admin.pool.Set.revisions_to_keep': method(onPool({ access: 'write', payload: 'bounded' }), async (call) => {
      const pool = argPool(ctx, call);
      const n = parseInteger(call.payload, { allowNegative: true, min: -1, what: 'revisions_to_keep' });
      await app.setPoolOption(pool.name, 'revisions_to_keep', n);
    }),

    'admin.pool.Set.ephemeral_volatile': method(onPool({ access: 'write', payload: 'bounded' }), async (call) => {
      const pool = argPool(ctx, call);
      const v = parseBoolean(call.payload, 'ephemeral_volatile');
      await app.setPoolOption(pool.name, 'ephemeral_volatile', v);
    }),

    'admin.pool.volume.List': method(onPool({ access: 'read' }), async (call) => {
      const vids = await ctx.app.poolVolumeList(argPool(ctx, call).name);
      return vids.length ? `${vids.join('\n')}\n` : '';
    }),
  };
}
