/**
 * Writes the whole content of a local file into an existing RBD image
 * through `rbd import-diff -`, as a stream in the RBD diff format (version 1,
 * as documented by Ceph): a header line, then tagged records
 *   's' new image size (le64)
 *   'w' offset, length (le64 each), then the bytes
 *   'z' offset, length: a zeroed (discarded) range
 *   't' name of a snapshot import-diff creates once everything is applied
 *   'e' end.
 * Every block of the file is sent as data or as zeros, so the image ends up
 * holding exactly the file (old data in what are now holes is zeroed), and
 * the 't' snapshot exists only when all of it arrived: it marks completion.
 */
import * as fs from 'node:fs/promises';
import { Readable } from 'node:stream';

const HEADER = Buffer.from('rbd diff v1\n', 'ascii');
/** Zero detection granularity (the sparse unit of the written image). */
const BLOCK = 64 * 1024;
/** How much of the file is read at once. */
const CHUNK = 4 * 1024 * 1024;
const ZERO = Buffer.alloc(BLOCK);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function tagged(tag: string, ...parts: Buffer[]): Buffer {
  return Buffer.concat([Buffer.from(tag, 'ascii'), ...parts]);
}

/** The diff stream that makes an image exactly the first `size` bytes of `file` (zero-filled past its end). */
export function fileAsDiff(file: string, size: number, endSnapshot: string): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    yield HEADER;
    const name = Buffer.from(endSnapshot, 'utf8');
    yield tagged('t', u32(name.length), name);
    yield tagged('s', u64(size));
    const fh = await fs.open(file, 'r');
    try {
      const buf = Buffer.alloc(CHUNK);
      let pos = 0;
      // A pending run of zeros, merged across chunks.
      let zeroStart = -1;
      const flushZeros = function* (upTo: number): Generator<Buffer> {
        if (zeroStart >= 0 && upTo > zeroStart) yield tagged('z', u64(zeroStart), u64(upTo - zeroStart));
        zeroStart = -1;
      };
      while (pos < size) {
        const want = Math.min(CHUNK, size - pos);
        let got = 0;
        while (got < want) {
          const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        if (got < want) buf.fill(0, got, want); // past the file's end: zeros
        let o = 0;
        while (o < want) {
          const end = Math.min(o + BLOCK, want);
          if (buf.compare(ZERO, 0, end - o, o, end) === 0) {
            if (zeroStart < 0) zeroStart = pos + o;
            o = end;
            continue;
          }
          yield* flushZeros(pos + o);
          let dataEnd = end;
          while (dataEnd < want) {
            const e = Math.min(dataEnd + BLOCK, want);
            if (buf.compare(ZERO, 0, e - dataEnd, dataEnd, e) === 0) break;
            dataEnd = e;
          }
          yield tagged('w', u64(pos + o), u64(dataEnd - o));
          yield Buffer.from(buf.subarray(o, dataEnd)); // a copy: buf is reused
          o = dataEnd;
        }
        pos += want;
      }
      yield* flushZeros(size);
    } finally {
      await fh.close();
    }
    yield Buffer.from('e', 'ascii');
  }
  return Readable.from(gen(), { objectMode: false });
}

/** A diff stream writing `data` at `offset` (tests, and small writes into a running image). */
export function writeAsDiff(offset: number, data: Buffer): Readable {
  return Readable.from([HEADER, tagged('w', u64(offset), u64(data.length)), data, Buffer.from('e', 'ascii')], {
    objectMode: false,
  });
}
