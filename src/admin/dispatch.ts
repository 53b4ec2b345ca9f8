/**
 * Methods and their dispatch, shared by the socket server and in-process
 * callers (the CLI): the method table type, the policy check, turning a
 * method's result or exception into reply bytes, and the one log line per
 * call. Nothing here knows about sockets.
 */
import { Readable } from 'node:stream';
import { PermissionDenied, ProtocolError, QubesException } from '../storage/errors.js';
import { printable } from '../storage/volume.js';
import { encodeError, encodeOk, type AdminEvent } from './protocol/reply.js';
import { MAX_REQUEST_BYTES, FramingError, encodeHeader, validateHeader, type RequestHeader } from './protocol/header.js';
import { DEFAULT_POLICY, findAllowingRule, mayRelay, type AccessPolicy } from './policy.js';
import { checkShape, type MethodShape } from './method-shape.js';

export interface AdminLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** What every method receives besides its payload. */
export interface CallContext extends RequestHeader {
  /** Aborted when the client goes away (or the server gives up on the call). */
  readonly signal: AbortSignal;
  readonly log: AdminLog;
  /** Who calls (kernel credentials; in-process: this process), for methods that outlive their call (internal imports). */
  readonly caller?: Caller;
  /**
   * Whether the policy lets this call's source make another call (METHOD on
   * DEST, with ARG): for a reply that gathers what several calls give
   * (admin.vm.ListDetails), so that it carries no more than those calls would.
   */
  readonly mayCall?: (method: string, dest: string, arg?: string) => boolean;
}

export interface AdminCall extends CallContext {
  readonly payload: Buffer;
}

export interface AdminStreamCall extends CallContext {
  /** The payload as it arrives; no size limit. */
  readonly payload: Readable;
}

export type AdminResult = string | Buffer | void;
export type AdminMethod = (call: AdminCall) => Promise<AdminResult>;
export type AdminStreamMethod = (call: AdminStreamCall) => Promise<AdminResult>;
/** Sends one event frame; returns false when the connection is gone. */
export type EventSend = (event: AdminEvent) => boolean;
/** Streams events through `send` until `call.signal` aborts, then returns. */
export type AdminEventsMethod = (call: AdminCall, send: EventSend) => Promise<void>;
/**
 * Writes the next bytes of a streamed reply; resolves once the socket is done
 * with them (the caller may reuse `bytes` then, and send more), to false when
 * the connection is gone (the caller stops, and leaves `bytes` as they are:
 * they may still be queued).
 */
export type ReplyWrite = (bytes: Buffer) => Promise<boolean>;
/**
 * Writes its result in pieces through `write` (exports): the success header
 * goes out before the first piece. A throw before the first piece is an
 * ordinary error reply; after it, the connection is just closed, so the
 * reply's own format must let the client tell a cut from its end.
 */
export type AdminReplyStreamMethod = (call: AdminCall, write: ReplyWrite) => Promise<void>;

/**
 * One method: how its payload and reply travel (`kind`), its handler, and
 * its declared shape (method-shape.ts), which the dispatcher enforces
 * before the handler runs. Without a shape nothing is checked for it (ad-hoc
 * tables, such as tests'); every method of the daemon's table declares one.
 */
export type MethodSpec =
  | { readonly kind: 'call'; readonly handler: AdminMethod; readonly shape?: MethodShape | undefined }
  | { readonly kind: 'streaming'; readonly handler: AdminStreamMethod; readonly shape?: MethodShape | undefined }
  | { readonly kind: 'events'; readonly handler: AdminEventsMethod; readonly shape?: MethodShape | undefined }
  | { readonly kind: 'reply-stream'; readonly handler: AdminReplyStreamMethod; readonly shape?: MethodShape | undefined };

/** Method name (without `+ARG`) -> spec. Extend by spreading tables together. */
export type MethodTable = Record<string, MethodSpec>;

