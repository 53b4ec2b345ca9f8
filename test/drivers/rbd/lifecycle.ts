// rbd on the real cluster: the storage-core list (lifecycle of each volume
// kind, revisions, revert, resize, export while running, imports, snapshot
// semantics, the DispVM chain, usage, removal). Imported by rbd.test.ts.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { MiB, pattern, sha256, writeAt } from '../../helpers/data.js';
import { makePool as makeReflinkPool, domain as reflinkDomain } from '../../helpers/reflink-scenario.js';
import { QubesValueError, QubesVolumeRevisionNotFoundError, StoragePoolException } from '../../../src/storage/errors.js';
import { imageOfVid, vidOfImage } from '../../../src/drivers/rbd/pool.js';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import type { DomainStorage } from '../../../src/storage/domain-storage.js';
import type { RbdPool } from '../../../src/drivers/rbd/pool.js';
import {
  CEPH_POOL,
  cleanupAfter,
  describeRbd,
  domainOn,
  imagesWith,
  makeRbdPool,
  rbdTempFiles,
  readSpec,
  sha,
  snapsOf,
  tempDir,
  text,
  uniquePrefix,
  volumeBytes,
  writeVol,
} from './helpers.js';

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

describeRbd('rbd volumes', () => {
  const prefix = uniquePrefix('life');
  let pool: RbdPool;
  let tmp: string;
  let tpl: DomainStorage;
  let app: DomainStorage;
  let disp: DomainStorage;
  cleanupAfter(prefix);
  after(() => fs.rm(tmp, { recursive: true, force: true }));

  before(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rbd-life-'));
    pool = makeRbdPool({ prefix, tmpDir: tmp });
    await pool.setup();
    tpl = domainOn(pool, 'tpl', 'TemplateVM');
    app = domainOn(pool, 'work', 'AppVM', tpl);
    disp = domainOn(pool, 'disp1', 'DispVM', app);
    await tpl.create();
    await app.create();
    await disp.create();
  });

  it('makes one image per origin volume, none for snapshot and volatile volumes until they start', async () => {
    assert.deepEqual(imagesWith(prefix), [
      `${prefix}appvms=work=private`,
      `${prefix}vm-templates=tpl=private`,
      `${prefix}vm-templates=tpl=root`,
    ]);
    const info = JSON.parse((await import('./helpers.js')).rbdSync(['info', `${CEPH_POOL}/${prefix}vm-templates=tpl=root`, '--format', 'json'])) as { size: number };
    assert.equal(info.size, 8 * MiB);
    assert.match(await tpl.get('root').path(), new RegExp(`^rbd:${CEPH_POOL}/${prefix}vm-templates=tpl=root:conf=`));
  });

  it('keeps origin data across stop and start, with no copy (the domain writes the image)', async () => {
    await tpl.start();
    assert.equal(await tpl.get('root').isDirty(), true);
    await writeVol(tpl.get('private'), 0, 'template private');
    await writeVol(tpl.get('root'), 0, 'root v1');
    await tpl.stop();
    assert.equal(await tpl.get('root').isDirty(), false);
    await tpl.start();
    assert.equal(await text(tpl.get('private')), 'template private');
    assert.equal(await text(tpl.get('root')), 'root v1');
    await tpl.stop();
  });

  it('shows template changes to a snapshot only after the template commits and the AppVM restarts', async () => {
    await app.start();
    assert.match(await app.get('root').path(), /~snap/);
    assert.equal(await text(app.get('root')), 'root v1');
    await tpl.start();
    await writeVol(tpl.get('root'), 0, 'root v2');
    assert.equal(await text(app.get('root')), 'root v1', 'running template writes are invisible');
    assert.equal(await app.get('root').isOutdated(), false);
    await tpl.stop();
    assert.equal(await text(app.get('root')), 'root v1', 'the running AppVM keeps its snapshot');
    assert.equal(await app.get('root').isOutdated(), true, 'is_outdated after the source committed');
    await app.stop();
    await app.start();
    assert.equal(await text(app.get('root')), 'root v2');
    assert.equal(await app.get('root').isOutdated(), false);
    await app.stop();
  });

  it('an AppVM started while its template runs gets the template\'s committed data', async () => {
    await tpl.start();
    await writeVol(tpl.get('root'), 0, 'root v3 (uncommitted)');
    await app.start();
    assert.equal(await text(app.get('root')), 'root v2');
    await app.stop();
    await tpl.stop();
    await app.start();
    assert.equal(await text(app.get('root'), 21), 'root v3 (uncommitted)');
    await app.stop();
  });

  it('drops snapshot writes on stop and gives an empty volatile at every start', async () => {
    await app.start();
    await writeVol(app.get('root'), 0, 'scribble');
    await writeVol(app.get('volatile'), 0, 'swap data');
    await app.stop();
    assert.equal(await app.get('root').isDirty(), false);
    assert.deepEqual(imagesWith(prefix).filter((i) => i.includes('~')), [], 'no running images left');
    await app.start();
    assert.equal(await text(app.get('root'), 21), 'root v3 (uncommitted)');
    assert.equal(await text(app.get('volatile')), '');
    assert.equal((await volumeBytes(app.get('volatile'))).length, 8 * MiB);
    await app.stop();
    assert.ok(!snapsOf(`${prefix}vm-templates=tpl=root`).some((s) => s.startsWith('qs-base-')), 'base snapshots removed');
  });

  it("gives a DispVM a snapshot of its AppVM's private volume", async () => {
    await app.start();
    await writeVol(app.get('private'), 0, 'app private');
    await app.stop();
    assert.equal(disp.get('private').source, app.get('private'));
    assert.equal(disp.get('root').source, tpl.get('root'), 'the real source is up the chain');
    await disp.start();
    assert.equal(await text(disp.get('private')), 'app private');
    assert.equal(await text(disp.get('root'), 21), 'root v3 (uncommitted)');
    await writeVol(disp.get('private'), 0, 'disp wrote this');
    await disp.stop();
    await app.start();
    assert.equal(await text(app.get('private')), 'app private', 'DispVM writes never reach the AppVM');
    await app.stop();
  });

  it('keeps N revisions as RBD snapshots, prunes the oldest, with increasing ids and UTC times', async () => {
    const v = app.get('private');
    const before = Number((await v.revisions()).at(-1)?.id ?? 0);
    for (const word of ['one', 'two', 'three']) {
      await v.start();
      await writeVol(v, 0, word.padEnd(8, '\0'));
      await v.stop();
    }
    const revs = await v.revisions();
    assert.equal(revs.length, 2);
    const ids = revs.map((r) => Number(r.id));
    assert.ok(ids[0]! < ids[1]! && ids[1]! > before, `ids increase: ${ids.join(',')}`);
    for (const r of revs) {
      assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(Math.abs(Date.parse(r.time) - Date.now()) < 120_000, 'time is now, in UTC');
    }
    const snaps = snapsOf(rv(v).image);
    assert.equal(snaps.filter((s) => s.startsWith('qs-rev-')).length, 2, snaps.join(' '));
  });

  it('reverts to the exact bytes, and the revert itself can be reverted', async () => {
    const v = app.get('private');
    const current = sha(await volumeBytes(v));
    const revs = await v.revisions();
    const target = revs[0]!;
    const snap = snapsOf(rv(v).image).find((s) => s.startsWith(`qs-rev-${target.id}-`))!;
    const targetHash = sha(await readSpec(`${CEPH_POOL}/${rv(v).image}@${snap}`));
    await v.revert(target.id);
    assert.equal(sha(await volumeBytes(v)), targetHash);
    const after = await v.revisions();
    assert.ok(!after.some((r) => r.id === target.id), 'the restored revision became the current data');
    await v.revert();
    assert.equal(sha(await volumeBytes(v)), current);
  });

  it('refuses revert while dirty, and to an unknown revision', async () => {
    const v = app.get('private');
    await assert.rejects(v.revert('999'), QubesVolumeRevisionNotFoundError);
    await v.start();
    await assert.rejects(v.revert(), (e: unknown) => e instanceof StoragePoolException && /dirty/.test(String(e)));
    await v.stop();
  });

  it('grows on resize keeping data, refuses shrink without force, and a running copy follows', async () => {
    const v = app.get('private');
    const head = await text(v);
    await v.resize(6 * MiB);
    assert.equal((await volumeBytes(v)).length, 6 * MiB);
    assert.equal(await text(v), head);
    await assert.rejects(v.resize(5 * MiB), (e: unknown) => e instanceof QubesValueError && /shrinking/.test(String(e)));
    await v.start();
    await v.resize(7 * MiB);
    assert.equal((await volumeBytes(v)).length, 7 * MiB, 'running image resized');
    await v.stop();
    assert.equal((await volumeBytes(v)).length, 7 * MiB);
    await v.resize(6 * MiB, { force: true });
    assert.equal(v.size, 6 * MiB);
    assert.equal((await volumeBytes(v)).length, 6 * MiB);
    assert.equal(await text(v), head);
    // a running snapshot follows too
    await app.start();
    await app.get('root').resize(12 * MiB);
    assert.equal((await volumeBytes(app.get('root'))).length, 12 * MiB);
    await app.stop();
  });

  it('refuses to resize a read-only volume', async () => {
    const v = tpl.get('private');
    v.setRw(false);
    try {
      await assert.rejects(v.resize(9 * MiB), /read-only/);
    } finally {
      v.setRw(true);
    }
  });

  it('exports the committed data, also while running (the pre-start snapshot)', async () => {
    const v = app.get('private');
    const committed = sha(await volumeBytes(v));
    await v.start();
    await writeVol(v, 0, 'uncommitted!');
    const p = await v.export();
    try {
      assert.equal((await fs.stat(p)).isFile(), true);
      assert.equal(await sha256(p), committed);
    } finally {
      await v.exportEnd(p);
    }
    await v.stop();
    const p2 = await v.export();
    assert.notEqual(await sha256(p2), committed, 'after stop the export has the new data');
    await v.exportEnd(p2);
    assert.deepEqual(await rbdTempFiles(tmp), [], 'no export files left');
    assert.ok(!snapsOf(rv(v).image).some((s) => s.startsWith('qs-export-')), 'no export snapshots left');
  });

  it('imports data on success only; a failed import keeps the old data and leaves nothing', async () => {
    const v = app.get('private');
    const old = sha(await volumeBytes(v));
    const revsBefore = (await v.revisions()).length;
    const data = pattern(2 * MiB, 7);
    let p = await v.importData(2 * MiB);
    await writeAt(p, 0, data.subarray(0, MiB));
    await v.importDataEnd(false);
    assert.equal(sha(await volumeBytes(v)), old);
    assert.deepEqual(await rbdTempFiles(tmp), [], 'no import file left');
    assert.equal((await v.revisions()).length, revsBefore);
    p = await v.importData(2 * MiB);
    await writeAt(p, 0, data);
    await v.importDataEnd(true);
    assert.equal(v.size, 2 * MiB);
    assert.deepEqual(await volumeBytes(v), data);
    assert.ok((await v.revisions()).length > 0, 'the old data became a revision');
    assert.ok(!snapsOf(rv(v).image).some((s) => s.startsWith('qs-import')), 'no import snapshots left');
    // an import whose data turns out unreadable midway: rolled back
    const before = sha(await volumeBytes(v));
    p = await v.importData(3 * MiB);
    await writeAt(p, 0, pattern(3 * MiB, 8));
    await fs.rm(p); // the file vanishes: the import fails
    await assert.rejects(v.importDataEnd(true), StoragePoolException);
    assert.equal(sha(await volumeBytes(v)), before, 'old data kept after a failed import');
    assert.equal(v.size, 2 * MiB);
  });

  it('refuses import while running and into kinds that keep no data', async () => {
    await app.start();
    await assert.rejects(app.get('private').importData(MiB), /in use/);
    await app.stop();
    await assert.rejects(app.get('root').importData(MiB), /snapshot volume/);
  });

  it('imports a volume from a file-reflink pool, and from this pool', async () => {
    const dir = await tempDir('other');
    const other = makeReflinkPool(dir, { setupCheck: false }, 'other');
    await other.setup();
    const ext = reflinkDomain(other, 'ext', 'StandaloneVM', { setupCheck: false });
    await ext.create();
    await ext.start();
    await writeAt(await ext.get('private').path(), MiB, pattern(MiB, 3));
    await ext.stop();
    const want = await sha256(await ext.get('private').path());
    await app.get('private').importVolume(ext.get('private'));
    assert.equal(sha(await volumeBytes(app.get('private'))), want);
    await tpl.get('private').importVolume(app.get('private'));
    assert.equal(sha(await volumeBytes(tpl.get('private'))), want);
    // and back out to file-reflink
    await ext.get('private').importVolume(tpl.get('root'));
    assert.equal(await sha256(await ext.get('private').path()), sha(await volumeBytes(tpl.get('root'))));
  });

  it('clones a domain within the pool and removes the clone', async () => {
    const clone = domainOn(pool, 'tpl2', 'TemplateVM');
    await clone.createAsClone(tpl);
    for (const name of ['root', 'private'])
      assert.equal(sha(await volumeBytes(clone.get(name))), sha(await volumeBytes(tpl.get(name))));
    await clone.remove();
    assert.deepEqual(imagesWith(`${prefix}vm-templates=tpl2`), []);
  });

  it('reports usage (rbd du), size and usage details (ceph df)', async () => {
    const info = await app.get('private').info();
    assert.equal(info.pool, 'rbdpool');
    assert.equal(info.vid, 'appvms/work/private');
    assert.ok(info.usage > 0 && info.usage <= info.size + 4 * MiB, `usage ${info.usage}`);
    const d = await pool.usageDetails();
    assert.ok(d['data_size']! > 0 && d['data_usage']! > 0 && d['data_usage']! <= d['data_size']!, JSON.stringify(d));
    assert.ok(d['cluster_size']! > 0);
    assert.deepEqual(await pool.listVolumes(), ['appvms/work/private', 'vm-templates/tpl/private', 'vm-templates/tpl/root']);
    const got = await pool.getVolume('appvms/work/private');
    assert.equal(got.size, app.get('private').size);
  });

  it('verifies: a missing image is an error naming it', async () => {
    const lone = domainOn(pool, 'lonely', 'StandaloneVM');
    await assert.rejects(lone.verify(), /missing image/);
    await assert.rejects(lone.start(), /missing image/);
    assert.equal(await lone.get('private').isDirty(), false, 'a failed start starts nothing');
  });

  it('refuses origin_snapshot volumes at init with a clear error', () => {
    assert.throws(
      () => pool.initVolume(null, { name: 'root', vid: 'appvms/x/root', snap_on_start: true, save_on_stop: true, source: tpl.get('root') }),
      /does not serve origin_snapshot/,
    );
  });

  it('removes the domains and leaves no images', async () => {
    await disp.remove();
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
