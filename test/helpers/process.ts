/** Running a Node script of this build as a child process, with its output collected. */
import { spawn, type ChildProcess } from 'node:child_process';

export interface NodeRun {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | null;
}

/** Collects a spawned child's stdout and stderr (both piped) until it closes. */
export function childOutput(child: ChildProcess): Promise<NodeRun> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, stderr, code }));
  });
}

/**
 * Runs `script` with `args` under this Node binary in `env`; `input`, when
 * given, is written to its stdin (which is otherwise closed at once).
 */
export function runNode(script: string, args: readonly string[], env: NodeJS.ProcessEnv, input?: string): Promise<NodeRun> {
  const child = spawn(process.execPath, [script, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const done = childOutput(child);
  child.stdin.on('error', () => {}); // a child that exits without reading its input
  child.stdin.end(input);
  return done;
}