/** An ordinary method: payload buffered, at most 64 KiB with the header; `shape.payload` is `none` or `bounded`. */
export function method(shape: MethodShape, handler: AdminMethod): MethodSpec;
/** Undeclared (nothing checked before the handler). */
export function method(handler: AdminMethod): MethodSpec;
export function method(a: MethodShape | AdminMethod, b?: AdminMethod): MethodSpec {
  return typeof a === 'function' ? { kind: 'call', handler: a } : { kind: 'call', handler: b!, shape: a };
}

/** A method that reads its payload as a stream (imports); `shape.payload` is `streaming`. */
export function streamingMethod(shape: MethodShape, handler: AdminStreamMethod): MethodSpec;
export function streamingMethod(handler: AdminStreamMethod): MethodSpec;
export function streamingMethod(a: MethodShape | AdminStreamMethod, b?: AdminStreamMethod): MethodSpec {
  return typeof a === 'function' ? { kind: 'streaming', handler: a } : { kind: 'streaming', handler: b!, shape: a };
}

/** A method whose reply is a stream of event frames (admin.Events); its payload is not read. */
export function eventsMethod(shape: MethodShape, handler: AdminEventsMethod): MethodSpec;
export function eventsMethod(handler: AdminEventsMethod): MethodSpec;
export function eventsMethod(a: MethodShape | AdminEventsMethod, b?: AdminEventsMethod): MethodSpec {
  return typeof a === 'function' ? { kind: 'events', handler: a } : { kind: 'events', handler: b!, shape: a };
}

/** A method whose reply is written in pieces as it is made (exports); its payload is not read. */
export function replyStreamMethod(shape: MethodShape, handler: AdminReplyStreamMethod): MethodSpec {
  return { kind: 'reply-stream', handler, shape };
}

/**
 * Who makes a call, as far as the daemon can know it: the kernel's
 * credentials of the socket's peer (the server fills this in), or the
 * process itself for in-process calls.
 */
export interface Caller {
  /** Undefined when the credentials could not be read (then `refusal` says why). */
  readonly uid: number | undefined;
  readonly pid: number | undefined;
  /** Why this caller may not call at all (not root nor in the socket's group, credentials unreadable). */
  readonly refusal?: string;
  /** May name any SOURCE without a relay rule: root (as qrexec runs) or the daemon's own user. */
  readonly relays: boolean;
}

/** The process calling itself (the tools without a daemon): it holds the state already. */
export function inProcessCaller(): Caller {
  return { uid: process.getuid?.(), pid: process.pid, relays: true };
}

/** Where a call's abort signal comes from: an AbortController, or a `lazyAbort()`. */
export interface AbortSource {
  readonly signal: AbortSignal;
}

/**
 * A call's abort, made only when something asks for its signal: most calls
 * never look at it, and an AbortController with its signal is two objects
 * and an event target per call. Aborting before the signal exists is
 * remembered: the signal is then made already aborted.
 */
export function lazyAbort(): AbortSource & { abort(): void } {
  let controller: AbortController | undefined;
  let aborted = false;
  return {
    get signal() {
      if (!controller) {
        controller = new AbortController();
        if (aborted) controller.abort();
      }
      return controller.signal;
    },
    abort() {
      aborted = true;
      controller?.abort();
    },
  };
}

export interface DispatchOptions {
  readonly methods: MethodTable;
  /** Undefined: DEFAULT_POLICY (only dom0 may call). */
  readonly policy?: AccessPolicy | undefined;
  readonly log?: AdminLog;
  /** Send stack traces in error replies and log them. Off by default. */
  readonly debug?: boolean;
}

export interface DispatchContext {
  methods: MethodTable;
  policy: AccessPolicy | undefined;
  log: AdminLog;
  debug: boolean;
}

/** Where a buffered log's text goes (one call per batch of lines). */
export type LogSink = (text: string) => void;

/**
 * A log whose lines are gathered and written together once per turn of the
 * event loop (setImmediate), at the latest when `maxPendingBytes` are waiting,
 * and at process exit: one write(2) for many calls instead of one per call
 * (stderr is synchronous for files and pipes). A process killed with SIGKILL
 * loses at most the lines of its last turn. Errors go out at once.
 */
