/**
 * exportPiecesToFile and exportPiecesToStream (what `qvm-volume export` does
 * with an export streamed by the daemon, into a file or into stdout) with
 * pieces read into a few reused buffers, as the client reads the socket:
 * the tool says when it is done with them (`releaser`), and a released
 * buffer is refilled with the next piece at once. The output
 * must hold every piece as it came, so no buffer may be released before its
 * bytes are written; the expected bytes are made again from the piece
 * number, not read back through the code under test.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { exportPiecesToFile, exportPiecesToStream, type ExportPieces } from '../../src/cli/common/export-output.js';
import { describeEachFs } from '../helpers/filesystems.js';

const PIECE = 256 * 1024;
const PIECES = 320; // 80 MiB: several times what the writer keeps in flight (16 MiB)
/** Piece k: its number in its first bytes, then a pattern of it (never all zeros). */
function fillPiece(b: Buffer, k: number): void {
  b.fill((k * 7 + 1) & 0xff || 1);
  b.writeUInt32BE(k, 0);
}

/** Pieces read into reused buffers, each refilled once released (all but the last piece handed out before the releaser was taken). */
function ringPieces(size: number): ExportPieces & { allocated: () => number } {
  const free: Buffer[] = [];
  const handed: Buffer[] = [];
  let freed = 0;
  let allocated = 0;
  async function* pieces() {
    for (let k = 0; k < PIECES; k++) {
      const b = free.pop() ?? (allocated++, Buffer.allocUnsafeSlow(PIECE));
      fillPiece(b, k);
      handed.push(b);
      // The next read lands after a turn of the event loop, as a socket's does.
      await new Promise((r) => setImmediate(r));
      yield { offset: k * PIECE, bytes: b };
    }
  }
  return {
    size,
    pieces: pieces(),
    releaser: () => {
      const upTo = freed + handed.length;
      return () => {
        while (freed < upTo - 1) {
          free.push(handed.shift()!);
          freed++;
        }
      };
    },
    allocated: () => allocated,
  };
}

describeEachFs('export pieces into a file', (_tfs, ctx) => {
  it('pieces from reused buffers land as they came: a buffer is released only once its bytes are written', async () => {
    const dir = await ctx.tempDir('pieces');
    const target = path.join(dir, 'out.img');
    const size = PIECES * PIECE + 12_345; // a hole at the end
    const data = ringPieces(size);
    await exportPiecesToFile(data, { target, temp: path.join(dir, '.out.tmp') }, { update() {}, finish() {} }, new AbortController().signal);
    const expected = Buffer.alloc(size);
    for (let k = 0; k < PIECES; k++) fillPiece(expected.subarray(k * PIECE, (k + 1) * PIECE), k);
    const got = await fs.readFile(target);
    assert.equal(got.length, size);
    for (let k = 0; k < PIECES; k++) {
      const at = got.subarray(k * PIECE, (k + 1) * PIECE);
      assert.ok(at.equals(expected.subarray(k * PIECE, (k + 1) * PIECE)), `piece ${k} holds ${at.readUInt32BE(0)}'s bytes: its buffer was refilled before it was written`);
    }
    assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(expected).digest('hex'));
    assert.ok(data.allocated() * 2 < PIECES, `${data.allocated()} buffers for ${PIECES} pieces: released ones were not used again`);
    assert.deepEqual(await fs.readdir(dir), ['out.img']);
  });
});

/**
 * A stream whose writes complete later, as a slow reader's pipe: it takes
 * up to 8 MiB before it asks to wait, and copies each chunk only when its
 * write completes, so a buffer refilled before then shows in what it holds.
 */
class SlowSink extends Writable {
  readonly got: Buffer[] = [];
  constructor() {
    super({ highWaterMark: 8 << 20 });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (e?: Error | null) => void): void {
    setTimeout(() => {
      this.got.push(Buffer.from(chunk));
      done();
    }, 1);
  }
}

describe('export pieces into a stream', () => {
  it('pieces from reused buffers reach the stream as they came, the gaps as zeros: a buffer is released only once its write completed', async () => {
    const size = PIECES * PIECE + 12_345; // zeros at the end
    const data = ringPieces(size);
    const sink = new SlowSink();
    await exportPiecesToStream(data, { sink, owned: true }, { update() {}, finish() {} }, new AbortController().signal);
    const got = Buffer.concat(sink.got);
    assert.equal(got.length, size);
    const expected = Buffer.alloc(PIECE);
    for (let k = 0; k < PIECES; k++) {
      fillPiece(expected, k);
      const at = got.subarray(k * PIECE, (k + 1) * PIECE);
      assert.ok(at.equals(expected), `piece ${k} holds ${at.readUInt32BE(0)}'s bytes: its buffer was refilled before its write completed`);
    }
    assert.ok(got.subarray(PIECES * PIECE).equals(Buffer.alloc(12_345)), 'the end is zeros');
    assert.ok(data.allocated() * 2 < PIECES, `${data.allocated()} buffers for ${PIECES} pieces: released ones were not used again`);
  });
});
