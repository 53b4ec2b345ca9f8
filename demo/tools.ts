// How the demo runs a tool: the real qvm-* as a child process, its command
// and output printed (the base directory shown as $BASE).
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli');

export const say = (s: string): void => void process.stdout.write(`${s}\n`);

/** A runner of `qvm-... ARGS` (split at spaces) with `env`: prints `$ command` and its output; returns stdout. */
export function toolRunner(env: NodeJS.ProcessEnv, base: string): { tool: (cmd: string, expectCode?: number) => string; shown: (s: string) => string } {
  const shown = (s: string) => s.split(base).join('$BASE');
  const tool = (cmd: string, expectCode = 0): string => {
    say(`$ ${shown(cmd)}`);
    const [name, ...args] = cmd.split(' ');
    const r = spawnSync(process.execPath, [path.join(CLI, `${name}.js`), ...args], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const out = shown(`${r.stdout}${r.stderr}`);
    if (out) process.stdout.write(out.replace(/^(?=.)/gm, '    '));
    if (r.status !== expectCode) throw new Error(`${name} exited with ${r.status}, expected ${expectCode}`);
    return r.stdout;
  };
  return { tool, shown };
}
