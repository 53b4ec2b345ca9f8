/**
 * How a client reaches the admin API. One interface, two ways:
 *
 * - socket: a daemon (qubesd) answers at `QUBESD_SOCKET`, or at the default
 *   socket path of the default base directory;
 * - embedded: no daemon answers, so the client opens the runtime itself
 *   (openRuntime on the default base directory: QUBES_BASE_DIR, or the
 *   per-user data directory, /var/lib/qubes for root), holding the state
 *   lock until close(), and runs each call in-process through the
 *   very dispatch the daemon uses (same checks, same reply bytes). On an
 *   empty or missing base directory the first tool makes the state; where
 *   qubes.xml is missing from a base directory that is not empty,
 *   QUBES_STORAGE_INIT=1 is the tools' `qubesd --init`.
 *
 * QubesClient (client.ts) sees only `Transport`; the replies are the same
 * bytes either way.
 */
import * as net from 'node:net';
import type { Readable } from 'node:stream';
import { AdminClient, unwrapReply } from '../admin/client.js';
import { createDispatchContext, runCall, silentLog, type DispatchContext } from '../admin/dispatch.js';
import type { AdminEvent } from '../admin/protocol/reply.js';
import { defaultBaseDir, defaultSocketPath, openRuntime, type Runtime } from '../daemon/runtime.js';
import { StateLockedError } from '../domain/state-lock.js';

export interface EventsSubscription {
  /** Resolves once the subscription is live (after `connection-established`). */
  readonly established: Promise<void>;
  close(): void;
}

export interface Transport {
  /** 'socket' or 'embedded' (for messages and tests only; nothing else branches on it). */
  readonly kind: 'socket' | 'embedded';
  /** One call; resolves to the result bytes or throws the mapped Qubes exception. */
  call(method: string, dest: string, arg?: string, payload?: string | Buffer): Promise<Buffer>;
  /** One call whose payload is streamed (imports). */
  callStream(method: string, dest: string, arg: string, payload: Readable): Promise<Buffer>;
  /** admin.Events for DEST (dom0: all); `onEvent` gets every event after connection-established. */
  events(dest: string, onEvent: (e: AdminEvent) => void): EventsSubscription;
  /** Releases what the transport holds (the state lock, for embedded). */
  close(): Promise<void>;
}

export interface ConnectOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Notices for the user (first-use default pool, waiting for the lock), one line each. */
  readonly notice?: (line: string) => void;
  /** How long to wait for another tool's state lock; default QUBES_LOCK_TIMEOUT (seconds) or 30 s. */
  readonly lockTimeoutMs?: number;
}

/** The state lock stayed taken for the whole wait. */
export class StateBusyError extends Error {
  override readonly name = 'StateBusyError';
}

export function socketPathFor(env: NodeJS.ProcessEnv): { socketPath: string; baseDir: string } {
  const baseDir = defaultBaseDir(env);
  const socketPath = defaultSocketPath(baseDir, env);
  return { socketPath, baseDir };
}

/** True when something accepts connections at `socketPath`. */
export function socketAnswers(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(socketPath);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
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
  for (;;) {
    if (await socketAnswers(socketPath)) return socketTransport(socketPath);
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

/** Calls over the socket of a running qubesd (`source`: the caller written in each header, default dom0). */
export function socketTransport(socketPath: string, opts: { readonly source?: string; readonly timeoutMs?: number } = {}): Transport {
  const client = new AdminClient({ socketPath, ...opts });
  return {
    kind: 'socket',
    call: (m, dest, arg = '', payload = '') => client.call(m, dest, arg, payload),
    callStream: (m, dest, arg, payload) => client.callStream(m, dest, arg, payload),
    events(dest, onEvent) {
      const h = client.events(dest, (e) => {
        if (e.event !== 'connection-established') onEvent(e);
      });
      return { established: h.established, close: () => h.close() };
    },
    close: async () => {},
  };
}

/** Calls run in this process on the state in `baseDir` (its lock held until close()). */
export async function embeddedTransport(baseDir: string, notice?: (line: string) => void, init = false): Promise<Transport> {
  const rt: Runtime = await openRuntime({
    baseDir,
    createDefaultPool: true,
    ...(init ? { init: true } : {}),
    ...(notice ? { notice } : {}),
  });
  const ctx: DispatchContext = createDispatchContext({ methods: rt.methods, log: silentLog });
  let closed = false;
  return {
    kind: 'embedded',
    call: async (m, dest, arg = '', payload = '') =>
      unwrapReply(await runCall(ctx, { method: m, arg, dest }, typeof payload === 'string' ? Buffer.from(payload) : payload)),
    callStream: async (m, dest, arg, payload) => unwrapReply(await runCall(ctx, { method: m, arg, dest }, payload)),
    events(dest, onEvent) {
      const off = rt.bus.subscribe((e) => {
        if (dest === 'dom0' || e.subject === dest) onEvent(e);
      });
      return { established: Promise.resolve(), close: off };
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await rt.close();
    },
  };
}
