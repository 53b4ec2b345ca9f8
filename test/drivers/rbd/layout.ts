// What is specific to rbd on the real cluster: image names, one image per
// origin volume, revisions as RBD snapshots, in-place writes with
// revisions_to_keep=-1, RADOS namespaces. The volume contract itself is
// checked by the conformance suite (test/conformance/rbd.ts). Imported by
// rbd.test.ts.
import { it, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MiB } from '../../helpers/data.js';
import { imageOfVid, vidOfImage } from '../../../src/drivers/rbd/pool.js';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import type { DomainStorage } from '../../../src/storage/domain-storage.js';
import type { RbdPool } from '../../../src/drivers/rbd/pool.js';
import { CEPH_POOL, cleanupAfter, describeRbd, domainOn, imagesWith, makeRbdPool, rbdSync, snapsOf, text, uniquePrefix, writeVol } from './helpers.js';

const rv = (v: unknown): RbdVolume => v as RbdVolume;

describeRbd('rbd image names', () => {
  it('maps every legal vid to an image name and back', () => {
    for (const vid of ['appvms/work/private', 'vm-templates/fedora-40-xfce/root', 'a/b.c+d_e-f/g', 'x/y']) {
      const img = imageOfVid('qubes-', vid);
      assert.ok(!img.includes('/') && !img.includes('@'), img);
      assert.equal(vidOfImage('qubes-', img), vid);
    }
    assert.equal(vidOfImage('qubes-', 'qubes-appvms=work=private~snap'), null, 'helper images are not volumes');
    assert.equal(vidOfImage('qubes-', 'other-appvms=work=private'), null, 'another prefix is not ours');
  });
});

describeRbd('rbd layout', () => {
  const prefix = uniquePrefix('life');
  let pool: RbdPool;
  let tpl: DomainStorage;
  let app: DomainStorage;
  cleanupAfter(prefix);

  before(async () => {
    pool = makeRbdPool({ prefix });
    await pool.setup();
    tpl = domainOn(pool, 'tpl', 'TemplateVM');
    app = domainOn(pool, 'work', 'AppVM', tpl);
    await tpl.create();
    await app.create();
  });

  it('makes one image per origin volume, none for snapshot and volatile volumes until they start', async () => {
    assert.deepEqual(imagesWith(prefix), [
      `${prefix}appvms=work=private`,
      `${prefix}vm-templates=tpl=private`,
      `${prefix}vm-templates=tpl=root`,
    ]);
    const info = JSON.parse(rbdSync(['info', `${CEPH_POOL}/${prefix}vm-templates=tpl=root`, '--format', 'json'])) as { size: number };
    assert.equal(info.size, 8 * MiB);
    assert.match(await tpl.get('root').path(), new RegExp(`^rbd:${CEPH_POOL}/${prefix}vm-templates=tpl=root:conf=`));
    await app.start();
    assert.match(await app.get('root').path(), /~snap/);
    await app.stop();
    assert.deepEqual(imagesWith(prefix).filter((i) => i.includes('~')), [], 'no running images left');
  });

  it('keeps revisions as RBD snapshots qs-rev-ID-TIME', async () => {
    const v = app.get('private');
    for (const word of ['one', 'two', 'three']) {
      await v.start();
      await writeVol(v, 0, word.padEnd(8, '\0'));
      await v.stop();
    }
    const revs = await v.revisions();
    const snaps = snapsOf(rv(v).image);
    assert.equal(snaps.filter((s) => s.startsWith('qs-rev-')).length, revs.length, snaps.join(' '));
    for (const r of revs) assert.ok(snaps.some((s) => s.startsWith(`qs-rev-${r.id}-`)), `snapshot of revision ${r.id}`);
  });

  it('holds no image open between operations: no watchers after a start or a stop', async () => {
    // An image this daemon held open would be a watcher, and another host's rbd_remove refuses those.
    const watched = (): string[] =>
      imagesWith(prefix).filter(
        (img) => (JSON.parse(rbdSync(['status', `${CEPH_POOL}/${img}`, '--format', 'json'])) as { watchers: unknown[] }).watchers.length > 0,
      );
    await app.start();
    assert.ok(imagesWith(prefix).some((i) => i.endsWith('~snap')), 'the running clone exists');
    assert.deepEqual(watched(), [], 'watched while running');
    await app.stop();
    assert.deepEqual(watched(), [], 'watched after the stop');
  });

  it('exportInto says the data is complete (end) before removing its export snapshot, and removes it', async () => {
    const v = app.get('private');
    const image = rv(v).image;
    let atEnd: string[] = [];
    let bytes = 0;
    await v.exportInto({
      begin: async () => undefined,
      data: async (_offset, b) => {
        bytes += b.length;
      },
      // The driver waits for this before letting go of its snapshot: the reader finishes meanwhile.
      end: async () => {
        atEnd = snapsOf(image);
      },
    });
    assert.ok(bytes > 0, 'data was handed over');
    assert.ok(atEnd.some((s) => s.startsWith('qs-export-')), `the export snapshot still there at the end: ${atEnd.join(' ')}`);
    assert.deepEqual(snapsOf(image).filter((s) => s.startsWith('qs-export-')), [], 'and removed after it');
  });

  it('exportInto lends its pieces: each unchanged until its data() resolves, read into a few reused buffers', async () => {
    // 36 MiB of random data: 9 reads of 4 MiB, more than the reads in flight plus the one handed over.
    const v = app.get('private');
    const data = randomBytes(36 * MiB);
    const w = await v.importWriter(data.length);
    let done = 0;
    while (done < data.length) done += (await w.writev([data.subarray(done)], done)).bytesWritten;
    await v.importDataEnd(true);
    const got = Buffer.alloc(data.length);
    const buffers = new Set<ArrayBufferLike>();
    let pieces = 0;
    const changed: number[] = [];
    await v.exportInto({
      begin: async () => undefined,
      data: async (offset, bytes) => {
        pieces++;
        buffers.add(bytes.buffer);
        const held = Buffer.from(bytes);
        // Held a while: the reads running ahead land meanwhile, and must not land here.
        await new Promise((r) => setTimeout(r, 40));
        if (!bytes.equals(held)) changed.push(offset);
        held.copy(got, offset);
      },
      end: async () => undefined,
    });
    assert.deepEqual(changed, [], 'pieces changed while the sink held them');
    assert.ok(got.equals(data), 'the export has the data');
    assert.ok(pieces >= 9, `${pieces} pieces`);
    assert.ok(buffers.size < 9, `read into ${buffers.size} buffers for 9 reads: reused, not fresh memory per read`);
  });

  it('removes the domains and leaves no images', async () => {
    await app.remove();
    await tpl.remove();
    assert.deepEqual(imagesWith(prefix), []);
  });
});

