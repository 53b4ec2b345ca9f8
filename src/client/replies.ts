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

/** `default=True type=T VALUE` (without regexes: a listing parses tens of thousands of these). */
export function parseProperty(text: string): PropertyValue {
  const from = text.startsWith('default=True type=') ? 18 : text.startsWith('default=False type=') ? 19 : -1;
  if (from < 0) return { isDefault: false, type: 'str', value: text };
  // The type runs to the first whitespace; then one optional space, then the value.
  let end = from;
  for (; end < text.length; end++) {
    const c = text.charCodeAt(end);
    if (c === 0x20 || (c >= 0x09 && c <= 0x0d)) break;
    // Beyond ASCII (where \s also means other spaces): the general rule.
    if (c >= 0x7f) return parsePropertyGeneral(text);
  }
  if (end === from) return parsePropertyGeneral(text);
  return { isDefault: from === 18, type: text.slice(from, end), value: text.slice(text.charCodeAt(end) === 0x20 ? end + 1 : end) };
}

function parsePropertyGeneral(text: string): PropertyValue {
  const m = /^default=(True|False) type=(\S+) ?([\s\S]*)$/.exec(text);
  if (!m) return { isDefault: false, type: 'str', value: text };
  return { isDefault: m[1] === 'True', type: m[2]!, value: m[3]! };
}

/** GetAll's escapes undone (`\n` newline, `\\` backslash); most values have none. */
export function unescapeValue(text: string): string {
  return text.includes('\\') ? text.replace(/\\\\|\\n/g, (m) => (m === '\\n' ? '\n' : '\\')) : text;
}

/** One line of admin.vm.property.GetAll: `NAME default=... type=... VALUE`, the value escaped (`\n`, `\\`). */
export function parsePropertyLine(line: string): [string, PropertyValue] {
  const sp = line.indexOf(' ');
  return [line.slice(0, sp), parseProperty(unescapeValue(line.slice(sp + 1)))];
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
