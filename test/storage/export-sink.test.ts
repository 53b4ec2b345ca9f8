// fileIntoSink and regionsIntoSink (src/storage/export-sink.ts), on real
// sparse files of each test filesystem: what reaches the sink is the file
// (compared with the file read by fs, holes as zeros), pieces are lent (each
// unchanged until its data() resolved, though the next read runs
// meanwhile), and two buffers take turns: no fresh memory per piece.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileIntoSink, regionsIntoSink } from '../../src/storage/export-sink.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB } from '../helpers/data.js';

/** A sink that assembles the export and holds each piece `holdMs`, noting the pieces that changed meanwhile. */
function holdingSink(holdMs: number) {
  const s = {
    size: -1,
    got: Buffer.alloc(0),
    pieces: 0,
    changed: [] as number[],
    buffers: new Set<ArrayBufferLike>(),
    begin: async (size: number) => {
      s.size = size;
      s.got = Buffer.alloc(size);
    },
    data: async (offset: number, bytes: Buffer) => {
      s.pieces++;
      s.buffers.add(bytes.buffer);
      const held = Buffer.from(bytes);
      await new Promise((r) => setTimeout(r, holdMs)); // the next read lands meanwhile, and must not land here
      if (!bytes.equals(held)) s.changed.push(offset);
      held.copy(s.got, offset);
    },
  };
  return s;
}

describeEachFs('export sink helpers', (_tfs, ctx) => {
  it('fileIntoSink hands over the file, each piece unchanged until its data() resolved, through two buffers', async () => {
    const dir = await ctx.tempDir('sink');
    const file = path.join(dir, 'f');
    // 40 MiB: 18 MiB of data, a 12 MiB hole, 9 MiB of data, a hole at the end.
    const size = 40 * MiB;
    const fh = await fs.open(file, 'w');
    await fh.truncate(size);
    await fh.write(randomBytes(18 * MiB), 0, 18 * MiB, 0);
    await fh.write(randomBytes(9 * MiB), 0, 9 * MiB, 30 * MiB);
    await fh.close();
    const sink = holdingSink(30);
    await fileIntoSink(file, sink);
    assert.equal(sink.size, size);
    assert.deepEqual(sink.changed, [], 'pieces changed while the sink held them');
    assert.ok(sink.got.equals(await fs.readFile(file)), 'the sink got the file');
    assert.ok(sink.pieces >= 7, `${sink.pieces} pieces`);
    assert.ok(sink.buffers.size <= 2, `read into ${sink.buffers.size} buffers for ${sink.pieces} pieces`);
  });

  it('regionsIntoSink with a zero block hands over the non-zero runs only, from the same two buffers', async () => {
    const data = Buffer.alloc(20 * MiB);
    randomBytes(64 * 1024).copy(data, 128 * 1024);
    randomBytes(5 * MiB).copy(data, 9 * MiB);
    const sink = holdingSink(10);
    await sink.begin(data.length);
    await regionsIntoSink([[0, data.length]], async (from, to, into) => {
      await new Promise((r) => setImmediate(r));
      data.copy(into, 0, from, to);
      return into.subarray(0, to - from);
    }, sink, undefined, 64 * 1024);
    assert.deepEqual(sink.changed, []);
    assert.ok(sink.got.equals(data), 'the non-zero runs at their offsets');
    assert.ok(sink.buffers.size <= 2, `${sink.buffers.size} buffers`);
  });
});
