/**
 * The frame every tool runs in: argument parsing with --help, the admin API
 * client (connected only when a call is made, closed at the end and on Ctrl-C), and
 * errors turned into one line `PROG: error: MESSAGE` with an exit code:
 * 2 for a mistake on the command line, 1 for a refused or failed operation,
 * or the code a tool chose (CliExit). Stopped from outside, a tool runs its
 * cleanups (onInterrupt: an export is ended, a temporary file removed),
 * closes the client and exits as a shell reports the signal: 130 on SIGINT,
 * 143 on SIGTERM (both saying `PROG: interrupted`), 141 when the reader of
 * its stdout went away (EPIPE, silently, as SIGPIPE stops cat).
 */
import { setFlagsFromString } from 'node:v8';
import { QubesException } from '../../storage/errors.js';
import { helpText, parseArgs, UsageError, type CommandSpec, type Parsed } from './args.js';
// The client's own files, not its index: the index also loads what no tool start needs (usage rows).
import { QubesClient } from '../../client/client.js';
import { DaemonUnreachableError, StateBusyError } from '../../client/transport.js';

/** Ends the tool with this exit code after printing `message` (if any) as an error line. */
export class CliExit extends Error {
  override readonly name = 'CliExit';
  constructor(
    readonly code: number,
    message = '',
  ) {
    super(message);
  }
}

/** An operation refused by the tool itself (checked before any call changed anything). */
export class CliError extends CliExit {
  constructor(message: string) {
    super(1, message);
  }
}

export interface ToolContext {
  readonly prog: string;
  out(text: string): void;
  /** `PROG: warning: ...` on stderr. */
  warn(message: string): void;
  /** A plain line on stderr. */
  note(message: string): void;
  /** The admin API client (connects on first use). */
  client(): Promise<QubesClient>;
  /** Parses `argv` for `spec`; prints --help and exits 0 when asked. */
  parse(spec: CommandSpec, argv: readonly string[]): Parsed;
  /** Aborted on SIGINT/SIGTERM and when stdout's reader went away (EPIPE), before the cleanups run. */
  readonly signal: AbortSignal;
  /**
   * Runs `cleanup` if the tool is interrupted (SIGINT/SIGTERM, EPIPE on stdout) while it is
   * registered, before the client closes (all cleanups together get at
   * most 5 s). Returns the function that unregisters it.
   */
  onInterrupt(cleanup: () => Promise<void>): () => void;
}

class HelpShown extends Error {}

/** Exit codes of a tool stopped from outside, as a shell reports a process killed by the signal: 128 + its number. */
export const EXIT_SIGINT = 130;
export const EXIT_SIGTERM = 143;
/** The reader of stdout went away (EPIPE): as SIGPIPE would. */
export const EXIT_SIGPIPE = 141;

