/**
 * A client of the admin API, speaking the same wire protocol as the stock
 * Qubes clients: one connection per call, `name DEST`, half-close after the
 * payload, reply read to EOF.
 */
import * as net from 'node:net';
import type { Readable } from 'node:stream';
import * as errors from '../storage/errors.js';
import { QubesException } from '../storage/errors.js';
import { encodeHeader } from './protocol/header.js';
import { decodeReply, EventStreamDecoder, type AdminEvent } from './protocol/reply.js';

/** No reply, or the connection failed (the name qubesadmin uses). */
export class QubesDaemonCommunicationError extends QubesException {}

/** An error reply, as the class named by the daemon. */
export type RemoteError = QubesException & { remoteTraceback?: string };

export interface AdminClientOptions {
  readonly socketPath: string;
  /** The calling domain written in the header; default `dom0`. */
  readonly source?: string;
  /** Gives up on a call after this long; default: no limit. */
  readonly timeoutMs?: number;
  /** Largest reply accepted; default 256 MiB. */
  readonly maxReplyBytes?: number;
}

export interface EventsHandle {
  /** Resolves on `connection-established`; rejects if the call was refused. */
  readonly established: Promise<void>;
  /** Resolves when the stream ends (close() or the server went away); rejects on a protocol or call error. */
  readonly done: Promise<void>;
  close(): void;
}

const ERROR_CLASSES: ReadonlyMap<string, new (message: string) => QubesException> = new Map(
  Object.entries(errors).flatMap(([name, value]) =>
    typeof value === 'function' && (value === QubesException || value.prototype instanceof QubesException)
      ? [[name, value as new (message: string) => QubesException]]
      : [],
  ),
);

/** The exception for an error reply: the class of that name from storage/errors, else QubesException. */
export function errorFromReply(name: string, message: string, traceback = ''): RemoteError {
  const Cls = ERROR_CLASSES.get(name) ?? QubesException;
  const err: RemoteError = new Cls(message);
  if (traceback !== '') err.remoteTraceback = traceback;
  return err;
}

/** The result of reply bytes, or the mapped exception thrown. Shared with in-process callers. */
export function unwrapReply(reply: Uint8Array): Buffer {
  if (reply.length === 0) throw new QubesDaemonCommunicationError('qubesd closed the connection without a reply');
  const r = decodeReply(reply);
  if (r.kind === 'ok') return r.result;
  throw errorFromReply(r.name, r.message, r.traceback);
}

/** The largest error reply a streamed reply may start with. */
const MAX_ERROR_REPLY = 1024 * 1024;
/** How a streamed reply is read (replyStream). */
export interface ReplyStreamOptions {
  /** Asked when the iteration ends early: true closes the connection without waiting for the daemon's close. */
  readonly dontWait?: () => boolean;
  /** Read the reply into these reused buffers instead of a new one per read (see ReplyReadBuffers). */
  readonly buffers?: ReplyReadBuffers;
}

/**
 * Buffers a streamed reply is read into, used again once the consumer says
 * it is done with what it got (releaser()). Without them every socket read
 * gets fresh memory (64 KiB at a time), and in this project's VM the page
 * faults of 256 MiB of fresh memory made `qvm-volume export` about 25%
 * slower (docs/benchmarks.md).
 *
 * Safe whatever the consumer does: a buffer is read into again only once
 * the consumer said it is done with the chunk read into it, and with a
 * later one (the decoder may still be handing out the records of the last
 * chunk). A consumer that never says so gets fresh buffers, as without
 * them; a buffer never released is only garbage.
 */
export class ReplyReadBuffers {
  private readonly free: Buffer[] = [];
  /** The buffers of the chunks yielded (a run of chunks in one buffer counted once), not yet freed, oldest first. */
  private readonly yielded: Buffer[] = [];
  /** How many were freed before yielded[0]. */
  private freed = 0;
  /** Our buffers, by their memory. */
  private readonly ours = new WeakMap<ArrayBufferLike, Buffer>();

  constructor(readonly bytes = 256 * 1024) {}

