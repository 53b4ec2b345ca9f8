/**
 * How the tools connect (QubesClient.connect):
 * - QUBES_STORAGE_EMBEDDED=1: embedded, no daemon asked;
 * - QUBESD_SOCKET set: over that socket only; nothing answering there is an
 *   error (DaemonUnreachableError), never a silent fall back to the state of
 *   another directory;
 * - else over the default socket of the default base directory when a daemon
 *   (qubesd) answers there, else embedded.
 * Embedded means on the default base directory (QUBES_BASE_DIR, or the
 * per-user data directory, /var/lib/qubes for root), waiting for another
 * tool's state lock up to QUBES_LOCK_TIMEOUT seconds.
 * QUBES_STORAGE_INIT=1 is the tools' `qubesd --init`.
 *
 * The embedded runtime (drivers, state, methods: most of the package) is
 * imported only when no daemon answers: a tool talking to qubesd loads the
 * wire protocol and no more (docs/benchmarks.md, tool start-up).
 */
import { defaultBaseDir, defaultSocketPath } from '../admin/paths.js';
import { DaemonUnreachableError, socketAnswers, socketTransport, StateBusyError, type Transport } from './transport.js';

export interface ConnectOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Notices for the user (first-use default pool, waiting for the lock), one line each. */
  readonly notice?: (line: string) => void;
  /** How long to wait for another tool's state lock; default QUBES_LOCK_TIMEOUT (seconds) or 30 s. */
  readonly lockTimeoutMs?: number;
  /** Called once no daemon answered, before the embedded runtime is loaded (the tools tune the process for long work there). */
  readonly beforeEmbedded?: () => void;
}

export function socketPathFor(env: NodeJS.ProcessEnv): { socketPath: string; baseDir: string } {
  const baseDir = defaultBaseDir(env);
  const socketPath = defaultSocketPath(baseDir, env);
  return { socketPath, baseDir };
}

/** Chooses the transport as described at the top of this file. */
export async function connect(opts: ConnectOptions = {}): Promise<Transport> {
  const env = opts.env ?? process.env;
  const { socketPath, baseDir } = socketPathFor(env);
  const timeoutMs = opts.lockTimeoutMs ?? lockTimeoutFromEnv(env);
  const deadline = Date.now() + timeoutMs;
  let waitingSaid = false;
  let delay = 50;
  const started = Date.now();
  const embeddedOnly = env['QUBES_STORAGE_EMBEDDED'] === '1';
  if (!embeddedOnly && env['QUBESD_SOCKET']) {
    if (await socketAnswers(socketPath)) return socketTransport(socketPath);
    throw new DaemonUnreachableError(
      `no qubesd answers at ${socketPath} (QUBESD_SOCKET); start qubesd there,` +
        ' or unset QUBESD_SOCKET (a daemon at the default socket, else no daemon),' +
        ' or set QUBES_STORAGE_EMBEDDED=1 (no daemon)',
    );
  }
  for (;;) {
    if (!embeddedOnly && (await socketAnswers(socketPath))) return socketTransport(socketPath);
    opts.beforeEmbedded?.();
    const { embeddedTransport, StateLockedError } = await import('./embedded.js');
    try {
      return await embeddedTransport(baseDir, opts.notice, env['QUBES_STORAGE_INIT'] === '1');
    } catch (e) {
      if (!(e instanceof StateLockedError)) throw e;
      if (Date.now() >= deadline)
        throw new StateBusyError(
          `${e.message}; gave up waiting after ${Math.round(timeoutMs / 1000)} s` +
            ' (another tool still running? QUBES_LOCK_TIMEOUT=SECONDS waits longer)',
        );
      if (!waitingSaid && Date.now() - started >= 1000) {
        opts.notice?.(`waiting for another tool to release the state in ${baseDir}...`);
        waitingSaid = true;
      }
      await sleep(Math.min(delay, Math.max(0, deadline - Date.now())));
      delay = Math.min(delay * 2, 500);
    }
  }
}

function lockTimeoutFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env['QUBES_LOCK_TIMEOUT'];
  if (raw !== undefined && /^\d+(\.\d+)?$/.test(raw)) return Number(raw) * 1000;
  return 30_000;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
