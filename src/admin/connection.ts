/**
 * One admin API connection on the server side: reads the header (bounded,
 * with a timeout), then either buffers the payload (at most 64 KiB in all)
 * until the client half-closes, streams it to a streaming method, or starts
 * an events stream; writes one reply and closes. Any framing error drops
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
  /** Unsent event bytes after which a slow events client is dropped. */
  readonly maxEventBacklogBytes: number;
  /** How long to wait for the client's EOF after the reply was sent. */
  readonly lingerMs: number;
  /** Streaming calls: a client sending fewer bytes than this in a window (while the method was reading) is dropped. */
  readonly minStreamBytesPerWindow: number;
  readonly minStreamWindowMs: number;
}

export type ConnectionPhase = 'header' | 'payload' | 'running' | 'events' | 'done';

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

export function serveConnection(socket: Socket, ctx: DispatchContext, limits: ConnectionLimits, caller: Caller): Connection {
  const started = performance.now();
  const controller = lazyAbort();
  let phase: ConnectionPhase = 'header';
  let chunks: Buffer[] = [];
  let received = 0;
  let header: RequestHeader | undefined;
  let resolution: Resolution | undefined;
  /** Payload of a refused streaming call: read to the end, kept nowhere, no limit. */
  let discardPayload = false;
  let stream: Readable | undefined;
  let streamEnded = false;
  let timer: NodeJS.Timeout | undefined;
  /** Streaming: the minimum-rate window's timer. */
  let rateTimer: NodeJS.Timeout | undefined;
  let running = false;
  let closed = false;
  let settle: () => void = () => {};
  const finished = new Promise<void>((resolve) => (settle = resolve));
  let socketClosed: () => void = () => {};
  const closedPromise = new Promise<void>((resolve) => (socketClosed = resolve));

  const clearTimer = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
  };
  const clearRateTimer = () => {
    if (rateTimer) clearTimeout(rateTimer);
    rateTimer = undefined;
  };
  const setTimer = (ms: number, onTimeout: () => void) => {
    clearTimer();
    timer = setTimeout(onTimeout, ms);
  };
  const maybeFinished = () => {
    if (closed && !running) settle();
  };

  /** `quiet`: not a fault of anyone (a probe that connects and closes), logged with --debug only. */
  function drop(reason: string, quiet = false): void {
    if (phase === 'done' && socket.destroyed) return;
    const line = `dropped connection${header ? ` (${header.method} from ${header.source})` : ''}: ${reason}`;
    if (!quiet) ctx.log.warn(line);
    else if (ctx.debug) ctx.log.info(line);
    phase = 'done';
    clearTimer();
    clearRateTimer();
    socket.destroy();
  }

  function sendReply(reply: Buffer | undefined): void {
    phase = 'done';
    clearTimer();
    clearRateTimer();
    if (stream && !streamEnded) stream.destroy();
    if (socket.destroyed || !socket.writable) return;
    if (reply) socket.end(reply);
    else socket.end();
    // Read (and throw away) whatever the client still sends, so that its EOF
    // arrives and the socket closes; give up after a while.
    socket.resume();
    setTimer(limits.lingerMs, () => socket.destroy());
  }

  function run(work: Promise<Buffer | undefined>): void {
    running = true;
    void finish(work);
  }

  /** One async function rather than a chain of four promises: every call passes here. */
  async function finish(work: Promise<Buffer | undefined>): Promise<void> {
    let reply: Buffer | undefined;
    try {
      reply = await work;
    } catch (err) {
      ctx.log.error(`internal error while serving a call: ${String(err)}`);
    }
    running = false;
    try {
      sendReply(reply);
    } catch (err) {
      // A throw while replying is a bug of ours: it ends this connection,
      // not the daemon (as an unhandled rejection would).
      ctx.log.error(`internal error while sending a reply: ${String(err)}`);
      socket.destroy();
    }
    maybeFinished();
  }

  /** Streaming: when the client last sent payload bytes (one timer re-armed lazily, not one per chunk). */
  let lastData = 0;
  function stallCheck(): void {
    const quiet = performance.now() - lastData;
    if (quiet < limits.requestTimeoutMs) setTimer(limits.requestTimeoutMs - quiet, stallCheck);
    else drop('client stalled while sending its payload');
  }

  /**
   * Streaming: the minimum data rate. A window in which the socket was paused
   * (the method was slower than the client) is not held against the client.
   */
  let windowBytes = 0;
  let pausedInWindow = false;
  function rateCheck(): void {
    rateTimer = undefined;
    if (phase !== 'running' || streamEnded) return;
    if (!pausedInWindow && !socket.isPaused() && windowBytes < limits.minStreamBytesPerWindow) {
      return drop(`client sends its payload too slowly: ${windowBytes} bytes in ${limits.minStreamWindowMs} ms, the minimum is ${limits.minStreamBytesPerWindow}`);
    }
    windowBytes = 0;
    pausedInWindow = false;
    rateTimer = setTimeout(rateCheck, limits.minStreamWindowMs);
  }

  function startStreaming(h: RequestHeader, res: Resolution, rest: Buffer): void {
    phase = 'running';
    windowBytes = rest.length;
    rateTimer = setTimeout(rateCheck, limits.minStreamWindowMs);
    const idle = () => {
      if (streamEnded) return;
      lastData = performance.now();
      setTimer(limits.requestTimeoutMs, stallCheck);
    };
    stream = new Readable({
      // A few MiB in flight, so receiving overlaps with the method's writing
      // (the 16 KiB default paused the socket for nearly every chunk).
      highWaterMark: 4 << 20,
      read: () => {
        if (phase === 'running' && socket.isPaused()) {
          socket.resume();
          idle();
        }
      },
    });
    // A dropped or vanished client destroys the stream with an error; a method
    // that stopped reading (aborted, refused) no longer listens, and an
    // 'error' nobody listens to would take the whole daemon down.
    stream.on('error', () => {});
    if (rest.length > 0) stream.push(rest);
    idle();
    run(executeCall(ctx, h, caller, res, stream, controller, started));
  }

  function startEvents(h: RequestHeader, spec: Extract<MethodSpec, { kind: 'events' }>): void {
    phase = 'events';
    received = 0;
    const send: EventSend = (e) => {
      if (phase !== 'events' || socket.destroyed || !socket.writable) return false;
      if (socket.writableLength > limits.maxEventBacklogBytes) {
        drop('events client does not read');
        return false;
      }
      socket.write(encodeEvent(e.subject, e.event, e.pairs));
      return true;
    };
    run(runEvents(ctx, h, caller, spec, send, controller, started));
  }

  function onHeaderData(chunk: Buffer): void {
    const before = received;
    received += chunk.length;
    const nul = chunk.indexOf(0);
    if (nul < 0) {
      if (received > limits.maxRequestBytes) return drop('header larger than the request limit');
      chunks.push(chunk);
      return;
    }
    if (before + nul + 1 > limits.maxRequestBytes) return drop('header larger than the request limit');
    // Usually the whole header came in this chunk: no copy then.
    const headerBytes = chunks.length === 0 ? chunk.subarray(0, nul) : Buffer.concat([...chunks, chunk.subarray(0, nul)]);
    const rest = chunk.subarray(nul + 1);
    let h: RequestHeader;
    try {
      h = parseHeader(headerBytes);
    } catch (err) {
      return drop((err as Error).message);
    }
    chunks = [];
    header = h;
    clearTimer();
    const res = resolveMethod(ctx, h, caller);
    resolution = res;
    const kind = Object.hasOwn(ctx.methods, h.method) ? ctx.methods[h.method]!.kind : 'call';
    if ('spec' in res && res.spec.kind === 'events') return startEvents(h, res.spec);
    if ('spec' in res && res.spec.kind === 'streaming') return startStreaming(h, res, rest);
    if (kind === 'events') {
      // Refused events call: answer now, an events client may not half-close.
      phase = 'running';
      return run(executeCall(ctx, h, caller, res, Buffer.alloc(0), controller, started));
    }
    discardPayload = kind === 'streaming';
    phase = 'payload';
    setTimer(limits.requestTimeoutMs, () => drop('client too slow sending its request'));
    if (discardPayload) return;
    if (received > limits.maxRequestBytes) return drop('request larger than the limit');
    if (rest.length > 0) chunks.push(rest);
  }

  socket.on('data', (chunk: Buffer) => {
    switch (phase) {
      case 'header':
        return onHeaderData(chunk);
      case 'payload':
        if (discardPayload) return;
        received += chunk.length;
        if (received > limits.maxRequestBytes) return drop('request larger than the limit');
        chunks.push(chunk);
        return;
      case 'running':
        if (stream && !streamEnded) {
          lastData = performance.now();
          windowBytes += chunk.length;
          if (!stream.push(chunk)) {
            socket.pause();
            pausedInWindow = true;
            clearTimer();
          } else if (!timer) {
            setTimer(limits.requestTimeoutMs, stallCheck);
          }
        }
        return;
      case 'events':
        received += chunk.length;
        if (received > limits.maxRequestBytes) drop('events client sends data');
        return;
      case 'done':
        return;
    }
  });

  socket.on('end', () => {
    switch (phase) {
      case 'header':
        // An empty connection is how a tool asks whether a daemon answers: no warning for it.
        return received > 0 ? drop('request ended before the NUL after the header') : drop('empty request', true);
      case 'payload': {
        phase = 'running';
        clearTimer();
        const payload = Buffer.concat(chunks);
        chunks = [];
        return run(executeCall(ctx, header!, caller, resolution!, payload, controller, started));
      }
      case 'running':
        if (stream && !streamEnded) {
          streamEnded = true;
          clearTimer();
          clearRateTimer();
          stream.push(null);
        }
        return;
      default:
        return;
    }
  });

  socket.on('error', () => {
    // 'close' follows; a client going away is not the server's problem.
  });

  socket.on('close', () => {
    closed = true;
    clearTimer();
    clearRateTimer();
    if ((phase === 'payload' || phase === 'running') && header) {
      ctx.log.warn(`client of ${header.method} went away before the reply`);
    }
    // Only a method still running (or an events stream) may listen to the
    // signal; aborting one that exists costs a DOMException with a stack trace.
    if (running) controller.abort();
    if (stream && !streamEnded) stream.destroy(new Error('client disconnected before the end of the payload'));
    socketClosed();
    maybeFinished();
  });

  setTimer(limits.headerTimeoutMs, () => drop('header timeout'));

  return {
    get phase() {
      return phase;
    },
    finished,
    closed: closedPromise,
    abort: () => controller.abort(),
    drop,
  };
}
