// admin.vm.volume.Import / ImportWithSize over the real socket, streamed:
// data hash and sparseness, exact size, short and long data refused with the
// old data kept and no temporary files, halted domains only, events.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { QubesValueError, QubesVMNotHaltedError, ProtocolError } from '../../../src/storage/errors.js';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles, MiB, pattern, sha256 } from '../../helpers/data.js';
import { ok, PRIVATE_SIZE, startRig, stream, type Rig } from './helpers.js';
import { waitFor } from '../helpers.js';

/** 1 MiB of data, 2 MiB of zeros, 1 MiB of data (PRIVATE_SIZE = 4 MiB). */
function image(seed: number, size = PRIVATE_SIZE): Buffer {
  const b = Buffer.alloc(size);
  pattern(MiB, seed).copy(b, 0);
  pattern(MiB, seed + 1).copy(b, size - MiB);
  return b;
}

/** Cuts `b` into uneven chunks (so block boundaries fall inside chunks). */
function* chunks(b: Buffer, step = 100_003): Generator<Buffer> {
  for (let o = 0; o < b.length; o += step) yield b.subarray(o, Math.min(b.length, o + step));
}

const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describeEachFs('admin.vm.volume.Import', (tfs, fsx) => {
  let rig: Rig;
  before(async () => {
    rig = await startRig(tfs, await fsx.tempDir('import'), { methods: { volumes: { importProgressBytes: MiB } } });
    await rig.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rig.rt.app.createDomain({ klass: 'AppVM', name: 'imp', label: 'red', template: 'tpl' });
  });
  after(() => rig?.stop());

  const img = () => path.join(rig.poolDir, 'appvms/imp/private.img');
  const volDir = () => path.join(rig.poolDir, 'appvms/imp');

  test('Import: exactly the volume size; same bytes; zero blocks stay holes; fsynced commit; events', async () => {
    const data = image(1);
    const from = rig.events.length;
    assert.equal(await stream(rig, 'admin.vm.volume.Import', 'imp', 'private', chunks(data)), '');
    assert.equal(await sha256(img()), hash(data));
    const st = await fs.stat(img());
    assert.equal(st.size, PRIVATE_SIZE);
    assert.ok(st.blocks * 512 <= 2 * MiB + 256 * 1024, `sparse: ${st.blocks * 512} bytes allocated for 2 MiB of data`);
    const evs = rig.events.slice(from).filter((e) => e.subject === 'imp');
    assert.deepEqual(
      evs.map((e) => [e.event, Object.fromEntries(e.pairs)]),
      [
        ['domain-volume-import-begin', { volume: 'private', size: String(PRIVATE_SIZE) }],
        ['domain-volume-import-progress', { volume: 'private', size: String(PRIVATE_SIZE), written: String(MiB) }],
        ['domain-volume-import-progress', { volume: 'private', size: String(PRIVATE_SIZE), written: String(2 * MiB) }],
        ['domain-volume-import-progress', { volume: 'private', size: String(PRIVATE_SIZE), written: String(3 * MiB) }],
        ['domain-volume-import-end', { volume: 'private', success: 'True' }],
        ['volume-imported', { volume: 'private', pool: 'default', vid: 'appvms/imp/private', size: String(PRIVATE_SIZE) }],
      ],
    );
    assert.ok(!(await listFiles(volDir())).some((f) => f.includes('import') || f.includes('tmp')));
  });

  test('Import: too little or too much data is refused; the old data and files stay, no temp files', async () => {
    await stream(rig, 'admin.vm.volume.Import', 'imp', 'private', chunks(image(5)));
    const before = await sha256(img());
    const files = await listFiles(volDir());
    for (const data of [image(9).subarray(0, PRIVATE_SIZE - 1), Buffer.concat([image(9), Buffer.from('x')]), Buffer.alloc(0)]) {
      const from = rig.events.length;
      await assert.rejects(stream(rig, 'admin.vm.volume.Import', 'imp', 'private', chunks(data)), (e: Error) => {
        assert.ok(e instanceof QubesValueError, `${e.name}: ${e.message}`);
        assert.match(e.message, new RegExp(`${PRIVATE_SIZE}`));
        return true;
      });
      assert.equal(await sha256(img()), before, 'old data kept');
      assert.deepEqual(await listFiles(volDir()), files, 'no temporary files');
      const end = rig.events.slice(from).find((e) => e.event === 'domain-volume-import-end');
      assert.deepEqual(end?.pairs, [['volume', 'private'], ['success', 'False']]);
      assert.ok(!rig.events.slice(from).some((e) => e.event === 'volume-imported'));
    }
    assert.equal(rig.rt.app.domain('imp').storage.get('private').size, PRIVATE_SIZE);
  });

  test('ImportWithSize: the first line is the size and the volume takes it', async () => {
    const size = 6 * MiB;
    const data = image(21, size);
    const payload = Buffer.concat([Buffer.from(`${size}\n`), data]);
    // The size line split across chunks, data in the same chunk as its end.
    const parts = [payload.subarray(0, 3), ...chunks(payload.subarray(3), 65_537)];
    assert.equal(await stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', parts), '');
    assert.equal(await sha256(img()), hash(data));
    assert.equal((await fs.stat(img())).size, size);
    assert.match(await ok(rig.socketPath, 'admin.vm.volume.Info', 'imp', 'private'), new RegExp(`\nsize=${size}\n`));
    assert.match(await fs.readFile(rig.rt.app.stateFile, 'utf8'), new RegExp(`size="${size}" vid="appvms/imp/private"`));
    // Smaller is allowed too: it is a replacement, not a resize.
    const small = pattern(MiB, 4);
    assert.equal(await stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', [Buffer.from(`${MiB}\n`), small]), '');
    assert.equal(await sha256(img()), hash(small));
    assert.equal(rig.rt.app.domain('imp').storage.get('private').size, MiB);
  });

  test('ImportWithSize: malformed size line, short and long data', async () => {
    const before = await sha256(img());
    const files = await listFiles(volDir());
    for (const [payload, cls] of [
      [Buffer.from('abc\n'), ProtocolError],
      [Buffer.from('0100\n'), ProtocolError],
      [Buffer.from('1048576'), ProtocolError],
      [Buffer.from(''), ProtocolError],
      [Buffer.concat([Buffer.from(`${MiB}\n`), Buffer.alloc(MiB - 4096, 1)]), QubesValueError],
      [Buffer.concat([Buffer.from(`${MiB}\n`), Buffer.alloc(MiB + 1, 1)]), QubesValueError],
    ] as const) {
      await assert.rejects(stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', [payload]), (e: Error) => {
        assert.ok(e instanceof cls, `${payload.subarray(0, 10).toString()}: ${e.name}: ${e.message}`);
        return true;
      });
      assert.equal(await sha256(img()), before);
      assert.deepEqual(await listFiles(volDir()), files);
    }
    assert.equal(rig.rt.app.domain('imp').storage.get('private').size, MiB);
  });

  test('ImportWithSize: 40 MiB, unaligned 64 KiB chunks, data and zeros mixed inside blocks: same bytes, holes kept', async () => {
    // Larger than the writes kept in flight, so the payload is paused and resumed.
    const size = 40 * MiB;
    const data = Buffer.alloc(size);
    for (let at = 4096 + 17, i = 0; at < size - MiB; at += 3 * MiB + 12_345, i++) pattern(MiB + 999, i).copy(data, at);
    data.fill(0, 10 * MiB, 10 * MiB + 8192); // zero blocks in the middle of data
    data[size - 1] = 0x5a;
    const payload = Buffer.concat([Buffer.from(`${size}\n`), data]);
    assert.equal(await stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', chunks(payload, 65_536)), '');
    assert.equal(await sha256(img()), hash(data));
    let blocks = 0;
    const zero = Buffer.alloc(4096);
    for (let o = 0; o < size; o += 4096) if (!data.subarray(o, o + 4096).equals(zero)) blocks++;
    const st = await fs.stat(img());
    assert.ok(st.blocks * 512 <= blocks * 4096 + 256 * 1024, `${st.blocks * 512} bytes allocated for ${blocks} data blocks`);
    assert.ok(!(await listFiles(volDir())).some((f) => f.includes('import') || f.includes('tmp')));
  });

  test('a client that goes away in the middle of an import: the old data stays, no files left, import-end False', async () => {
    await stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', [Buffer.from(`${PRIVATE_SIZE}\n`), image(31)]);
    const before = await sha256(img());
    const files = await listFiles(volDir());
    const from = rig.events.length;
    const sock = net.connect(rig.socketPath);
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.on('connect', () => r()));
    // 32 MiB announced, 24 MiB of data sent (writes in flight), then the connection is cut.
    sock.write(Buffer.from(`admin.vm.volume.ImportWithSize+private dom0 name imp\0${32 * MiB}\n`));
    for (let i = 0; i < 24; i++) sock.write(pattern(MiB, 40 + i));
    await new Promise((r) => setTimeout(r, 100));
    sock.destroy();
    await waitFor(() => rig.events.slice(from).some((e) => e.event === 'domain-volume-import-end'), 30_000);
    const end = rig.events.slice(from).find((e) => e.event === 'domain-volume-import-end');
    assert.deepEqual(end?.pairs, [['volume', 'private'], ['success', 'False']]);
    assert.equal(await sha256(img()), before, 'old data kept');
    assert.deepEqual(await listFiles(volDir()), files, 'no temporary files');
    assert.equal(rig.rt.app.domain('imp').storage.get('private').size, PRIVATE_SIZE);
  });

  test('Import refused while the domain runs, and into a volume that keeps no data', async () => {
    await rig.rt.app.start('imp');
    try {
      await assert.rejects(stream(rig, 'admin.vm.volume.Import', 'imp', 'private', [Buffer.alloc(MiB)]), QubesVMNotHaltedError);
      await assert.rejects(
        stream(rig, 'admin.vm.volume.ImportWithSize', 'imp', 'private', [Buffer.from(`${MiB}\n`), Buffer.alloc(MiB)]),
        QubesVMNotHaltedError,
      );
    } finally {
      await rig.rt.app.shutdown('imp');
    }
    await assert.rejects(stream(rig, 'admin.vm.volume.Import', 'imp', 'volatile', [Buffer.alloc(8 * MiB)]), QubesValueError);
  });
});
