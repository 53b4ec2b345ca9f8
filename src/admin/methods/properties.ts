/**
 * admin.vm.property.* (DEST a domain, dom0 included) and admin.property.*
 * (DEST dom0: the global settings), answered generically from the property
 * declarations (src/domain/properties.ts). Changes go through the App.
 *
 * Reply formats (facts from qubes-core-admin `qubes/api/admin.py` and the
 * parser in qubes-core-admin-client `qubesadmin/base.py`):
 * - List: `NAME\n` per property, sorted.
 * - Get+NAME: `default=True|False type=T VALUE` (no newline), T one of
 *   `str int bool vm label`; no value: empty VALUE (the space stays).
 * - GetAll: `NAME default=... type=T VALUE\n` per property, sorted, with
 *   `\` written `\\` and a newline `\n` inside each line.
 * - GetDefault+NAME: `type=T VALUE`, or an empty reply when the property
 *   has no default.
 * - Help+NAME: the help text.
 * - Set+NAME (payload: the value), Reset+NAME: empty reply.
 * An unknown NAME (also an empty one) is QubesNoSuchPropertyError. Reset of
 * a property without a default (label) is QubesPropertyValueError.
 *
 * Set checks the payload per type the way the reference sanitizes it: ASCII
 * only (else QubesValueError); str: printable ASCII and whitespace only;
 * int: an optionally signed decimal, blanks around allowed; bool: (any case)
 * true/false, yes/no, on/off, 1/0; vm: empty for None, else a valid domain
 * name of an existing domain (else QubesPropertyValueError, as Qubes);
 * label: a label name, `label-N` or its index (QubesLabelNotFoundError).
 * Context checks (class of a template, pool exists, halted-only, ...) are
 * the App's and fail with QubesPropertyValueError / QubesVMNotHaltedError.
 */
import type { PropertyTarget } from '../../domain/app.js';
import type { Label } from '../../domain/labels.js';
import { domainNameProblem } from '../../domain/names.js';
import { propertyText, type PropValue, type PropType } from '../../domain/properties.js';
import {
  QubesLabelNotFoundError,
  QubesNoSuchPropertyError,
  QubesPropertyValueError,
  QubesValueError,
} from '../../storage/errors.js';
import { boolFromWord } from '../../storage/options.js';
import { printable } from '../../storage/volume.js';
import { method, type AdminCall, type MethodTable } from '../dispatch.js';
import { aboutDomain, destDomain, globalCall, type MethodContext, type ShapeSpec } from './context.js';
import type { MethodShape } from '../method-shape.js';

/** The `default=... type=T VALUE` text of admin.*.property.Get. */
export function propertyGetText(target: PropertyTarget, name: string): string {
  const r = target.readProperty(name);
  return `default=${r.isDefault ? 'True' : 'False'} type=${r.type} ${propertyText(r.value)}`;
}

/** The `type=T VALUE` text of GetDefault, or '' when there is no default. */
export function propertyDefaultText(target: PropertyTarget, name: string): string {
  const dflt = target.propertyDefault(name);
  if (dflt === undefined) return '';
  return `type=${target.propertyDef(name).type} ${propertyText(dflt)}`;
}

/** GetAll: one escaped line per property (of those in `only`, when given). */
export function propertyGetAllText(target: PropertyTarget, only?: ReadonlySet<string>): string {
  const names = target.propertyNames();
  return (only ? names.filter((n) => only.has(n)) : names)
    .map((n) => `${n} ${propertyGetText(target, n).replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n`)
    .join('');
}

