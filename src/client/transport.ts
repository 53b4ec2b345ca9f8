/**
 * How a client reaches the admin API: a Transport makes one call and gives
 * the result bytes, or throws the Qubes-named exception of an error reply.
 * Two kinds, the same reply bytes either way:
 *
 * - socket (here): calls to a running qubesd over its Unix socket;
 * - embedded (embedded.ts): the runtime opened in this process, each call run
 *   through the very dispatch the daemon uses.
 *
 * connect.ts chooses between them as the tools do. This file loads no more
 * than the wire protocol: a program that only talks to a daemon (a web page
 * of pool usage) does not load the drivers and the state.
 */
import * as net from 'node:net';
import type { Readable } from 'node:stream';
import { AdminClient, type ReplyStreamOptions } from '../admin/client.js';
import type { AdminEvent } from '../admin/protocol/reply.js';

export interface EventsSubscription {
  /** Resolves once the subscription is live (after `connection-established`). */
  readonly established: Promise<void>;
  /** Over a socket: settles when the stream ends (close(), or the daemon went away); embedded, the stream ends only with close(). */
  readonly ended?: Promise<void>;
  close(): void;
}

export interface Transport {
  /** 'socket' or 'embedded' (for messages and tests only; nothing else branches on it). */
  readonly kind: 'socket' | 'embedded';
  /** One call; resolves to the result bytes or throws the mapped Qubes exception. */
  call(method: string, dest: string, arg?: string, payload?: string | Buffer): Promise<Buffer>;
  /** One call whose payload is streamed (imports). */
  callStream(method: string, dest: string, arg: string, payload: Readable): Promise<Buffer>;
  /**
   * A call whose reply is streamed (admin.vm.volume.ExportStream): the reply's
   * bytes as they come; ending the iteration ends the call. Sockets only:
   * embedded, the exports are files this process reads itself.
   */
  replyStream?(method: string, dest: string, arg: string, opts?: ReplyStreamOptions): AsyncGenerator<Buffer, void, undefined>;
  /** admin.Events for DEST (dom0: all); `onEvent` gets every event after connection-established. */
  events(dest: string, onEvent: (e: AdminEvent) => void): EventsSubscription;
  /** Releases what the transport holds (the state lock, for embedded). */
  close(): Promise<void>;
}

/** Embedded: another tool or daemon held the state lock for the whole wait (see connect.ts). */
export class StateBusyError extends Error {
  override readonly name = 'StateBusyError';
}

/** QUBESD_SOCKET names a socket where no daemon answers (see connect.ts). */
export class DaemonUnreachableError extends Error {
  override readonly name = 'DaemonUnreachableError';
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

/** Calls over the socket of a running qubesd (`source`: the caller written in each header, default dom0). */
export function socketTransport(socketPath: string, opts: { readonly source?: string; readonly timeoutMs?: number } = {}): Transport {
  const client = new AdminClient({ socketPath, ...opts });
  return {
    kind: 'socket',
    call: (m, dest, arg = '', payload = '') => client.call(m, dest, arg, payload),
    callStream: (m, dest, arg, payload) => client.callStream(m, dest, arg, payload),
    replyStream: (m, dest, arg, o) => client.replyStream(m, dest, arg, o),
    events(dest, onEvent) {
      const h = client.events(dest, (e) => {
        if (e.event !== 'connection-established') onEvent(e);
      });
      return { established: h.established, ended: h.done, close: () => h.close() };
    },
    close: () => Promise.resolve(),
  };
}