  /**
   * Returns a function to call once the consumer is done with every chunk
   * yielded until now (and the records decoded from them): it frees all of
   * them but the last, whose records may still be being handed out.
   */
  releaser(): () => void {
    const upTo = this.freed + this.yielded.length;
    return () => {
      while (this.freed < upTo - 1) {
        this.free.push(this.yielded.shift()!);
        this.freed++;
      }
    };
  }

  /** A buffer for the next socket read. */
  next(): Buffer {
    let b = this.free.pop();
    if (!b) {
      b = Buffer.allocUnsafeSlow(this.bytes); // its own memory, not a slice of Node's pool
      this.ours.set(b.buffer, b);
    }
    return b;
  }

  /** `chunk` (a view of one of ours, or a copy the stream made) is being handed to the consumer. */
  yielding(chunk: Buffer): void {
    const b = this.ours.get(chunk.buffer);
    if (b && this.yielded.at(-1) !== b) this.yielded.push(b);
  }
}

/** How long an early end of a streamed reply waits for the daemon to end the call. */
const REPLY_STREAM_END_MS = 30_000;

export class AdminClient {
  readonly socketPath: string;
  readonly source: string;
  private readonly timeoutMs: number | undefined;
  private readonly maxReplyBytes: number;

  constructor(opts: AdminClientOptions) {
    this.socketPath = opts.socketPath;
    this.source = opts.source ?? 'dom0';
    this.timeoutMs = opts.timeoutMs;
    this.maxReplyBytes = opts.maxReplyBytes ?? 256 * 1024 * 1024;
  }

  /** One call with a buffered payload; resolves to the result bytes. */
  call(method: string, dest: string, arg = '', payload: string | Uint8Array = ''): Promise<Buffer> {
    const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    return this.exchange(method, dest, arg, (sock) => {
      sock.end(body);
    });
  }

  /** One call whose payload is streamed (admin.vm.volume.Import and the like). */
  callStream(method: string, dest: string, arg: string, payload: Readable): Promise<Buffer> {
    return this.exchange(method, dest, arg, (sock, fail) => {
      payload.on('error', (err) => fail(new QubesException(`reading the payload failed: ${err.message}`)));
      payload.pipe(sock);
    });
  }

