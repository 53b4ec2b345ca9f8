/**
 * A small argument parser with the conventions the Qubes tools follow
 * (argparse's): options anywhere between positionals, `--name=value`,
 * short options with their value attached (`-Pfoo`, the R3.2 spelling),
 * clustered short flags (`-fq`), `--` ending the options, negative numbers
 * and sizes taken as values (`revisions_to_keep -1`, `resize w:private -5G`,
 * which the size then refuses as negative), and options that take
 * several values (`-a POOL DRIVER`). Errors are UsageError (exit code 2).
 */

/** A mistake on the command line: the tool prints it and exits with 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export type OptionKind =
  /** present or not */
  | 'flag'
  /** one value; given twice, the last wins */
  | 'value'
  /** one value each time, collected */
  | 'append'
  /** `nargs` values at once */
  | 'multi';

export interface OptionSpec {
  /** `-P`, `--pool`, ... (the first long one names the result unless `dest`). */
  readonly names: readonly string[];
  readonly kind: OptionKind;
  readonly dest?: string;
  /** For kind multi. */
  readonly nargs?: number;
  readonly metavar?: string;
  readonly help: string;
  /** Allowed values. */
  readonly choices?: readonly string[];
}

export interface PositionalSpec {
  readonly name: string;
  readonly help?: string;
  /** '?': optional; '*': any number; '+': at least one; default exactly one. */
  readonly count?: '?' | '*' | '+';
}

export interface CommandSpec {
  /** `qvm-pool add`, as shown in usage and errors. */
  readonly prog: string;
  readonly summary: string;
  readonly options: readonly OptionSpec[];
  readonly positionals: readonly PositionalSpec[];
  /** Extra paragraphs shown at the end of --help. */
  readonly epilog?: string;
  /** Options that may not be given together (their dest names). */
  readonly exclusive?: readonly (readonly string[])[];
}

export interface Parsed {
  readonly flags: ReadonlySet<string>;
  readonly values: ReadonlyMap<string, string>;
  readonly lists: ReadonlyMap<string, string[]>;
  readonly multis: ReadonlyMap<string, string[]>;
  readonly positionals: Readonly<Record<string, string | string[] | undefined>>;
  /** Option dests in the order given (for legacy actions). */
  readonly order: readonly string[];
  readonly help: boolean;
}

export function destOf(o: OptionSpec): string {
  if (o.dest) return o.dest;
  const long = o.names.find((n) => n.startsWith('--')) ?? o.names[0]!;
  return long.replace(/^-+/, '').replace(/-/g, '_');
}

const HELP: OptionSpec = { names: ['-h', '--help'], kind: 'flag', help: 'show this help message and exit' };

/**
 * A value that starts with a minus sign: `-1`, `-5G`, `-.5`. No tool has an
 * option named by a digit, so these are values, which their own check
 * (a size, revisions_to_keep) then refuses by name rather than as an
 * unknown option.
 */
function looksNegative(a: string): boolean {
  return /^-\.?\d/.test(a);
}

export function parseArgs(spec: CommandSpec, argv: readonly string[]): Parsed {
  const options = [HELP, ...spec.options];
  const byName = new Map<string, OptionSpec>();
  for (const o of options) for (const n of o.names) byName.set(n, o);
  const flags = new Set<string>();
  const values = new Map<string, string>();
  const lists = new Map<string, string[]>();
  const multis = new Map<string, string[]>();
  const order: string[] = [];
  const rest: string[] = [];
  let help = false;

  const take = (o: OptionSpec, name: string, attached: string | undefined, i: number): number => {
    const dest = destOf(o);
    order.push(dest);
    if (o.kind === 'flag') {
      if (attached !== undefined) throw new UsageError(`option ${name} takes no value`);
      if (o === HELP) help = true;
      else flags.add(dest);
      return i;
    }
    const n = o.kind === 'multi' ? (o.nargs ?? 1) : 1;
    const got: string[] = [];
    if (attached !== undefined) got.push(attached);
    while (got.length < n) {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('-') && next !== '-' && !looksNegative(next)))
        throw new UsageError(`option ${name} expects ${n === 1 ? 'a value' : `${n} values`}${o.metavar ? ` (${o.metavar})` : ''}`);
      got.push(next);
      i++;
    }
    if (o.choices) for (const v of got) if (!o.choices.includes(v)) throw new UsageError(`option ${name}: invalid choice '${v}' (choose from ${o.choices.join(', ')})`);
    if (o.kind === 'value') values.set(dest, got[0]!);
    else if (o.kind === 'append') lists.set(dest, [...(lists.get(dest) ?? []), got[0]!]);
    else multis.set(dest, got);
    return i;
  };

  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a : a.slice(0, eq);
      const o = byName.get(name);
      if (!o) throw new UsageError(`unrecognized argument: ${name}`);
      i = take(o, name, eq < 0 ? undefined : a.slice(eq + 1), i);
      continue;
    }
    if (a.startsWith('-') && a !== '-' && !looksNegative(a)) {
      // Short options: -x, -xVALUE, or a cluster of flags -xyz.
      let j = 1;
      while (j < a.length) {
        const name = `-${a[j]}`;
        const o = byName.get(name);
        if (!o) throw new UsageError(`unrecognized argument: ${j === 1 ? a : name}`);
        if (o.kind === 'flag') {
          take(o, name, undefined, i);
          j++;
          continue;
        }
        const attached = j + 1 < a.length ? a.slice(j + 1) : undefined;
        i = take(o, name, attached, i);
        break;
      }
      continue;
    }
    rest.push(a);
  }

  if (help) return { flags, values, lists, multis, positionals: {}, order, help };

  for (const group of spec.exclusive ?? []) {
    const given = group.filter((d) => flags.has(d) || values.has(d) || lists.has(d) || multis.has(d));
    if (given.length > 1) {
      const shown = given.map((d) => optionLabel(options.find((o) => destOf(o) === d)!));
      throw new UsageError(`${shown.join(' and ')} cannot be used together`);
    }
  }

  const positionals: Record<string, string | string[] | undefined> = {};
  const required = spec.positionals.filter((p) => p.count === undefined).length;
  const plus = spec.positionals.filter((p) => p.count === '+').length;
  let available = rest.length - required - plus;
  let k = 0;
  for (const p of spec.positionals) {
    if (p.count === undefined) {
      if (k >= rest.length) throw new UsageError(`the following arguments are required: ${missing(spec, k, rest)}`);
      positionals[p.name] = rest[k++];
    } else if (p.count === '?') {
      if (available > 0) {
        positionals[p.name] = rest[k++];
        available--;
      }
    } else {
      const min = p.count === '+' ? 1 : 0;
      const n = Math.max(0, available) + min;
      if (k + min > rest.length) throw new UsageError(`the following arguments are required: ${p.name}`);
      positionals[p.name] = rest.slice(k, k + n);
      k += n;
      available = 0;
    }
  }
  if (k < rest.length) throw new UsageError(`unrecognized arguments: ${rest.slice(k).join(' ')}`);
  return { flags, values, lists, multis, positionals, order, help };
}

