/**
 * Running the host's device-mapper and loop tools (dmsetup, losetup): no
 * shell, arguments as given, output bounded, a secret only ever on stdin
 * (argv is readable by every process in /proc/PID/cmdline). The sbin
 * directories are searched after PATH, as root's PATH would.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

/** What a tool may print at most; more is cut (these tools print a line or two). */
const MAX_OUTPUT = 64 * 1024;

/** PATH for the tools: the caller's, then the sbin directories. */
export function toolSearchPath(env: NodeJS.ProcessEnv = process.env): string {
  return [env['PATH'] ?? '', '/usr/sbin', '/sbin'].filter(Boolean).join(':');
}

/** The tool's path when it is installed (an executable file on the search path), else null. */
export async function findTool(name: string): Promise<string | null> {
  for (const dir of toolSearchPath().split(':')) {
    if (!path.isAbsolute(dir)) continue;
    const p = path.join(dir, name);
    try {
      await fs.access(p, fs.constants.X_OK);
      if ((await fs.stat(p)).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** A tool that failed: its command line (never a secret: those go on stdin) and its last words. */
export class ToolError extends Error {
  constructor(
    readonly command: string,
    readonly code: number | null,
    readonly stderr: string,
  ) {
    const said = stderr.trim().split('\n').at(-1)?.trim();
    super(`${command} failed (${code === null ? 'killed' : `exit ${code}`})${said ? `: ${said}` : ''}`);
  }
}

export interface RunToolOptions {
  /**
   * Bytes for the tool's stdin (a dm-crypt table with its key). The caller
   * owns the buffer and wipes it; it is not copied here.
   */
  readonly input?: Buffer;
}

/** Runs `name args...`; resolves with its stdout, rejects with ToolError on a non-zero exit. */
export function runTool(name: string, args: readonly string[], opts: RunToolOptions = {}): Promise<string> {
  const command = [name, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(name, args, {
      env: { ...process.env, PATH: toolSearchPath(), LC_ALL: 'C' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (out.length < MAX_OUTPUT) out += d.slice(0, MAX_OUTPUT - out.length);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (err.length < MAX_OUTPUT) err += d.slice(0, MAX_OUTPUT - err.length);
    });
    // A tool that exits before reading its input closes the pipe: EPIPE is its exit's business.
    child.stdin.on('error', () => undefined);
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new ToolError(command, 127, `${name}: not installed`) : e),
    );
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new ToolError(command, code, err))));
    if (opts.input) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}
