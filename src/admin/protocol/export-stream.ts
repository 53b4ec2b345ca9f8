/**
 * The reply of admin.vm.volume.ExportStream, after the success header
 * `0x30 0x00`: text lines, each ending in `\n`, data records carrying bytes.
 *
 *   path PATH\n              the data is the file PATH on this host, held
 *                            until the client closes the connection (the
 *                            only line; nothing follows)
 *   size N\n                 or: the export is N bytes, which follow as
 *   data OFFSET LENGTH\n     LENGTH bytes at OFFSET (offsets increasing,
 *   <LENGTH bytes>           never overlapping; what no record covers is
 *                            zeros, so holes cross no socket)
 *   end\n                    all of it was sent (the daemon may still be
 *                            letting go of its snapshot: the client finishes
 *                            its side meanwhile, then closes the connection)
 *   error\n<error reply>     or: the export failed; an error reply as the
 *                            protocol frames one (`0x32 0x00` ...) follows
 *
 * A connection that closes before `end` or an error was cut: the client
 * must not take what it got for the data.
 */
import { ProtocolError } from '../../storage/errors.js';
import { decodeReply, encodeError } from './reply.js';

export type ExportRecord =
  | { readonly kind: 'path'; readonly path: string }
  | { readonly kind: 'size'; readonly size: number }
  /** A piece of a data record (a record may arrive in several). */
  | { readonly kind: 'data'; readonly offset: number; readonly bytes: Buffer }
  | { readonly kind: 'end' }
  | { readonly kind: 'error'; readonly name: string; readonly message: string; readonly traceback: string };

/** Longest line (a path, a record header). */
const MAX_LINE = 8192;
/** Largest error reply after `error`. */
const MAX_ERROR = 64 * 1024;

export const exportLine = {
  path: (p: string): Buffer => {
    if (p.includes('\n')) throw new TypeError('an export path with a newline');
    return Buffer.from(`path ${p}\n`, 'utf8');
  },
  size: (n: number): Buffer => Buffer.from(`size ${n}\n`),
  data: (offset: number, length: number): Buffer => Buffer.from(`data ${offset} ${length}\n`),
  end: (): Buffer => Buffer.from('end\n'),
  error: (name: string, message: string): Buffer => Buffer.concat([Buffer.from('error\n'), encodeError(name, message)]),
};

function count(text: string, what: string): number {
  if (!/^(0|[1-9][0-9]{0,15})$/.test(text)) throw new ProtocolError(`malformed export stream from qubesd: ${what} ${JSON.stringify(text.slice(0, 40))}`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ProtocolError(`malformed export stream from qubesd: ${what} too large`);
  return n;
}

/**
 * Incremental decoder of the reply body (after `0x30 0x00`): feed chunks,
 * get records; checks the order (one `path`, or `size` then data in
 * increasing order within the size, then `end`). end() at EOF throws if the
 * stream was cut. A data record's bytes are the chunk's own (no copy); the
 * decoder keeps nothing of a chunk once push() returned, so the caller may
 * reuse a chunk's memory once it is done with its records.
 */
export class ExportStreamDecoder {
  private line: Buffer[] = [];
  private lineBytes = 0;
  private state: 'first' | 'records' | 'data' | 'error' | 'done' = 'first';
  private size = 0;
  /** Where the data may go on: the end of the last record. */
  private reached = 0;
  private at = 0;
  private left = 0;
  private errorBytes: Buffer[] = [];
  private errorLength = 0;

  push(chunk: Buffer): ExportRecord[] {
    const out: ExportRecord[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      switch (this.state) {
        case 'data': {
          const n = Math.min(this.left, chunk.length - pos);
          out.push({ kind: 'data', offset: this.at, bytes: chunk.subarray(pos, pos + n) });
          this.at += n;
          this.left -= n;
          pos += n;
          if (this.left === 0) this.state = 'records';
          break;
        }
        case 'error': {
          this.errorLength += chunk.length - pos;
          if (this.errorLength > MAX_ERROR) throw new ProtocolError('malformed export stream from qubesd: error reply too long');
          this.errorBytes.push(Buffer.from(chunk.subarray(pos))); // kept past this chunk: copied
          pos = chunk.length;
          break;
        }
        case 'done':
          throw new ProtocolError('malformed export stream from qubesd: bytes after its end');
        default: {
          const nl = chunk.indexOf(0x0a, pos);
          const piece = chunk.subarray(pos, nl < 0 ? chunk.length : nl);
          this.lineBytes += piece.length;
          if (this.lineBytes > MAX_LINE) throw new ProtocolError('malformed export stream from qubesd: line too long');
          // A line's start kept past its chunk is copied: the chunk's memory may be read into again.
          this.line.push(nl < 0 ? Buffer.from(piece) : piece);
          if (nl < 0) {
            pos = chunk.length;
            break;
          }
          pos = nl + 1;
          const text = Buffer.concat(this.line).toString('utf8');
          this.line = [];
          this.lineBytes = 0;
          const r = this.onLine(text);
          if (r) out.push(r);
        }
      }
    }
    return out;
  }

  /** At EOF: the error record, if one came; throws when the stream was cut. */
  end(): ExportRecord[] {
    if (this.state === 'error') {
      const r = decodeReply(Buffer.concat(this.errorBytes));
      this.state = 'done';
      if (r.kind !== 'error') throw new ProtocolError('malformed export stream from qubesd: no error reply after error');
      return [{ kind: 'error', name: r.name, message: r.message, traceback: r.traceback }];
    }
    if (this.state !== 'done') throw new ProtocolError('the export stream from qubesd ended before its end (qubesd stopped or dropped the connection; see its log)');
    return [];
  }

  private onLine(text: string): ExportRecord | null {
    const sp = text.indexOf(' ');
    const word = sp < 0 ? text : text.slice(0, sp);
    const rest = sp < 0 ? '' : text.slice(sp + 1);
    if (word === 'error' && rest === '') {
      this.state = 'error';
      return null;
    }
    if (this.state === 'first') {
      if (word === 'path' && rest !== '') {
        this.state = 'done';
        return { kind: 'path', path: rest };
      }
      if (word === 'size') {
        this.size = count(rest, 'size');
        this.state = 'records';
        return { kind: 'size', size: this.size };
      }
    } else if (word === 'data') {
      const [o, l, extra] = rest.split(' ');
      const offset = count(o ?? '', 'offset');
      const length = count(l ?? '', 'length');
      if (extra !== undefined || length === 0 || offset < this.reached || offset + length > this.size)
        throw new ProtocolError(`malformed export stream from qubesd: data ${offset} ${length} out of order or past the size ${this.size}`);
      this.reached = offset + length;
      this.at = offset;
      this.left = length;
      this.state = 'data';
      return null;
    } else if (word === 'end' && rest === '') {
      this.state = 'done';
      return { kind: 'end' };
    }
    throw new ProtocolError(`malformed export stream from qubesd: ${JSON.stringify(text.slice(0, 60))}`);
  }
}