/** Runs `main` as the tool `prog` and exits the process with its code. */
export async function runTool(prog: string, main: (t: ToolContext) => Promise<number | void>): Promise<void> {
  // A tool talking to a daemon lives for a fraction of a second. V8's
  // optimizing compiler (TurboFan) would compile the few functions that run
  // hot in it (a 1,000-domain listing's parse and table: six of them) on a
  // second thread, 30-40 ms of CPU each on the 2-core test machine, for code
  // the tool is done with before it could pay back; the baseline compiler
  // (Sparkplug) is kept. The code runs the same in every tier. Embedded, a
  // tool runs the whole runtime (a state of 10,000 domains, copies): there the
  // optimizing compiler is turned back on before the runtime loads (client()
  // below). docs/benchmarks.md, "Issue 16 items 3 and 5, fourth pass".
  setFlagsFromString('--no-turbofan');
  let client: QubesClient | null = null;
  let opening: Promise<QubesClient> | null = null;
  const out = (s: string) => void process.stdout.write(s);
  const err = (s: string) => void process.stderr.write(s);
  const interrupt = new AbortController();
  const cleanups = new Set<() => Promise<void>>();
  const t: ToolContext = {
    prog,
    out,
    warn: (m) => err(`${prog}: warning: ${m}\n`),
    note: (m) => err(`${m}\n`),
    client: () =>
      (opening ??= QubesClient.connect({
        notice: (line) => err(`${prog}: ${line}\n`),
        beforeEmbedded: () => setFlagsFromString('--turbofan'),
      }).then((c) => {
        client = c;
        return c;
      })),
    parse(spec, argv) {
      const p = parseArgs(spec, argv);
      if (p.help) {
        out(helpText(spec));
        throw new HelpShown();
      }
      return p;
    },
    signal: interrupt.signal,
    onInterrupt(cleanup) {
      cleanups.add(cleanup);
      return () => void cleanups.delete(cleanup);
    },
  };

  let interrupted = false;
  /** Stops the tool: aborts `signal`, runs the cleanups, closes the client, exits with `code`. */
  const stop = (code: number, line: string) => {
    if (interrupted) return;
    interrupted = true;
    process.exitCode = code;
    if (line) err(line);
    interrupt.abort();
    const cleaning = Promise.all(
      [...cleanups].map((c) => c().catch((e: unknown) => err(`${prog}: warning: cleaning up: ${oneLine(e instanceof Error ? e.message : String(e))}\n`))),
    );
    const closing = cleaning.then(() => {
      const c = client as QubesClient | null;
      return c ? c.close().catch(() => {}) : undefined;
    });
    const cap = new Promise((r) => setTimeout(r, 5000).unref());
    void Promise.race([closing, cap]).then(() => process.exit(code));
  };
  process.on('SIGINT', () => stop(EXIT_SIGINT, `${prog}: interrupted\n`));
  process.on('SIGTERM', () => stop(EXIT_SIGTERM, `${prog}: interrupted\n`));
  // The reader of stdout went away (`qvm-volume export VM:VOLUME - | head -c 16`):
  // stopped as SIGPIPE stops cat or dd (silently, 128 + 13), but with the
  // cleanups run (the export ended) and never as a success.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    stop(EXIT_SIGPIPE, '');
  });

  let code: number;
  // Once interrupted, stop() cleans up, closes and exits (130, 143 or 141),
  // however main ends: it must not close the client under the cleanups.
  const leftToSignalHandler = () => new Promise<never>(() => {});
  try {
    code = (await main(t)) ?? 0;
    if (interrupted) await leftToSignalHandler();
  } catch (e) {
    if (interrupted) await leftToSignalHandler();
    code = report(prog, e, err);
  } finally {
    const c = client as QubesClient | null;
    if (c) {
      try {
        await c.close();
      } catch (e) {
        err(`${prog}: warning: closing: ${(e as Error).message}\n`);
      }
    }
  }
  process.exitCode = code;
  // Flush stdout before leaving (pipes are asynchronous); a reader gone by now stops the tool as above.
  const flushed = await new Promise<NodeJS.ErrnoException | null | undefined>((r) => process.stdout.write('', (e) => r(e)));
  if (flushed?.code === 'EPIPE') stop(EXIT_SIGPIPE, '');
  if (interrupted) await leftToSignalHandler();
  process.exit(code);
}

function report(prog: string, e: unknown, err: (s: string) => void): number {
  if (e instanceof HelpShown) return 0;
  if (e instanceof CliExit) {
    if (e.message) err(`${prog}: error: ${e.message}\n`);
    return e.code;
  }
  if (e instanceof UsageError) {
    err(`${prog}: error: ${e.message} (see ${prog} --help)\n`);
    return 2;
  }
  if (e instanceof QubesException || e instanceof StateBusyError || e instanceof DaemonUnreachableError) {
    err(`${prog}: error: ${oneLine(e.message)}\n`);
    return 1;
  }
  const msg = e instanceof Error ? `${e.message}` : String(e);
  err(`${prog}: error: ${oneLine(msg)}\n`);
  if (process.env['QUBES_CLI_DEBUG'] && e instanceof Error) err(`${e.stack}\n`);
  return 1;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ');
}
