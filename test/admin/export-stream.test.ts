/**
 * The reply format of admin.vm.volume.ExportStream (protocol/export-stream.ts):
 * records decode the same however the bytes are cut into chunks, data keeps
 * its offsets, an error record becomes the error, and every malformed or cut
 * stream is refused with a ProtocolError rather than taken for the data. The
 * decoder keeps no view of a chunk (the client reads into reused buffers).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ExportStreamDecoder, exportLine, type ExportRecord } from '../../src/admin/protocol/export-stream.js';
import { ProtocolError } from '../../src/storage/errors.js';

/** Decodes `bytes` fed in chunks of `step` bytes; data pieces joined per record. */
function decode(bytes: Buffer, step: number): ExportRecord[] {
  const d = new ExportStreamDecoder();
  const out: ExportRecord[] = [];
  for (let o = 0; o < bytes.length; o += step) out.push(...d.push(bytes.subarray(o, o + step)));
  out.push(...d.end());
  // Join the pieces of each data record (contiguous pieces).
  const joined: ExportRecord[] = [];
  for (const r of out) {
    const last = joined[joined.length - 1];
    if (r.kind === 'data' && last?.kind === 'data' && last.offset + last.bytes.length === r.offset) {
      joined[joined.length - 1] = { kind: 'data', offset: last.offset, bytes: Buffer.concat([last.bytes, r.bytes]) };
    } else joined.push(r);
  }
  return joined;
}

const a = Buffer.alloc(5000, 0x61);
const b = Buffer.from('bbbb');
const stream = Buffer.concat([exportLine.size(100_000), exportLine.data(10, a.length), a, exportLine.data(90_000, b.length), b, exportLine.end()]);

test('data records decode the same for every chunking, with their offsets', () => {
  for (const step of [1, 2, 3, 7, 64, 4999, 5001, stream.length]) {
    assert.deepEqual(
      decode(stream, step),
      [{ kind: 'size', size: 100_000 }, { kind: 'data', offset: 10, bytes: a }, { kind: 'data', offset: 90_000, bytes: b }, { kind: 'end' }],
      `chunks of ${step}`,
    );
  }
});

test('a path record is the whole reply', () => {
  assert.deepEqual(decode(exportLine.path('/var/lib/qubes/x y.img'), 3), [{ kind: 'path', path: '/var/lib/qubes/x y.img' }]);
  assert.throws(() => exportLine.path('a\nb'), /newline/);
});

test('an error record carries the error reply, even after data', () => {
  const bytes = Buffer.concat([exportLine.size(10), exportLine.data(0, 2), Buffer.from('xy'), exportLine.error('StoragePoolException', 'read failed: 100%')]);
  const recs = decode(bytes, 5);
  assert.deepEqual(recs.at(-1), { kind: 'error', name: 'StoragePoolException', message: 'read failed: 100%', traceback: '' });
});

test('malformed or cut streams are refused', () => {
  const bad: [string, Buffer][] = [
    ['cut before end', Buffer.concat([exportLine.size(10), exportLine.data(0, 2), Buffer.from('xy')])],
    ['cut inside data', Buffer.concat([exportLine.size(10), exportLine.data(0, 4), Buffer.from('xy')])],
    ['nothing', Buffer.alloc(0)],
    ['data before size', Buffer.concat([exportLine.data(0, 1), Buffer.from('x'), exportLine.end()])],
    ['data past the size', Buffer.concat([exportLine.size(10), exportLine.data(8, 4), Buffer.from('wxyz'), exportLine.end()])],
    ['data out of order', Buffer.concat([exportLine.size(10), exportLine.data(4, 2), Buffer.from('ab'), exportLine.data(5, 1), Buffer.from('c'), exportLine.end()])],
    ['empty data record', Buffer.concat([exportLine.size(10), exportLine.data(4, 0), exportLine.end()])],
    ['a number with a sign', Buffer.from('size -1\nend\n')],
    ['a number too large', Buffer.from('size 99999999999999999\nend\n')],
    ['leading zero', Buffer.from('size 010\nend\n')],
    ['unknown record', Buffer.from('size 1\nhello\nend\n')],
    ['bytes after end', Buffer.concat([exportLine.size(1), exportLine.end(), Buffer.from('x')])],
    ['a line without end', Buffer.alloc(9000, 0x61)],
    ['error with no error reply', Buffer.from('size 1\nerror\n0\0')],
    ['two sizes', Buffer.from('size 1\nsize 2\nend\n')],
  ];
  for (const [what, bytes] of bad) {
    for (const step of [1, 4096]) assert.throws(() => decode(bytes, step), ProtocolError, `${what} (chunks of ${step})`);
  }
});

test('the decoder keeps nothing of a chunk once push() returned: a chunk scribbled over after it decodes the same', () => {
  const a = Buffer.from('xy');
  const stream = Buffer.concat([exportLine.size(100), exportLine.data(90, 2), a, exportLine.error('StoragePoolException', 'read failed')]);
  for (const step of [1, 3, 7, 16]) {
    const d = new ExportStreamDecoder();
    const out: ExportRecord[] = [];
    for (let o = 0; o < stream.length; o += step) {
      // Each chunk in memory of its own, scribbled over once pushed (a reused read buffer); data records copied first.
      const chunk = Buffer.from(stream.subarray(o, o + step));
      for (const r of d.push(chunk)) out.push(r.kind === 'data' ? { ...r, bytes: Buffer.from(r.bytes) } : r);
      chunk.fill(0x7a);
    }
    out.push(...d.end());
    const data = Buffer.concat(out.flatMap((r) => (r.kind === 'data' ? [r.bytes] : [])));
    assert.deepEqual(out[0], { kind: 'size', size: 100 }, `chunks of ${step}`);
    assert.equal(data.toString(), 'xy', `chunks of ${step}`);
    assert.deepEqual(out.at(-1), { kind: 'error', name: 'StoragePoolException', message: 'read failed', traceback: '' }, `chunks of ${step}`);
  }
});