describeRbd('rbd revisions_to_keep=-1 and namespaces', () => {
  const prefix = uniquePrefix('inplace');
  cleanupAfter(prefix);

  it('writes in place (no snapshot) and refuses snapshots and exports while running', async () => {
    const pool = makeRbdPool({ prefix, revisionsToKeep: 1 });
    await pool.setup();
    const tpl = domainOn(pool, 'tpl', 'TemplateVM');
    const app = domainOn(pool, 'work', 'AppVM', tpl);
    await tpl.create();
    await app.create();
    const root = tpl.get('root');
    root.setRevisionsToKeep(-1);
    await tpl.start();
    assert.deepEqual(snapsOf(rv(root).image), [], 'no snapshot taken');
    await writeVol(root, 0, 'in place');
    await assert.rejects(app.start(), /snapshots disabled/);
    await assert.rejects(root.export(), /snapshots disabled/);
    await tpl.stop();
    assert.deepEqual(await root.revisions(), [], 'no revision made');
    await app.start();
    assert.equal(await text(app.get('root')), 'in place');
    await app.stop();
    await app.remove();
    await tpl.remove();
  });

  it('keeps images inside a RADOS namespace when one is given', async () => {
    const ns = `qsns${Date.now() % 100000}`;
    const pool = makeRbdPool({ prefix, namespace: ns });
    await pool.setup();
    const vm = domainOn(pool, 'nsvm', 'StandaloneVM');
    await vm.create();
    assert.deepEqual(imagesWith(prefix), [], 'nothing in the default namespace');
    assert.deepEqual(await pool.listVolumes(), ['appvms/nsvm/private', 'appvms/nsvm/root']);
    assert.match(await vm.get('private').path(), new RegExp(`^rbd:${CEPH_POOL}/${ns}/`));
    await vm.start();
    await writeVol(vm.get('private'), 0, 'in a namespace');
    await vm.stop();
    assert.equal(await text(vm.get('private')), 'in a namespace');
    await vm.remove();
    assert.deepEqual(await pool.listVolumes(), []);
  });
});
