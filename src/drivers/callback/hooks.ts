/**
 * Running the callback commands. An argv array is executed directly, with no
 * shell, so values in the environment (domain names, vids, ...) are never
 * parsed as shell syntax; only a configuration that says `"shell": true`
 * may give a command string, run by /bin/sh -c. Facts travel in QS_*
 * environment variables. Each command has a timeout after which its whole
 * process group is killed; its stderr is kept (bounded) for the error.
 */
import { spawn } from 'node:child_process';
import type { HookCommand } from './options.js';

/** Most bytes of a command's stderr kept for an error message. */
export const MAX_HOOK_STDERR = 4096;

export interface HookOutcome {
  readonly ok: boolean;
  /** What went wrong, one line: exit status, signal, timeout or spawn error. */
  readonly reason: string;
  /** The start of stderr, at most MAX_HOOK_STDERR bytes, trimmed. */
  readonly stderr: string;
}

/** The environment of a command: ours without QS_*, the configuration's, then the facts. */
export function hookEnv(extra: Readonly<Record<string, string>>, facts: Readonly<Record<string, string>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('QS_') && v !== undefined) env[k] = v;
  return { ...env, ...extra, ...facts };
}

/** Runs one command to its end; never throws (the outcome says what happened). */
export function runHook(cmd: HookCommand, env: NodeJS.ProcessEnv): Promise<HookOutcome> {
  const [file, args] = 'argv' in cmd ? [cmd.argv[0]!, cmd.argv.slice(1)] : ['/bin/sh', ['-c', cmd.shell]];
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    let truncated = false;
    let timedOut = false;
    let settled = false;
    const finish = (reason: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      let stderr = Buffer.concat(chunks).toString('utf8').trim();
      if (truncated) stderr += ' [...]';
      resolve({ ok: reason === null, reason: reason ?? 'exit status 0', stderr });
    };
    let child;
    try {
      child = spawn(file, args, {
        env,
        cwd: '/',
        stdio: ['ignore', 'ignore', 'pipe'],
        // Its own process group, so a timeout kills what it started too.
        detached: true,
        shell: false,
      });
    } catch (e) {
      resolve({ ok: false, reason: `cannot run ${file}: ${(e as Error).message}`, stderr: '' });
      return;
    }
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, cmd.timeoutMs);
    let stderrClosed = false;
    child.stderr!.once('close', () => (stderrClosed = true));
    child.stderr!.on('data', (b: Buffer) => {
      if (kept >= MAX_HOOK_STDERR) {
        truncated = true;
        return;
      }
      const part = b.subarray(0, MAX_HOOK_STDERR - kept);
      if (part.length < b.length) truncated = true;
      chunks.push(part);
      kept += part.length;
    });
    child.on('error', (e: NodeJS.ErrnoException) => finish(`cannot run ${file}: ${e.code ?? e.message}`));
    child.on('exit', (code, signal) => {
      // A background child may keep stderr open: wait for it briefly only.
      const reason = timedOut
        ? `timed out after ${cmd.timeoutMs} ms`
        : code === 0
          ? null
          : code !== null
            ? `exit status ${code}`
            : `killed by ${signal}`;
      if (stderrClosed) return finish(reason);
      child.stderr!.once('close', () => finish(reason));
      setTimeout(() => {
        child.stderr!.destroy();
        finish(reason);
      }, 200);
    });
  });
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}
