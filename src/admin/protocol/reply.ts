/**
 * Reply framing of the admin API, both directions:
 * - success: `0x30 0x00` then the result bytes;
 * - error:   `0x32 0x00` class NUL traceback NUL message NUL;
 * - event:   `0x31 0x00` subject NUL event NUL (key NUL value NUL)* NUL,
 *            only on `admin.Events` connections.
 */
import { ProtocolError } from '../../storage/errors.js';

/** One event as it travels on an `admin.Events` connection. */
export interface AdminEvent {
  /** Domain name; empty for global events (and `connection-established`). */
  readonly subject: string;
  readonly event: string;
  readonly pairs: ReadonlyArray<readonly [string, string]>;
}

export type EventPairs = Record<string, string> | Iterable<readonly [string, string]>;

export type Reply =
  | { readonly kind: 'ok'; readonly result: Buffer }
  | { readonly kind: 'error'; readonly name: string; readonly traceback: string; readonly message: string };

const OK = 0x30;
const EVENT = 0x31;
const ERROR = 0x32;

const CLASS_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Success reply. */
export function encodeOk(result?: string | Uint8Array | void): Buffer {
  if (typeof result === 'string') {
    // One allocation and one copy: the header, then the text written in place.
    const out = Buffer.allocUnsafe(2 + Buffer.byteLength(result, 'utf8'));
    out[0] = OK;
    out[1] = 0;
    out.write(result, 2, 'utf8');
    return out;
  }
  const out = Buffer.allocUnsafe(2 + (result?.length ?? 0));
  out[0] = OK;
  out[1] = 0;
  if (result) out.set(result, 2);
  return out;
}

/**
 * Error reply. NUL bytes in the traceback or message would break the frame,
 * so they become U+FFFD; a class name that is not an identifier becomes
 * `QubesException`.
 */
export function encodeError(name: string, message: string, traceback = ''): Buffer {
  const cls = CLASS_NAME_RE.test(name) ? name : 'QubesException';
  // Qubes clients treat the message as a %-format (applied to the arguments
  // that may follow it): a literal '%' must be sent as '%%'.
  const format = noNul(message).replace(/%/g, '%%');
  return Buffer.concat([
    Buffer.from([ERROR, 0]),
    Buffer.from(`${cls}\0${noNul(traceback)}\0${format}\0`, 'utf8'),
  ]);
}

/** Normalises pairs given as a record or as an iterable of [key, value]. */
export function eventPairs(pairs?: EventPairs): Array<[string, string]> {
  if (pairs === undefined) return [];
  const list: Iterable<readonly [string, string]> =
    Symbol.iterator in pairs ? (pairs as Iterable<readonly [string, string]>) : Object.entries(pairs);
  return Array.from(list, ([k, v]) => [k, v] as [string, string]);
}

/** Checks that an event can be framed: no NUL anywhere, non-empty event name and keys. */
export function checkEvent(subject: string, event: string, pairs: ReadonlyArray<readonly [string, string]>): void {
  if (subject.includes('\0')) throw new TypeError('event subject contains NUL');
  if (event === '' || event.includes('\0')) throw new TypeError(`bad event name ${JSON.stringify(event)}`);
  for (const [k, v] of pairs) {
    if (k === '' || k.includes('\0')) throw new TypeError(`event ${event}: bad key ${JSON.stringify(k)}`);
    if (v.includes('\0')) throw new TypeError(`event ${event}: value of ${k} contains NUL`);
  }
}

/** Event frame. */
export function encodeEvent(subject: string, event: string, pairs?: EventPairs): Buffer {
  const list = eventPairs(pairs);
  checkEvent(subject, event, list);
  let text = `${subject}\0${event}\0`;
  for (const [k, v] of list) text += `${k}\0${v}\0`;
  return Buffer.concat([Buffer.from([EVENT, 0]), Buffer.from(`${text}\0`, 'utf8')]);
}

