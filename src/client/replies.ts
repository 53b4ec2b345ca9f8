/**
 * Reading the text of admin API replies into values: lines, `key=value`
 * lines, property values, the True/False words. Pure functions.
 */

/** The non-empty lines of a reply. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}

/** `key=value` lines in their order; a line without `=` is a key with an empty value. */
export function keyValueLines(text: string): [string, string][] {
  const out: [string, string][] = [];
  for (const line of lines(text)) {
    const eq = line.indexOf('=');
    if (eq < 0) out.push([line, '']);
    else out.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return out;
}

/** `k=v k=v` words of one line (admin.vm.List, admin.vm.CurrentState). */
export function keyValueWords(words: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const w of words) {
    const eq = w.indexOf('=');
    if (eq >= 0) out.set(w.slice(0, eq), w.slice(eq + 1));
  }
  return out;
}

export interface PropertyValue {
  readonly isDefault: boolean;
  /** The property's type as the daemon names it (`str`, `int`, `bool`, `label`, `vm`, ...). */
  readonly type: string;
  /** Its value as text (`''` for none). */
  readonly value: string;
}

/** `default=True type=T VALUE` */
export function parseProperty(text: string): PropertyValue {
  const m = /^default=(True|False) type=(\S+) ?([\s\S]*)$/.exec(text);
  if (!m) return { isDefault: false, type: 'str', value: text };
  return { isDefault: m[1] === 'True', type: m[2]!, value: m[3]! };
}

/** One line of admin.vm.property.GetAll: `NAME default=... type=... VALUE`, the value escaped (`\n`, `\\`). */
export function parsePropertyLine(line: string): [string, PropertyValue] {
  const sp = line.indexOf(' ');
  const rest = line.slice(sp + 1).replace(/\\\\|\\n/g, (m) => (m === '\\n' ? '\n' : '\\'));
  return [line.slice(0, sp), parseProperty(rest)];
}

/** The wire's booleans. */
export function qubesBool(v: boolean): 'True' | 'False' {
  return v ? 'True' : 'False';
}

/** A value as a call's payload: booleans as True/False, numbers in decimal, text as given. */
export function payloadText(v: string | number | boolean): string {
  return typeof v === 'boolean' ? qubesBool(v) : String(v);
}

/** A number from a reply field; null where the field is empty, missing or not a number. */
export function numberOrNull(text: string | undefined): number | null {
  if (text === undefined || text === '') return null;
  const n = Number(text);
  return Number.isFinite(n) ? n : null;
}
