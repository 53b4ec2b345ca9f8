/**
 * Tools with sub-commands (qvm-pool, qvm-volume): the sub-command and its
 * aliases are the first argument; without one, the default runs.
 */
import { UsageError, type CommandSpec, type OptionSpec } from './args.js';
import { CliError, type ToolContext } from './tool.js';

export interface SubCommand {
  readonly names: readonly string[];
  readonly spec: CommandSpec;
  run(t: ToolContext, argv: readonly string[], spec: CommandSpec): Promise<number | void>;
}

export const FORMAT_OPTION: OptionSpec = {
  names: ['--format'],
  kind: 'value',
  metavar: 'FORMAT',
  choices: ['text', 'json'],
  help: "'text' (aligned columns, the default) or 'json'",
};

export function findSubCommand(subs: readonly SubCommand[], name: string): SubCommand | undefined {
  return subs.find((s) => s.names.includes(name));
}

/** The top-level --help of a tool with sub-commands. */
export function topHelp(prog: string, summary: string, subs: readonly SubCommand[], extra = ''): string {
  const lines = [
    `usage: ${prog} [-h] {${subs.map((s) => s.names[0]).join(',')}} ...`,
    '',
    summary,
    '',
    'commands:',
    ...subs.map((s) => {
      const names = s.names.join(', ');
      return names.length < 22 ? `  ${names.padEnd(22)}${s.spec.summary}` : `  ${names}\n${' '.repeat(24)}${s.spec.summary}`;
    }),
    '',
    `Run '${prog} COMMAND --help' for the options of a command.`,
  ];
  if (extra) lines.push('', extra);
  return `${lines.join('\n')}\n`;
}

export async function dispatchSub(
  t: ToolContext,
  argv: readonly string[],
  subs: readonly SubCommand[],
  defaultSub: string,
  help: string,
): Promise<number | void> {
  const first = argv[0];
  if (first === '-h' || first === '--help') {
    t.out(help);
    return 0;
  }
  if (first === undefined || first.startsWith('-')) {
    const d = findSubCommand(subs, defaultSub)!;
    return d.run(t, argv, d.spec);
  }
  const sub = findSubCommand(subs, first);
  if (!sub) throw new UsageError(`unknown command '${first}' (choose from ${subs.map((s) => s.names[0]).join(', ')})`);
  return sub.run(t, argv.slice(1), sub.spec);
}

/** `-o k=v,k=v -o k=v` -> ordered pairs. */
export function parseOptionPairs(values: readonly string[], flag = '-o'): [string, string][] {
  const out: [string, string][] = [];
  for (const v of values)
    for (const part of v.split(',')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      if (eq <= 0) throw new UsageError(`${flag} expects KEY=VALUE, got '${part}'`);
      out.push([part.slice(0, eq), part.slice(eq + 1)]);
    }
  return out;
}

/**
 * A boolean value as users write it (yes, on, 1, true, any case) -> `True` or `False`, as the admin API takes it.
 * The word list (storage/options.ts) is loaded only here: only the sub-commands that set a boolean need it.
 */
export async function boolArg(value: string, what: string): Promise<'True' | 'False'> {
  const { boolFromWord } = await import('../../storage/options.js');
  const b = boolFromWord(value);
  if (b === null) throw new CliError(`${what} must be True or False, not '${value}'`);
  return b ? 'True' : 'False';
}
