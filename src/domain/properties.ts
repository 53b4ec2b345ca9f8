/**
 * Properties declared as data. Each holder (a domain, or the global
 * settings) lists its properties once: name, wire type (`str int bool vm
 * label`), default (a value, or a function of the holder), help text and
 * checks. The same declarations answer admin.vm.property.List, Get,
 * GetDefault, Set, Reset and Help generically, and say what is saved.
 *
 * Values in memory: `str` a string, `int` a number, `bool` a boolean, `vm`
 * a domain name or null (None), `label` a label name. A property either has
 * an explicit value (saved to the state file) or follows its default.
 * Changing values goes through the App (locks, save, events); this module
 * only parses, checks and stores.
 */
import { QubesNoSuchPropertyError, QubesPropertyValueError } from '../storage/errors.js';
import { parseBool, parseInt10 } from '../storage/options.js';
import { printable } from '../storage/volume.js';

export type PropType = 'str' | 'int' | 'bool' | 'vm' | 'label';
export type PropValue = string | number | boolean | null;

export interface PropertyDef<H = PropertyHolder> {
  readonly name: string;
  readonly type: PropType;
  readonly help: string;
  /** A value, or computed from the holder; absent: an unset property has no value. */
  readonly default?: PropValue | ((holder: H) => PropValue);
  /** Given at creation only; Set and Reset are refused afterwards. */
  readonly writeOnce?: boolean;
  /** For `vm`: whether None (empty on the wire) is allowed. */
  readonly allowNone?: boolean;
  /** Only while the domain is halted. */
  readonly haltedOnly?: boolean;
  /** Computed, never saved nor set (e.g. klass). */
  readonly computed?: (holder: H) => PropValue;
  /** Checks a new value in context (existence of a domain, a pool...); throws QubesPropertyValueError. */
  readonly check?: (holder: H, value: PropValue) => void;
  /** Smallest value for `int`. */
  readonly min?: number;
}

export interface PropertyReading {
  readonly value: PropValue;
  readonly isDefault: boolean;
  readonly type: PropType;
}

/** The wire text of a value: True/False, decimal, names, '' for None. */
export function propertyText(value: PropValue): string {
  if (value === null) return '';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  return String(value);
}

const STR_MAX = 4096;

export abstract class PropertyHolder {
  /** Explicit values. */
  protected readonly values = new Map<string, PropValue>();

  /** The declarations of this holder, by name. */
  // PropertyDef<H> takes the holder as a parameter: no narrower type fits every subclass's.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  abstract propertyDefs(): ReadonlyMap<string, PropertyDef<any>>;
  /** For messages: `domain work`, `global settings`. */
  abstract get holderName(): string;

  /** Sorted property names. */
  propertyNames(): string[] {
    return [...this.propertyDefs().keys()].sort();
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  propertyDef(name: string): PropertyDef<any> {
    const d = this.propertyDefs().get(name);
    if (!d) throw new QubesNoSuchPropertyError(`${this.holderName} has no property '${printable(name)}'`);
    return d;
  }

  hasProperty(name: string): boolean {
    return this.propertyDefs().has(name);
  }

  /** The default of a property: undefined when it has none. */
  propertyDefault(name: string): PropValue | undefined {
    const d = this.propertyDef(name);
    if (d.computed) return d.computed(this);
    if (d.default === undefined) return undefined;
    return typeof d.default === 'function' ? d.default(this) : d.default;
  }

  /** Value and whether it is the default (a property without value reads as null, default). */
  readProperty(name: string): PropertyReading {
    const d = this.propertyDef(name);
    if (!d.computed && this.values.has(name)) return { value: this.values.get(name)!, isDefault: false, type: d.type };
    return { value: this.propertyDefault(name) ?? null, isDefault: true, type: d.type };
  }

  /** The effective value. */
  prop(name: string): PropValue {
    // readProperty without its result object: names, uuids and the like are
    // read for every domain of every list.
    const d = this.propertyDef(name);
    if (!d.computed && this.values.has(name)) return this.values.get(name)!;
    return this.propertyDefault(name) ?? null;
  }

  isPropertySet(name: string): boolean {
    return this.values.has(name);
  }

  /** Names of the explicitly set properties, sorted (what is saved). */
  setPropertyNames(): string[] {
    return [...this.values.keys()].sort();
  }

  /** The explicitly set values, in no particular order (for scans over every domain). */
  setValues(): IterableIterator<[string, PropValue]> {
    return this.values.entries();
  }

  /** Parses the wire (or state file) text of a value for property `name`. */
  parseProperty(name: string, raw: string): PropValue {
    const d = this.propertyDef(name);
    const what = `${this.holderName}: property ${name}`;
    try {
      switch (d.type) {
        case 'bool':
          return parseBool(raw, what);
        case 'int':
          return parseInt10(raw.trim(), what);
        case 'vm':
          return raw === '' || raw === 'None' ? null : raw;
        case 'label':
        case 'str':
          return raw;
      }
    } catch (e) {
      throw new QubesPropertyValueError((e as Error).message);
    }
  }

  /** Checks a value's form and context; throws QubesPropertyValueError. */
  checkProperty(name: string, value: PropValue): void {
    const d = this.propertyDef(name);
    const bad = (why: string): never => {
      throw new QubesPropertyValueError(`${this.holderName}: property ${name}: ${why}`);
    };
    if (d.computed) bad('is computed and cannot be set');
    switch (d.type) {
      case 'bool':
        if (typeof value !== 'boolean') bad('expected True or False');
        break;
      case 'int':
        if (typeof value !== 'number' || !Number.isSafeInteger(value)) bad('expected an integer');
        if (d.min !== undefined && (value as number) < d.min) bad(`must be at least ${d.min}`);
        break;
      case 'vm':
        if (value === null) {
          if (!d.allowNone) bad('cannot be None');
        } else if (typeof value !== 'string' || value === '') bad('expected a domain name');
        break;
      case 'label':
      case 'str':
        if (typeof value !== 'string') bad('expected a string');
        if ((value as string).length > STR_MAX) bad(`longer than ${STR_MAX} characters`);
        if (/[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(value as string)) bad('contains control characters');
        break;
    }
    d.check?.(this, value);
  }

  /** Stores an explicit value (already checked). Returns the previous explicit value (undefined: none). */
  storeProperty(name: string, value: PropValue): PropValue | undefined {
    const old = this.values.has(name) ? this.values.get(name)! : undefined;
    this.values.set(name, value);
    return old;
  }

  /** Forgets the explicit value. Returns it (undefined: none). */
  clearProperty(name: string): PropValue | undefined {
    const old = this.values.has(name) ? this.values.get(name)! : undefined;
    this.values.delete(name);
    return old;
  }

  /** Puts back what storeProperty/clearProperty returned (undo). */
  restoreProperty(name: string, old: PropValue | undefined): void {
    if (old === undefined) this.values.delete(name);
    else this.values.set(name, old);
  }
}

/** Makes the name -> declaration map of a list of declarations. */
export function propertyTable<H>(...lists: readonly (readonly PropertyDef<H>[])[]): ReadonlyMap<string, PropertyDef<H>> {
  const m = new Map<string, PropertyDef<H>>();
  for (const l of lists) for (const d of l) m.set(d.name, d);
  return m;
}
