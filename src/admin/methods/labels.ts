/**
 * admin.label.List|Get|Index (DEST dom0). Facts from qubes-core-admin
 * `qubes/api/admin.py`:
 * - List: `NAME\n` per label, by index;
 * - Get+LABEL: the colour, `0xRRGGBB` (no newline);
 * - Index+LABEL: the index in decimal (no newline);
 * a label is named by its name or its index in digits; an unknown one is
 * QubesValueError (the reference turns its lookup failure into that).
 * admin.label.Create / Remove are not served: the App keeps the labels of
 * the state file and has no operation to change them.
 */
import { QubesLabelNotFoundError, QubesValueError } from '../../storage/errors.js';
import { method, type AdminCall, type MethodTable } from '../dispatch.js';
import { destDomain, requireDom0, requireNoArg, requireNoPayload, type MethodContext } from './context.js';
import { findLabel } from './properties.js';
import type { Label } from '../../domain/labels.js';

export function labelMethods(ctx: MethodContext): MethodTable {
  const global = (call: AdminCall): void => {
    destDomain(ctx, call);
    requireDom0(call);
  };
  const named = (call: AdminCall): Label => {
    global(call);
    requireNoPayload(call);
    try {
      return findLabel(ctx.app.labels.list(), call.arg, false);
    } catch (e) {
      if (e instanceof QubesLabelNotFoundError) throw new QubesValueError(e.message);
      throw e;
    }
  };
  return {
    'admin.label.List': method(async (call) => {
      global(call);
      requireNoArg(call);
      requireNoPayload(call);
      return ctx.app.labels.list().map((l) => `${l.name}\n`).join('');
    }),
    'admin.label.Get': method(async (call) => named(call).color),
    'admin.label.Index': method(async (call) => String(named(call).index)),
  };
}