export function bufferedLog(sink: LogSink, maxPendingBytes = 64 * 1024): AdminLog & { flush(): void } {
  let pending: string[] = [];
  let pendingBytes = 0;
  let scheduled = false;
  let hooked = false;
  const flush = (): void => {
    scheduled = false;
    if (pending.length === 0) return;
    const text = pending.join('');
    pending = [];
    pendingBytes = 0;
    sink(text);
  };
  const add = (line: string, now: boolean): void => {
    pending.push(line);
    pendingBytes += line.length;
    if (!hooked) {
      hooked = true;
      process.once('exit', flush);
    }
    if (now || pendingBytes >= maxPendingBytes) return flush();
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  return {
    info: (m) => add(`qubesd: ${m}\n`, false),
    warn: (m) => add(`qubesd: warning: ${m}\n`, false),
    error: (m) => add(`qubesd: error: ${m}\n`, true),
    flush,
  };
}

/** Logs to stderr, one line each, written in batches (see bufferedLog). */
export const stderrLog: AdminLog = bufferedLog((text) => process.stderr.write(text));

export const silentLog: AdminLog = { info() {}, warn() {}, error() {} };

export function createDispatchContext(opts: DispatchOptions): DispatchContext {
  return { methods: opts.methods, policy: opts.policy, log: opts.log ?? stderrLog, debug: opts.debug ?? false };
}

export type Resolution = { readonly spec: MethodSpec } | { readonly error: QubesException };

/**
 * The caller first (who may use the socket at all, who may name a source
 * other than dom0), then the policy (so that a caller without rights cannot
 * probe which methods exist), then the table. Every failure is
 * PermissionDenied, as the reference daemon answers for methods it does not
 * serve.
 */
export function resolveMethod(ctx: DispatchContext, h: RequestHeader, caller: Caller): Resolution {
  const policy = ctx.policy ?? DEFAULT_POLICY;
  if (caller.refusal !== undefined) return { error: new PermissionDenied(caller.refusal) };
  if (h.source !== 'dom0' && !caller.relays && !(caller.uid !== undefined && mayRelay(policy, caller.uid, h.source))) {
    return {
      error: new PermissionDenied(
        `uid ${caller.uid} may not call as ${h.source}: only root relays calls for other domains, or a user an @relay line of the policy names`,
      ),
    };
  }
  const spec = Object.hasOwn(ctx.methods, h.method) ? ctx.methods[h.method] : undefined;
  // The declaration lets rules name classes of methods (@admin-local-ro, ...).
  if (!findAllowingRule(policy, { ...h, shape: spec?.shape })) {
    return { error: new PermissionDenied(`${h.method} is not allowed for ${h.source} by ${policy.origin}`) };
  }
  if (!spec) return { error: new PermissionDenied(`no such method: ${h.method}`) };
  return { spec };
}

/** The class name and message an exception goes out as: a QubesException as it is, anything else as a generic one. */
export function wireError(err: unknown): { name: string; message: string } {
  if (err instanceof QubesException) return { name: err.qubesName, message: err.message };
  return { name: 'QubesException', message: 'An internal error occurred in qubesd; see its log' };
}

/** The reply bytes for an exception, and the class name it went out as. */
export function errorReply(ctx: DispatchContext, h: RequestHeader, caller: Caller, err: unknown): { reply: Buffer; name: string } {
  const trace = ctx.debug && err instanceof Error ? (err.stack ?? '') : '';
  if (!(err instanceof QubesException)) {
    ctx.log.error(
      `unexpected error in ${describe(h, caller)}: ${err instanceof Error ? (ctx.debug ? err.stack : `${err.name}: ${err.message}`) : String(err)}`,
    );
  }
  const { name, message } = wireError(err);
  return { reply: encodeError(name, message, trace), name };
}

/** The one line logged per call; the caller's uid and pid last (`-` when unknown). */
export function logCall(
  ctx: DispatchContext,
  h: RequestHeader,
  caller: Caller,
  result: string,
  startedMs: number,
  reason?: string,
): void {
  const why = reason === undefined ? '' : ` reason=${JSON.stringify(printable(reason))}`;
  const line =
    `call ${describe(h)} result=${result}${why} duration_ms=${Math.round(performance.now() - startedMs)}` +
    ` ${describeCaller(caller)}`;
  if (result === 'ok') ctx.log.info(line);
  else ctx.log.warn(line);
}

/** The call's fields for a log line; untrusted bytes are escaped so a name cannot forge log lines. */
function describe(h: RequestHeader, caller?: Caller): string {
  const fields = `method=${printable(h.method)} arg=${h.arg === '' ? '-' : printable(h.arg)} source=${printable(h.source)} dest=${printable(h.dest)}`;
  return caller ? `${fields} ${describeCaller(caller)}` : fields;
}

export function describeCaller(caller: Caller): string {
  return `uid=${caller.uid ?? '-'} pid=${caller.pid ?? '-'}`;
}

/**
 * What a method receives. A class, with the signal and mayCall made when
 * first read: Info, the most frequent call, reads neither.
 */
class Call<P extends Buffer | Readable> implements CallContext {
  readonly method: string;
  readonly arg: string;
  readonly source: string;
  readonly dest: string;
  /** The policy when the call started: one call's answers all follow one policy, even across a reload. */
  private readonly policy: AccessPolicy;
  private may: ((method: string, dest: string, arg?: string) => boolean) | undefined;
  constructor(
    private readonly ctx: DispatchContext,
    h: RequestHeader,
    readonly caller: Caller,
    private readonly abort: AbortSource,
    readonly payload: P,
  ) {
    this.method = h.method;
    this.arg = h.arg;
    this.source = h.source;
    this.dest = h.dest;
    this.policy = ctx.policy ?? DEFAULT_POLICY;
  }
  get signal(): AbortSignal {
    return this.abort.signal;
  }
  get log(): AdminLog {
    return this.ctx.log;
  }
  /** A function of its own (methods hand it on), bound to this call's source and policy. */
  get mayCall(): (method: string, dest: string, arg?: string) => boolean {
    const { ctx, source, policy } = this;
    this.may ??= (m, d, a = '') =>
      findAllowingRule(policy, {
        source,
        method: m,
        arg: a,
        dest: d,
        shape: Object.hasOwn(ctx.methods, m) ? ctx.methods[m]!.shape : undefined,
      }) !== undefined;
    return this.may;
  }
}

/**
 * Runs a resolved ordinary or streaming call and returns the reply bytes;
 * never throws. Logs the call line. Events methods go through `runEvents`.
 */
export async function executeCall(
  ctx: DispatchContext,
  h: RequestHeader,
  caller: Caller,
  resolution: Resolution,
  payload: Buffer | Readable,
  abort: AbortSource,
  startedMs: number,
): Promise<Buffer> {
  try {
    if ('error' in resolution) throw resolution.error;
    const { spec } = resolution;
    let result: AdminResult;
    if (spec.shape && spec.kind !== 'events' && spec.kind !== 'reply-stream') await checkShape(spec.shape, h, Buffer.isBuffer(payload) ? payload : undefined);
    if (spec.kind === 'streaming') {
      const stream = Buffer.isBuffer(payload) ? Readable.from(payload.length ? [payload] : []) : payload;
      result = await spec.handler(new Call(ctx, h, caller, abort, stream));
    } else if (spec.kind === 'call') {
      if (!Buffer.isBuffer(payload)) throw new TypeError(`${h.method} takes a buffered payload`);
      result = await spec.handler(new Call(ctx, h, caller, abort, payload));
    } else {
      throw new ProtocolError(`${h.method} streams ${spec.kind === 'events' ? 'events' : 'its reply'} and needs a connection`);
    }
    const reply = encodeOk(result);
    logCall(ctx, h, caller, 'ok', startedMs);
    return reply;
  } catch (err) {
    const { reply, name } = errorReply(ctx, h, caller, err);
    logCall(ctx, h, caller, name, startedMs, err instanceof Error ? err.message : String(err));
    return reply;
  }
}

/**
 * Runs an events method. Returns error reply bytes when it failed before
 * sending any frame, else undefined (the connection is then just closed).
 */
export async function runEvents(
  ctx: DispatchContext,
  h: RequestHeader,
  caller: Caller,
  spec: Extract<MethodSpec, { kind: 'events' }>,
  send: EventSend,
  abort: AbortSource,
  startedMs: number,
): Promise<Buffer | undefined> {
  let sent = false;
  const counting: EventSend = (e) => {
    sent = true;
    return send(e);
  };
  try {
    if (spec.shape) await checkShape(spec.shape, h, undefined);
    await spec.handler({ ...pickHeader(h), signal: abort.signal, log: ctx.log, payload: Buffer.alloc(0) }, counting);
    logCall(ctx, h, caller, 'ok', startedMs);
    return undefined;
  } catch (err) {
    const { reply, name } = errorReply(ctx, h, caller, err);
    logCall(ctx, h, caller, name, startedMs, err instanceof Error ? err.message : String(err));
    return sent ? undefined : reply;
  }
}

/**
 * Runs a reply-stream method. Returns error reply bytes when it failed before
 * writing anything, else undefined (the connection is then just closed).
 */
export async function runReplyStream(
  ctx: DispatchContext,
  h: RequestHeader,
  caller: Caller,
  spec: Extract<MethodSpec, { kind: 'reply-stream' }>,
  write: ReplyWrite,
  abort: AbortSource,
  startedMs: number,
): Promise<Buffer | undefined> {
  let sent = false;
  const first: ReplyWrite = (bytes) => {
    if (sent) return write(bytes);
    sent = true;
    return write(Buffer.concat([encodeOk(), bytes]));
  };
  try {
    if (spec.shape) await checkShape(spec.shape, h, Buffer.alloc(0));
    await spec.handler(new Call(ctx, h, caller, abort, Buffer.alloc(0)), first);
    logCall(ctx, h, caller, 'ok', startedMs);
    return sent ? undefined : encodeOk();
  } catch (err) {
    const { reply, name } = errorReply(ctx, h, caller, err);
    logCall(ctx, h, caller, name, startedMs, err instanceof Error ? err.message : String(err));
    return sent ? undefined : reply;
  }
}

export interface InProcessRequest {
  readonly method: string;
  readonly arg?: string;
  /** Defaults to dom0. */
  readonly source?: string;
  readonly dest: string;
}

/**
 * Runs one call in-process, through the same checks, policy, error mapping
 * and logging as a socket call, and returns the reply bytes. Framing errors
 * (bad header fields, an ordinary call over 64 KiB) throw FramingError,
 * where the server would drop the connection.
 */
export async function runCall(
  ctx: DispatchContext,
  req: InProcessRequest,
  payload: Buffer | string | Readable = Buffer.alloc(0),
  signal: AbortSignal = new AbortController().signal,
): Promise<Buffer> {
  const started = performance.now();
  const h = validateHeader({ method: req.method, arg: req.arg ?? '', source: req.source ?? 'dom0', dest: req.dest });
  const caller = inProcessCaller();
  const resolution = resolveMethod(ctx, h, caller);
  let body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (!('spec' in resolution && resolution.spec.kind === 'streaming')) {
    const limit = MAX_REQUEST_BYTES - encodeHeader(h).length;
    body = Buffer.isBuffer(body) ? body : await collect(body, limit);
    if (body.length > limit) throw new FramingError('request larger than 64 KiB');
  }
  return executeCall(ctx, h, caller, resolution, body, { signal }, started);
}

function pickHeader(h: RequestHeader): RequestHeader {
  return { method: h.method, arg: h.arg, source: h.source, dest: h.dest };
}

async function collect(stream: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of stream) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
    total += b.length;
    if (total > limit) throw new FramingError('request larger than 64 KiB');
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