export function propertyMethods(ctx: MethodContext): MethodTable {
  const { app } = ctx;
  const table: MethodTable = {};

  type Kind = [prefix: string, shape: (s: Omit<ShapeSpec, 'scope'>) => MethodShape, target: (call: Pick<AdminCall, 'dest'>) => PropertyTarget];
  const kinds: Kind[] = [
    ['admin.vm.property', (s) => aboutDomain(ctx, { ...s, scope: 'local' }), (call) => destDomain(ctx, call)],
    ['admin.property', (s) => globalCall({ ...s, scope: 'global' }, ctx), () => app.globals],
  ];

  for (const [prefix, shape, targetOf] of kinds) {
    /** The target and the property named by the argument. */
    const named = (call: Pick<AdminCall, 'dest' | 'arg'>): { target: PropertyTarget; name: string } => {
      const target = targetOf(call);
      if (!target.hasProperty(call.arg))
        throw new QubesNoSuchPropertyError(`${target.holderName} has no property '${printable(call.arg)}'`);
      return { target, name: call.arg };
    };
    // Any argument: an empty or unknown name is QubesNoSuchPropertyError, as the reference answers.
    const onProperty = (s: Pick<ShapeSpec, 'access' | 'payload'>) =>
      shape({ ...s, arg: 'any', argNames: 'property', checkArg: (h) => { named(h); } });

    table[`${prefix}.List`] = method(shape({ access: 'read' }), async (call) => {
      return targetOf(call).propertyNames().map((n) => `${n}\n`).join('');
    });

    table[`${prefix}.Get`] = method(onProperty({ access: 'read' }), async (call) => {
      const { target, name } = named(call);
      return propertyGetText(target, name);
    });

    table[`${prefix}.GetAll`] = method(shape({ access: 'read' }), async (call) => {
      return propertyGetAllText(targetOf(call));
    });

    table[`${prefix}.GetDefault`] = method(onProperty({ access: 'read' }), async (call) => {
      const { target, name } = named(call);
      return propertyDefaultText(target, name);
    });

    table[`${prefix}.Help`] = method(onProperty({ access: 'read' }), async (call) => {
      const { target, name } = named(call);
      return target.propertyDef(name).help;
    });

    table[`${prefix}.Set`] = method(onProperty({ access: 'write', payload: 'bounded' }), async (call) => {
      const { target, name } = named(call);
      const value = sanitizeValue(ctx, target.propertyDef(name).type, call.payload);
      await app.setProperty(target, name, value);
    });

    table[`${prefix}.Reset`] = method(onProperty({ access: 'write' }), async (call) => {
      const { target, name } = named(call);
      // A property without a default (label) would be left without a value:
      // the App allows that, a domain without a label is not something the
      // clients expect, so it is refused here.
      const def = target.propertyDef(name);
      if (!def.computed && !def.writeOnce && target.propertyDefault(name) === undefined)
        throw new QubesPropertyValueError(`${target.holderName}: property ${name} has no default and cannot be reset`);
      await app.resetProperty(target, name);
    });
  }
  return table;
}

const PRINTABLE_RE = /^[\x20-\x7e\t\n\r\x0b\x0c]*$/;
const INT_RE = /^\s*[+-]?[0-9]+\s*$/;

/** Turns an untrusted Set payload into a typed value, as the reference sanitizes it. */
export function sanitizeValue(ctx: MethodContext, type: PropType, payload: Uint8Array): PropValue {
  const text = asciiValue(payload);
  switch (type) {
    case 'bool': {
      const b = boolFromWord(text);
      if (b === null) throw new QubesValueError(`Invalid literal for boolean property: '${printable(text)}'`);
      return b;
    }
    case 'int': {
      if (!INT_RE.test(text)) throw new QubesValueError(`Invalid literal for integer property: '${printable(text)}'`);
      const n = Number(text.trim());
      if (!Number.isSafeInteger(n)) throw new QubesValueError(`integer out of range: '${printable(text)}'`);
      return n;
    }
    case 'vm': {
      if (text === '') return null;
      // QubesPropertyValueError, not QubesVMNotFoundError: the stock client
      // turns the latter into "Failed to access property" (Qubes answers so
      // since qubes-core-admin PR 571).
      const problem = domainNameProblem(text);
      if (problem) throw new QubesPropertyValueError(`invalid domain name '${printable(text)}': ${problem}`);
      if (!ctx.app.findDomain(text)) throw new QubesPropertyValueError(`no such domain: '${printable(text)}'`);
      return text;
    }
    case 'label': {
      if (!PRINTABLE_RE.test(text)) throw new QubesValueError('Invalid characters in property value');
      return findLabel(ctx.app.labels.list(), text, true).name;
    }
    case 'str':
      if (!PRINTABLE_RE.test(text)) throw new QubesValueError('Invalid characters in property value');
      return text;
  }
}

/**
 * A label by name, by index given as digits, or (`withId`) by `label-N`;
 * QubesLabelNotFoundError if none.
 */
export function findLabel(labels: readonly Label[], spec: string, withId: boolean): Label {
  const byName = labels.find((l) => l.name === spec);
  if (byName) return byName;
  const m = /^[0-9]{1,9}$/.test(spec) ? spec : withId ? /^label-([0-9]{1,9})$/.exec(spec)?.[1] : undefined;
  const byIndex = m === undefined ? undefined : labels.find((l) => l.index === Number(m));
  if (byIndex) return byIndex;
  throw new QubesLabelNotFoundError(`no such label '${printable(spec)}'`);
}

function asciiValue(payload: Uint8Array): string {
  for (const b of payload) if (b > 0x7f) throw new QubesValueError('property value must be ASCII');
  return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('latin1');
}