/** Decodes a complete (non-event) reply; a malformed one is a ProtocolError. */
export function decodeReply(bytes: Uint8Array): Reply {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 2 || buf[1] !== 0) throw new ProtocolError('malformed reply from qubesd');
  if (buf[0] === OK) return { kind: 'ok', result: buf.subarray(2) };
  if (buf[0] === ERROR) {
    const fields = splitFields(buf, 2, 3);
    if (!fields || fields.end !== buf.length) throw new ProtocolError('malformed error reply from qubesd');
    const [name, traceback, format] = fields.values as [string, string, string];
    return { kind: 'error', name, traceback, message: format.replace(/%%/g, '%') };
  }
  throw new ProtocolError(`unexpected reply type 0x${buf[0]!.toString(16)} from qubesd`);
}

export type StreamItem =
  | { readonly kind: 'event'; readonly event: AdminEvent }
  | { readonly kind: 'error'; readonly name: string; readonly traceback: string; readonly message: string };

/**
 * Incremental decoder for an `admin.Events` connection: feed chunks, get
 * complete events (and at most one error reply, after which nothing more is
 * decoded). A frame larger than `maxFrameBytes` is a ProtocolError.
 */
export class EventStreamDecoder {
  private buf = Buffer.alloc(0);
  private finished = false;
  private okResult: Buffer[] | undefined;

  constructor(private readonly maxFrameBytes = 1024 * 1024) {}

  push(chunk: Uint8Array): StreamItem[] {
    if (this.finished) return [];
    if (this.okResult) {
      this.okResult.push(Buffer.from(chunk));
      return [];
    }
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk]);
    const items: StreamItem[] = [];
    for (;;) {
      if (this.buf.length < 2) break;
      if (this.buf[1] !== 0) throw new ProtocolError('malformed event stream from qubesd');
      const type = this.buf[0];
      if (type === OK) {
        this.okResult = [this.buf.subarray(2)];
        this.buf = Buffer.alloc(0);
        break;
      }
      if (type === ERROR) {
        const fields = splitFields(this.buf, 2, 3);
        if (!fields) break;
        const [name, traceback, message] = fields.values as [string, string, string];
        items.push({ kind: 'error', name, traceback, message: message.replace(/%%/g, '%') });
        this.finished = true;
        this.buf = Buffer.alloc(0);
        break;
      }
      if (type !== EVENT) throw new ProtocolError(`unexpected frame type 0x${type!.toString(16)} from qubesd`);
      const frame = parseEventFrame(this.buf);
      if (!frame) break;
      items.push({ kind: 'event', event: frame.event });
      this.buf = this.buf.subarray(frame.end);
    }
    if (this.buf.length > this.maxFrameBytes) throw new ProtocolError('event frame too large');
    return items;
  }

  /** At end of stream: throws if a frame was left incomplete; returns a success result if one came. */
  end(): Buffer | undefined {
    if (this.okResult) return Buffer.concat(this.okResult);
    if (!this.finished && this.buf.length > 0) throw new ProtocolError('event stream ended inside a frame');
    return undefined;
  }
}

function parseEventFrame(buf: Buffer): { event: AdminEvent; end: number } | undefined {
  const head = splitFields(buf, 2, 2);
  if (!head) return undefined;
  const [subject, event] = head.values as [string, string];
  const pairs: Array<[string, string]> = [];
  let pos = head.end;
  for (;;) {
    const nul = buf.indexOf(0, pos);
    if (nul < 0) return undefined;
    if (nul === pos) return { event: { subject, event, pairs }, end: nul + 1 };
    const value = splitFields(buf, nul + 1, 1);
    if (!value) return undefined;
    pairs.push([buf.toString('utf8', pos, nul), value.values[0]!]);
    pos = value.end;
  }
}

/** Reads `count` NUL-terminated UTF-8 fields from `start`; undefined when incomplete. */
function splitFields(buf: Buffer, start: number, count: number): { values: string[]; end: number } | undefined {
  const values: string[] = [];
  let pos = start;
  for (let i = 0; i < count; i++) {
    const nul = buf.indexOf(0, pos);
    if (nul < 0) return undefined;
    values.push(buf.toString('utf8', pos, nul));
    pos = nul + 1;
  }
  return { values, end: pos };
}

function noNul(s: string): string {
  return s.includes('\0') ? s.replace(/\0/g, '\ufffd') : s;
}
