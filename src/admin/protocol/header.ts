/**
 * Request framing of the admin API: `METHOD[+ARG] SOURCE name|keyword DEST`,
 * a NUL byte, then the payload (the client then half-closes). Pure
 * functions over bytes; a malformed request is a `FramingError`, on which
 * the server drops the connection without a reply.
 */

/** The parsed header of one call. `dest` is already resolved (`keyword adminvm` -> `dom0`). */
export interface RequestHeader {
  readonly method: string;
  /** Empty when the call has no `+ARG` (or an empty one). */
  readonly arg: string;
  readonly source: string;
  readonly dest: string;
}

/** Header plus payload limit of ordinary (non-streaming) calls, in bytes. */
export const MAX_REQUEST_BYTES = 64 * 1024;

/** A request that breaks the framing rules: drop the connection, send nothing. */
export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FramingError';
  }
}

const METHOD_RE = /^[A-Za-z0-9_.-]+$/;
/** Printable ASCII without space; methods check their own arguments further. */
const ARG_RE = /^[\x21-\x7e]*$/;
const SOURCE_RE = /^[A-Za-z0-9_.-]+$/;
/** Domain names, `dom0` and `uuid:UUID`. */
const DEST_RE = /^[A-Za-z0-9_.:-]+$/;

/** Checks the fields of a header (as parsed, or given in-process); returns them unchanged. */
export function validateHeader(h: RequestHeader): RequestHeader {
  if (!METHOD_RE.test(h.method)) throw new FramingError(`bad method name ${quote(h.method)}`);
  if (!ARG_RE.test(h.arg)) throw new FramingError(`bad argument ${quote(h.arg)}`);
  if (!SOURCE_RE.test(h.source)) throw new FramingError(`bad source ${quote(h.source)}`);
  if (!DEST_RE.test(h.dest)) throw new FramingError(`bad destination ${quote(h.dest)}`);
  return h;
}

/** Parses the header bytes (everything before the first NUL, without it). */
export function parseHeader(bytes: Uint8Array): RequestHeader {
  for (const b of bytes) {
    if (b < 0x20 || b > 0x7e) throw new FramingError('header is not printable ASCII');
  }
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  const parts = text.split(' ');
  if (parts.length !== 4) throw new FramingError(`header has ${parts.length} fields, expected 4`);
  const [methodArg, source, destType, destName] = parts as [string, string, string, string];
  const plus = methodArg.indexOf('+');
  const method = plus < 0 ? methodArg : methodArg.slice(0, plus);
  const arg = plus < 0 ? '' : methodArg.slice(plus + 1);
  let dest: string;
  if (destType === 'name') dest = destName;
  else if (destType === 'keyword' && destName === 'adminvm') dest = 'dom0';
  else throw new FramingError(`bad destination ${quote(destType)} ${quote(destName)}`);
  return validateHeader({ method, arg, source, dest });
}

/** Splits a whole request (header NUL payload) into its parts. */
export function parseRequest(bytes: Uint8Array): { header: RequestHeader; payload: Buffer } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nul = buf.indexOf(0);
  if (nul < 0) throw new FramingError('no NUL after the header');
  return { header: parseHeader(buf.subarray(0, nul)), payload: buf.subarray(nul + 1) };
}

/** Encodes a request header with its NUL, the way the stock clients do (`name DEST`). */
export function encodeHeader(h: RequestHeader): Buffer {
  validateHeader(h);
  const methodArg = h.arg === '' ? h.method : `${h.method}+${h.arg}`;
  return Buffer.from(`${methodArg} ${h.source} name ${h.dest}\0`, 'latin1');
}

/** Encodes a whole request. */
export function encodeRequest(h: RequestHeader, payload: Uint8Array | string = ''): Buffer {
  return Buffer.concat([encodeHeader(h), typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload]);
}

function quote(s: string): string {
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s);
}
