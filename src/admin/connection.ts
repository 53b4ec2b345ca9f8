/**
 * One admin API connection on the server side: reads the header (bounded,
 * with a timeout), then either buffers the payload (at most 64 KiB in all)
 * until the client half-closes, streams it to a streaming method, starts
 * an events stream, or runs a reply-stream method (its reply written in
 * pieces as the client reads, until the client half-closes); writes one
 * reply and closes. Any framing error drops
 * the connection without a reply.
 */
import { Readable } from 'node:stream';
import type { Socket } from 'node:net';
import { parseHeader, type RequestHeader } from './protocol/header.js';
import { encodeEvent } from './protocol/reply.js';
import {
  executeCall,
  lazyAbort,
  resolveMethod,
  runEvents,
  runReplyStream,
  type Caller,
  type DispatchContext,
  type EventSend,
  type MethodSpec,
  type Resolution,
} from './dispatch.js';

export interface ConnectionLimits {
  /** From accept to the end of the header. */
  readonly headerTimeoutMs: number;
  /** Ordinary calls: from the header to the end of the payload; streaming calls: longest silence of the client. */
  readonly requestTimeoutMs: number;
  /** Header, NUL and payload of an ordinary call. */
  readonly maxRequestBytes: number;
  /** Unsent event bytes after which a slow events client is dropped. A streamed reply waits for the client instead, at most requestTimeoutMs per write. */
  readonly maxEventBacklogBytes: number;
  /** How long to wait for the client's EOF after the reply was sent. */
  readonly lingerMs: number;
  /** Streaming calls: a client sending fewer bytes than this in a window (while the method was reading) is dropped. */
  readonly minStreamBytesPerWindow: number;
  readonly minStreamWindowMs: number;
}

/** `replying`: a reply-stream method writes its reply (the request is complete with the header). */
export type ConnectionPhase = 'header' | 'payload' | 'running' | 'events' | 'replying' | 'done';

export interface Connection {
  readonly phase: ConnectionPhase;
  /** Resolves once the socket is closed and no method runs for it any more. */
  readonly finished: Promise<void>;
  /** Resolves once the socket is closed (a method may still run). */
  readonly closed: Promise<void>;
  /** Aborts the call's signal (ends an events stream; tells a method to give up). */
  abort(): void;
  /** Destroys the socket without a reply. */
  drop(reason: string): void;
}

/** Called once the connection is finished (see Connection.finished). */
export type OnFinished = (conn: Connection) => void;

export function serveConnection(
  socket: Socket,
  ctx: DispatchContext,
  limits: ConnectionLimits,
  caller: Caller,
  onFinished?: OnFinished,
): Connection {
  return new ServerConnection(socket, ctx, limits, caller, onFinished);
}

/**
 * One object per connection, its steps as methods and its timers calling
 * module functions with the connection as argument: every call makes one,
 * and what it allocates (closures, promises) is what the young-generation
 * collections of a busy daemon copy.
 */
