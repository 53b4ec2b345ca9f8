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
import { globalCall, type MethodContext } from './context.js';
import { findLabel } from './properties.js';
import type { Label } from '../../domain/labels.js';

export function labelMethods(ctx: MethodContext): MethodTable {
  const named = (call: AdminCall): Label => {
    try {
      return findLabel(ctx.app.labels.list(), call.arg, false);
    } catch (e) {
      if (e instanceof QubesLabelNotFoundError) throw new QubesValueError(e.message);
      throw e;
    }
  };
  // Any argument: an empty or unknown label is the lookup's QubesValueError.
  const onLabel = globalCall({ scope: 'global', access: 'read', arg: 'any', argNames: 'label (name or index)' }, ctx);
  return {
    'admin.label.List': method(globalCall({ scope: 'global', access: 'read' }, ctx), async () => {
      return ctx.app.labels.list().map((l) => `${l.name}\n`).join('');
    }),
    'admin.label.Get': method(onLabel, async (call) => named(call).color),
    'admin.label.Index': method(onLabel, async (call) => String(named(call).index)),
  };
}