  /**
   * A call whose reply is streamed (admin.vm.volume.ExportStream): yields the
   * reply's bytes after the success header as they arrive; an error reply
   * is thrown as its exception. Ending the iteration early (return, break,
   * a throw of the consumer) closes the connection, which ends the call;
   * the return waits until the daemon has ended it and closed its side,
   * unless `opts.dontWait()` says true then (the consumer read all it needs,
   * and what the daemon still does is its own).
   */
  async *replyStream(method: string, dest: string, arg = '', opts: ReplyStreamOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    const header = encodeHeader({ method, arg, source: this.source, dest });
    const { buffers } = opts;
    // With buffers: each read goes into one of them, and a full stream buffer pauses the reads (false).
    const sock: net.Socket = buffers
      ? net.connect({ path: this.socketPath, onread: { buffer: () => buffers.next(), callback: (n, b) => sock.push(b.subarray(0, n)) } })
      : net.connect(this.socketPath);
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    let eof = false;
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('error', (err) => reject(new QubesDaemonCommunicationError(`cannot talk to qubesd at ${this.socketPath}: ${err.message}`)));
      });
      // No half-close after the header: that is how the call is ended (below).
      sock.write(header);
      let head = Buffer.alloc(0);
      let ok = false;
      try {
        for await (const chunk of sock.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
          if (ok) {
            buffers?.yielding(chunk);
            yield chunk;
            continue;
          }
          head = Buffer.concat([head, chunk]);
          if (head.length > MAX_ERROR_REPLY) throw new QubesDaemonCommunicationError(`${method}: reply too large`);
          if (head.length >= 2 && head[0] === 0x30 && head[1] === 0) {
            ok = true;
            if (head.length > 2) yield head.subarray(2);
          }
        }
        eof = true;
      } catch (err) {
        if (err instanceof QubesException) throw err;
        throw new QubesDaemonCommunicationError(`${method}: the connection to qubesd failed: ${(err as Error).message}`);
      }
      if (!ok) unwrapReply(head); // throws the error reply (or that there was none)
    } finally {
      if (!eof && !sock.destroyed && opts.dontWait?.() !== true) {
        // Ended early: say so by closing our side, and wait until the daemon
        // has ended the call and closed its own (what it still sends is dropped).
        sock.on('error', () => undefined);
        sock.end();
        sock.resume();
        const timer = setTimeout(() => sock.destroy(), REPLY_STREAM_END_MS);
        await closed;
        clearTimeout(timer);
      }
      sock.destroy();
    }
  }

  private exchange(
    method: string,
    dest: string,
    arg: string,
    sendPayload: (sock: net.Socket, fail: (err: Error) => void) => void,
  ): Promise<Buffer> {
    const header = encodeHeader({ method, arg, source: this.source, dest });
    return new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let total = 0;
      let settled = false;
      const sock = net.connect(this.socketPath);
      const timer =
        this.timeoutMs === undefined ? undefined : setTimeout(() => fail(new QubesDaemonCommunicationError(`${method}: no reply from qubesd in time`)), this.timeoutMs);
      function fail(err: Error): void {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        sock.destroy();
        reject(err);
      }
      const finish = () => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        sock.destroy();
        try {
          resolve(unwrapReply(Buffer.concat(chunks)));
        } catch (err) {
          reject(err);
        }
      };
      sock.on('connect', () => {
        sock.write(header);
        sendPayload(sock, fail);
      });
      sock.on('data', (chunk: Buffer) => {
        total += chunk.length;
        if (total > this.maxReplyBytes) return fail(new QubesDaemonCommunicationError(`${method}: reply too large`));
        chunks.push(chunk);
      });
      sock.on('end', finish);
      sock.on('error', (err: NodeJS.ErrnoException) => {
        // The server may answer (an error) before it read all of a streamed
        // payload; what arrived is still the reply.
        const cut = err.code === 'EPIPE' || err.code === 'ECONNRESET';
        if (cut && total > 0) return finish();
        fail(
          new QubesDaemonCommunicationError(
            cut
              ? `qubesd closed the connection without a reply (${err.code})`
              : `cannot talk to qubesd at ${this.socketPath}: ${err.message}`,
          ),
        );
      });
      sock.on('close', finish);
    });
  }

  /**
   * Subscribes to `admin.Events` for DEST (`dom0` for all). `onEvent` gets
   * every frame, `connection-established` first.
   */
  events(dest: string, onEvent: (event: AdminEvent) => void): EventsHandle {
    const header = encodeHeader({ method: 'admin.Events', arg: '', source: this.source, dest });
    const decoder = new EventStreamDecoder();
    const sock = net.connect(this.socketPath);
    let closedByUs = false;
    let establishedSeen = false;
    let resolveEst!: () => void;
    let rejectEst!: (e: Error) => void;
    let resolveDone!: () => void;
    let rejectDone!: (e: Error) => void;
    const established = new Promise<void>((res, rej) => ((resolveEst = res), (rejectEst = rej)));
    const done = new Promise<void>((res, rej) => ((resolveDone = res), (rejectDone = rej)));
    // Either may be ignored by the caller; do not let that become an unhandled rejection.
    established.catch(() => {});
    done.catch(() => {});
    const fail = (err: Error) => {
      rejectEst(err);
      rejectDone(err);
      sock.destroy();
    };
    sock.on('connect', () => sock.end(header));
    sock.on('data', (chunk: Buffer) => {
      try {
        for (const item of decoder.push(chunk)) {
          if (item.kind === 'error') return fail(errorFromReply(item.name, item.message, item.traceback));
          if (!establishedSeen && item.event.event === 'connection-established') {
            establishedSeen = true;
            resolveEst();
          }
          onEvent(item.event);
        }
      } catch (err) {
        fail(err as Error);
      }
    });
    sock.on('error', (err) => {
      if (!closedByUs) fail(new QubesDaemonCommunicationError(`admin.Events: ${err.message}`));
    });
    sock.on('close', () => {
      try {
        decoder.end();
      } catch (err) {
        if (!closedByUs) return fail(err as Error);
      }
      if (!establishedSeen) rejectEst(new QubesDaemonCommunicationError('admin.Events: connection closed before it was established'));
      resolveDone();
    });
    return {
      established,
      done,
      close: () => {
        closedByUs = true;
        sock.destroy();
      },
    };
  }
}