class ServerConnection implements Connection {
  phase: ConnectionPhase = 'header';
  private readonly started = performance.now();
  private readonly controller = lazyAbort();
  private chunks: Buffer[] = [];
  private received = 0;
  private header: RequestHeader | undefined;
  private resolution: Resolution | undefined;
  /** Payload of a refused streaming call: read to the end, kept nowhere, no limit. */
  private discardPayload = false;
  private stream: Readable | undefined;
  private streamEnded = false;
  private timer: NodeJS.Timeout | undefined;
  /** Streaming: the minimum-rate window's timer. */
  private rateTimer: NodeJS.Timeout | undefined;
  private running = false;
  private socketGone = false;
  private isFinished = false;
  /** Made when first asked for (the server asks only when it shuts down). */
  private finishedWaiters: (() => void)[] | undefined;
  private closedWaiters: (() => void)[] | undefined;
  /** Streaming: when the client last sent payload bytes (one timer re-armed lazily, not one per chunk). */
  private lastData = 0;
  /** Streaming: bytes in the current minimum-rate window, and whether the socket was paused in it. */
  private windowBytes = 0;
  private pausedInWindow = false;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: DispatchContext,
    private readonly limits: ConnectionLimits,
    private readonly caller: Caller,
    private readonly onFinished: OnFinished | undefined,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    // 'close' follows; a client going away is not the server's problem.
    socket.on('error', ignore);
    socket.on('close', () => this.onClose());
    this.setTimer(limits.headerTimeoutMs, headerTimeout);
  }

  /** Resolves once the socket is closed and no method runs for it any more. */
  get finished(): Promise<void> {
    if (this.isFinished) return Promise.resolve();
    return new Promise<void>((resolve) => (this.finishedWaiters ??= []).push(resolve));
  }

  /** Resolves once the socket is closed (a method may still run). */
  get closed(): Promise<void> {
    if (this.socketGone) return Promise.resolve();
    return new Promise<void>((resolve) => (this.closedWaiters ??= []).push(resolve));
  }

  abort(): void {
    this.controller.abort();
  }

  /** `quiet`: not a fault of anyone (a probe that connects and closes), logged with --debug only. */
  drop(reason: string, quiet = false): void {
    if (this.phase === 'done' && this.socket.destroyed) return;
    const h = this.header;
    const line = `dropped connection${h ? ` (${h.method} from ${h.source})` : ''}: ${reason}`;
    if (!quiet) this.ctx.log.warn(line);
    else if (this.ctx.debug) this.ctx.log.info(line);
    this.phase = 'done';
    this.clearTimer();
    this.clearRateTimer();
    this.socket.destroy();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private clearRateTimer(): void {
    if (this.rateTimer) clearTimeout(this.rateTimer);
    this.rateTimer = undefined;
  }

  private setTimer(ms: number, onTimeout: (c: ServerConnection) => void): void {
    this.clearTimer();
    this.timer = setTimeout(onTimeout, ms, this);
  }

  private maybeFinished(): void {
    if (!this.socketGone || this.running || this.isFinished) return;
    this.isFinished = true;
    this.onFinished?.(this);
    const waiters = this.finishedWaiters;
    this.finishedWaiters = undefined;
    if (waiters) for (const w of waiters) w();
  }

  private sendReply(reply: Buffer | undefined): void {
    this.phase = 'done';
    this.clearTimer();
    this.clearRateTimer();
    const { socket } = this;
    if (this.stream && !this.streamEnded) this.stream.destroy();
    if (socket.destroyed || !socket.writable) return;
    if (reply) socket.end(reply);
    else socket.end();
    // Read (and throw away) whatever the client still sends, so that its EOF
    // arrives and the socket closes; give up after a while.
    socket.resume();
    this.setTimer(this.limits.lingerMs, lingerOver);
  }

  private run(work: Promise<Buffer | undefined>): void {
    this.running = true;
    void this.finish(work);
  }

  /** One async function rather than a chain of four promises: every call passes here. */
  private async finish(work: Promise<Buffer | undefined>): Promise<void> {
    let reply: Buffer | undefined;
    try {
      reply = await work;
    } catch (err) {
      this.ctx.log.error(`internal error while serving a call: ${String(err)}`);
    }
    this.running = false;
    try {
      this.sendReply(reply);
    } catch (err) {
      // A throw while replying is a bug of ours: it ends this connection,
      // not the daemon (as an unhandled rejection would).
      this.ctx.log.error(`internal error while sending a reply: ${String(err)}`);
      this.socket.destroy();
    }
    this.maybeFinished();
  }

  /** The reply is out and the client did not close in time. */
  lingerOver(): void {
    this.socket.destroy();
  }

  /** Streaming: the stall timer; re-armed for what is left of the timeout after the last data. */
  stallCheck(): void {
    const quiet = performance.now() - this.lastData;
    if (quiet < this.limits.requestTimeoutMs) this.setTimer(this.limits.requestTimeoutMs - quiet, stallCheck);
    else this.drop('client stalled while sending its payload');
  }

  /**
   * Streaming: the minimum data rate. A window in which the socket was paused
   * (the method was slower than the client) is not held against the client.
   */
  rateCheck(): void {
    this.rateTimer = undefined;
    if (this.phase !== 'running' || this.streamEnded) return;
    const { limits } = this;
    if (!this.pausedInWindow && !this.socket.isPaused() && this.windowBytes < limits.minStreamBytesPerWindow) {
      return this.drop(
        `client sends its payload too slowly: ${this.windowBytes} bytes in ${limits.minStreamWindowMs} ms, the minimum is ${limits.minStreamBytesPerWindow}`,
      );
    }
    this.windowBytes = 0;
    this.pausedInWindow = false;
    this.rateTimer = setTimeout(rateCheck, limits.minStreamWindowMs, this);
  }

  /** Streaming: the client sent nothing new since; wait for the stall timeout from now. */
  private streamIdle(): void {
    if (this.streamEnded) return;
    this.lastData = performance.now();
    this.setTimer(this.limits.requestTimeoutMs, stallCheck);
  }

  private startStreaming(h: RequestHeader, res: Resolution, rest: Buffer): void {
    this.phase = 'running';
    this.windowBytes = rest.length;
    this.rateTimer = setTimeout(rateCheck, this.limits.minStreamWindowMs, this);
    const stream = new Readable({
      // A few MiB in flight, so receiving overlaps with the method's writing
      // (the 16 KiB default paused the socket for nearly every chunk).
      highWaterMark: 4 << 20,
      read: () => {
        if (this.phase === 'running' && this.socket.isPaused()) {
          this.socket.resume();
          this.streamIdle();
        }
      },
    });
    this.stream = stream;
    // A dropped or vanished client destroys the stream with an error; a method
    // that stopped reading (aborted, refused) no longer listens, and an
    // 'error' nobody listens to would take the whole daemon down.
    stream.on('error', ignore);
    if (rest.length > 0) stream.push(rest);
    this.streamIdle();
    this.run(executeCall(this.ctx, h, this.caller, res, stream, this.controller, this.started));
  }

  private startEvents(h: RequestHeader, spec: Extract<MethodSpec, { kind: 'events' }>): void {
    this.phase = 'events';
    this.received = 0;
    const { socket, limits } = this;
    const send: EventSend = (e) => {
      if (this.phase !== 'events' || socket.destroyed || !socket.writable) return false;
      if (socket.writableLength > limits.maxEventBacklogBytes) {
        this.drop('events client does not read');
        return false;
      }
      socket.write(encodeEvent(e.subject, e.event, e.pairs));
      return true;
    };
    this.run(runEvents(this.ctx, h, this.caller, spec, send, this.controller, this.started));
  }

  private startReplyStream(h: RequestHeader, spec: Extract<MethodSpec, { kind: 'reply-stream' }>): void {
    this.phase = 'replying';
    this.received = 0;
    this.run(runReplyStream(this.ctx, h, this.caller, spec, (bytes) => this.writeReply(bytes), this.controller, this.started));
  }

  /**
   * A piece of a streamed reply, with the socket's backpressure: resolves once
   * the socket is done with `bytes` (handed to the kernel), so the method may
   * reuse them and send more. A client that reads nothing for
   * requestTimeoutMs is dropped (the method then learns it from false and its
   * signal).
   */
  private writeReply(bytes: Buffer): Promise<boolean> {
    const { socket } = this;
    const { signal } = this.controller;
    // Ended (the client closed its side, the server shuts down): nothing more goes out.
    if (this.phase !== 'replying' || signal.aborted || socket.destroyed || !socket.writable) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      let settled = false;
      const done = (ok: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.off('close', onClose);
        signal.removeEventListener('abort', onAbort);
        resolve(ok);
      };
      // Not 'drain': write() may report room while part of `bytes` still waits in the socket's queue.
      const onWritten = (err?: Error | null) => done(!err && this.phase === 'replying' && !signal.aborted);
      const onClose = () => done(false);
      // The client half-closed (it stops reading): no waiting for a flush that may never come. On
      // false the method ends its reply and leaves `bytes` as they are (they may still be queued).
      const onAbort = () => done(false);
      const timer = setTimeout(() => {
        this.drop('client stopped reading the reply');
        done(false);
      }, this.limits.requestTimeoutMs);
      socket.on('close', onClose);
      signal.addEventListener('abort', onAbort, { once: true });
      socket.write(bytes, onWritten);
    });
  }

  private onHeaderData(chunk: Buffer): void {
    const { limits, ctx } = this;
    const before = this.received;
    this.received += chunk.length;
    const nul = chunk.indexOf(0);
    if (nul < 0) {
      if (this.received > limits.maxRequestBytes) return this.drop('header larger than the request limit');
      this.chunks.push(chunk);
      return;
    }
    if (before + nul + 1 > limits.maxRequestBytes) return this.drop('header larger than the request limit');
    // Usually the whole header came in this chunk: no copy then.
    const headerBytes = this.chunks.length === 0 ? chunk.subarray(0, nul) : Buffer.concat([...this.chunks, chunk.subarray(0, nul)]);
    const rest = chunk.subarray(nul + 1);
    let h: RequestHeader;
    try {
      h = parseHeader(headerBytes);
    } catch (err) {
      return this.drop((err as Error).message);
    }
    this.chunks = [];
    this.header = h;
    this.clearTimer();
    const res = resolveMethod(ctx, h, this.caller);
    this.resolution = res;
    const kind = Object.hasOwn(ctx.methods, h.method) ? ctx.methods[h.method]!.kind : 'call';
    if ('spec' in res && res.spec.kind === 'events') return this.startEvents(h, res.spec);
    if ('spec' in res && res.spec.kind === 'streaming') return this.startStreaming(h, res, rest);
    if ('spec' in res && res.spec.kind === 'reply-stream') {
      if (rest.length > 0) return this.drop(`${h.method} takes no payload`);
      return this.startReplyStream(h, res.spec);
    }
    if (kind === 'events' || kind === 'reply-stream') {
      // Refused events or reply-stream call: answer now, its client may not half-close.
      this.phase = 'running';
      return this.run(executeCall(ctx, h, this.caller, res, Buffer.alloc(0), this.controller, this.started));
    }
    this.discardPayload = kind === 'streaming';
    this.phase = 'payload';
    this.setTimer(limits.requestTimeoutMs, requestTooSlow);
    if (this.discardPayload) return;
    if (this.received > limits.maxRequestBytes) return this.drop('request larger than the limit');
    if (rest.length > 0) this.chunks.push(rest);
  }

  private onData(chunk: Buffer): void {
    switch (this.phase) {
      case 'header':
        return this.onHeaderData(chunk);
      case 'payload':
        if (this.discardPayload) return;
        this.received += chunk.length;
        if (this.received > this.limits.maxRequestBytes) return this.drop('request larger than the limit');
        this.chunks.push(chunk);
        return;
      case 'running': {
        const { stream } = this;
        if (stream && !this.streamEnded) {
          this.lastData = performance.now();
          this.windowBytes += chunk.length;
          if (!stream.push(chunk)) {
            this.socket.pause();
            this.pausedInWindow = true;
            this.clearTimer();
          } else if (!this.timer) {
            this.setTimer(this.limits.requestTimeoutMs, stallCheck);
          }
        }
        return;
      }
      case 'events':
        this.received += chunk.length;
        if (this.received > this.limits.maxRequestBytes) this.drop('events client sends data');
        return;
      case 'replying':
        // The request was the header alone; a client sending more is broken.
        this.drop(`${this.header!.method} takes no payload`);
        return;
      case 'done':
        return;
    }
  }

  private onEnd(): void {
    switch (this.phase) {
      case 'header':
        // An empty connection is how a tool asks whether a daemon answers: no warning for it.
        return this.received > 0 ? this.drop('request ended before the NUL after the header') : this.drop('empty request', true);
      case 'payload': {
        this.phase = 'running';
        this.clearTimer();
        const payload = Buffer.concat(this.chunks);
        this.chunks = [];
        return this.run(executeCall(this.ctx, this.header!, this.caller, this.resolution!, payload, this.controller, this.started));
      }
      case 'replying':
        // The client keeps its side open while it reads; closing it ends the call (an export released).
        this.controller.abort();
        return;
      case 'running':
        if (this.stream && !this.streamEnded) {
          this.streamEnded = true;
          this.clearTimer();
          this.clearRateTimer();
          this.stream.push(null);
        }
        return;
      default:
        return;
    }
  }

  private onClose(): void {
    this.socketGone = true;
    this.clearTimer();
    this.clearRateTimer();
    const h = this.header;
    if ((this.phase === 'payload' || this.phase === 'running') && h) {
      this.ctx.log.warn(`client of ${h.method} went away before the reply`);
    }
    // Only a method still running (or an events stream) may listen to the
    // signal; aborting one that exists costs a DOMException with a stack trace.
    if (this.running) this.controller.abort();
    if (this.stream && !this.streamEnded) this.stream.destroy(new Error('client disconnected before the end of the payload'));
    const waiters = this.closedWaiters;
    this.closedWaiters = undefined;
    if (waiters) for (const w of waiters) w();
    this.maybeFinished();
  }
}

function ignore(): void {}
function headerTimeout(c: ServerConnection): void {
  c.drop('header timeout');
}
function requestTooSlow(c: ServerConnection): void {
  c.drop('client too slow sending its request');
}
function lingerOver(c: ServerConnection): void {
  c.lingerOver();
}
function stallCheck(c: ServerConnection): void {
  c.stallCheck();
}
function rateCheck(c: ServerConnection): void {
  c.rateCheck();
}
