/**
 * y/N questions. Without a terminal on stdin (a script, a pipe, no stdin at
 * all) nobody can answer: that counts as "no", and the tool says so.
 */
import * as readline from 'node:readline';

export interface AskResult {
  readonly yes: boolean;
  /** Why it is no without asking (no terminal). */
  readonly reason?: string;
}

export async function askYesNo(question: string, io = { stdin: process.stdin, stderr: process.stderr }): Promise<AskResult> {
  if (!io.stdin.isTTY) {
    io.stderr.write(`${question} [y/N]\n`);
    return { yes: false, reason: 'stdin is not a terminal, so nobody can answer: taking that as "no" (use -f to skip the question)' };
  }
  const rl = readline.createInterface({ input: io.stdin, output: io.stderr });
  try {
    const answer = await new Promise<string | null>((resolve) => {
      rl.once('close', () => resolve(null));
      rl.question(`${question} [y/N] `, (a) => resolve(a));
    });
    if (answer === null) return { yes: false, reason: 'no answer (end of input): taking that as "no"' };
    return { yes: /^y(es)?$/i.test(answer.trim()) };
  } finally {
    rl.close();
  }
}