function missing(spec: CommandSpec, from: number, rest: readonly string[]): string {
  void rest;
  return spec.positionals
    .filter((p) => p.count === undefined || p.count === '+')
    .slice(from)
    .map((p) => p.name)
    .join(', ');
}

function optionLabel(o: OptionSpec): string {
  return o.names.join('/');
}

function usageOf(o: OptionSpec): string {
  const meta = o.metavar ?? destOf(o).toUpperCase();
  if (o.kind === 'flag') return o.names[0]!;
  if (o.kind === 'multi') return `${o.names[0]} ${meta}`;
  return `${o.names[0]} ${meta}`;
}

/** `usage: prog [options] ARGS` */
export function usageLine(spec: CommandSpec): string {
  const opts = spec.options.map((o) => `[${usageOf(o)}${o.kind === 'append' ? ' ...' : ''}]`);
  const pos = spec.positionals.map((p) =>
    p.count === '?' ? `[${p.name}]` : p.count === '*' ? `[${p.name} ...]` : p.count === '+' ? `${p.name} [${p.name} ...]` : p.name,
  );
  return wrap(`usage: ${spec.prog} [-h] ${[...opts, ...pos].join(' ')}`.replace(/\s+$/, ''), `usage: ${spec.prog} `.length);
}

function wrap(line: string, indent: number, width = 79): string {
  if (line.length <= width) return line;
  const words = line.split(' ');
  const out: string[] = [];
  let cur = '';
  for (const w of words) {
    if (cur && cur.length + 1 + w.length > width) {
      out.push(cur);
      cur = ' '.repeat(indent) + w;
    } else cur = cur ? `${cur} ${w}` : w;
  }
  if (cur) out.push(cur);
  return out.join('\n');
}

/** The text of --help. */
export function helpText(spec: CommandSpec): string {
  const lines = [usageLine(spec), '', spec.summary];
  if (spec.positionals.length) {
    lines.push('', 'positional arguments:');
    for (const p of spec.positionals) lines.push(entry(p.name, p.help ?? ''));
  }
  lines.push('', 'options:');
  for (const o of [HELP, ...spec.options]) {
    const meta = o.kind === 'flag' ? '' : ` ${o.metavar ?? destOf(o).toUpperCase()}`;
    lines.push(entry(o.names.map((n) => `${n}${meta}`).join(', '), o.help));
  }
  if (spec.epilog) lines.push('', spec.epilog);
  return `${lines.join('\n')}\n`;
}

function entry(left: string, help: string): string {
  const pad = 24;
  if (!help) return `  ${left}`;
  if (left.length + 2 < pad - 1) return `  ${left.padEnd(pad - 2)}${help}`;
  return `  ${left}\n${' '.repeat(pad)}${help}`;
}

// ---- accessors --------------------------------------------------------------------

export function str(p: Parsed, name: string): string {
  const v = p.positionals[name];
  if (typeof v !== 'string') throw new UsageError(`the following arguments are required: ${name}`);
  return v;
}

export function optStr(p: Parsed, name: string): string | undefined {
  const v = p.positionals[name];
  return typeof v === 'string' ? v : undefined;
}

export function strs(p: Parsed, name: string): string[] {
  const v = p.positionals[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}
