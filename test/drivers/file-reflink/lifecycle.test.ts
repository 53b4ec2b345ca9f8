// file-reflink on real filesystems: the lifecycle of each volume kind,
// revisions, revert, resize, export, import, sparseness and reflink use.
import { it, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { MiB, allocated, listFiles, spaceTaken, pattern, readAt, sha256, writeAt } from '../../helpers/data.js';
import { domain, makePool, scenario, type Scenario } from '../../helpers/reflink-scenario.js';
import {
  QubesValueError,
  QubesVolumeRevisionNotFoundError,
  StoragePoolException,
} from '../../../src/storage/errors.js';
import { DomainStorage } from '../../../src/storage/domain-storage.js';
import type { Volume } from '../../../src/storage/volume.js';
import type { FileReflinkVolume } from '../../../src/drivers/file-reflink/volume.js';

const fv = (v: Volume): FileReflinkVolume => v as FileReflinkVolume;

const text = async (v: Volume, n = 16): Promise<string> =>
  (await readAt(await v.path(), 0, n)).toString('latin1').replace(/\0+$/, '');

describeEachFs('file-reflink volumes', (tfs, ctx) => {
  let dir: string;
  let s: Scenario;
  const opts = () => ({ setupCheck: tfs.reflink, revisionsToKeep: 2 });

  before(async () => {
    dir = await ctx.tempDir('lifecycle');
    s = scenario(dir, opts());
    await s.pool.setup();
    await s.tpl.create();
    await s.app.create();
    await s.disp.create();
  });

  it('lays images out under dir_path as Qubes does', async () => {
    const files = await listFiles(dir);
    assert.ok(files.includes('vm-templates/tpl/root.img'), files.join(' '));
    assert.ok(files.includes('vm-templates/tpl/private.img'));
    assert.ok(files.includes('appvms/work/private.img'));
    assert.ok(!files.includes('appvms/work/root.img'), 'a snapshot volume has no image of its own');
    assert.equal((await fs.stat(path.join(dir, 'vm-templates/tpl/root.img'))).size, 8 * MiB);
  });

  it('keeps origin data across stop and start', async () => {
    await s.tpl.start();
    await writeAt(await s.tpl.get('private').path(), 0, 'template private');
    await writeAt(await s.tpl.get('root').path(), 0, 'root v1');
    await s.tpl.stop();
    await s.tpl.start();
    assert.equal(await text(s.tpl.get('private')), 'template private');
    assert.equal(await text(s.tpl.get('root')), 'root v1');
    await s.tpl.stop();
  });

  it('shows template changes to a snapshot only after the template commits and the AppVM restarts', async () => {
    await s.app.start();
    assert.equal(await text(s.app.get('root')), 'root v1');
    await s.tpl.start();
    await writeAt(await s.tpl.get('root').path(), 0, 'root v2');
    assert.equal(await text(s.app.get('root')), 'root v1', 'running template writes are invisible');
    assert.equal(await s.app.get('root').isOutdated(), false);
    await s.tpl.stop();
    assert.equal(await text(s.app.get('root')), 'root v1', 'the running AppVM keeps its snapshot');
    assert.equal(await s.app.get('root').isOutdated(), true, 'is_outdated after the source committed');
    await s.app.stop();
    await s.app.start();
    assert.equal(await text(s.app.get('root')), 'root v2');
    assert.equal(await s.app.get('root').isOutdated(), false);
    await s.app.stop();
  });

  it("gives in info() the same usage, path and is_outdated as the separate calls, halted, running and outdated", async () => {
    // its own pool: the states made here stay out of the other tests
    const s = scenario(await ctx.tempDir('info'), opts());
    await s.pool.setup();
    await s.tpl.create();
    await s.app.create();
    await s.disp.create();
    const check = async (when: string): Promise<void> => {
      for (const ds of [s.tpl, s.app, s.disp]) {
        for (const v of ds.volumes.values()) {
          const info = await v.info();
          const separate = { usage: await v.usage(), path: await v.path(), is_outdated: await v.isOutdated() };
          assert.deepEqual({ usage: info.usage, path: info.path, is_outdated: info.is_outdated }, separate, `${v.vid} ${when}`);
        }
      }
    };
    await check('halted');
    await s.app.start();
    await writeAt(await s.app.get('private').path(), 0, 'running private');
    await check('AppVM running');
    await s.tpl.start();
    await writeAt(await s.tpl.get('root').path(), 0, 'root v1');
    await s.tpl.stop();
    assert.equal((await s.app.get('root').info()).is_outdated, true, 'the template committed while the AppVM ran');
    await check('AppVM running, its root outdated');
    await s.app.stop();
    await check('halted again');
  });

  it('lists the images on disk of many domain directories, made outside too, and nothing else', async () => {
    const root = await ctx.tempDir('list');
    const pool = makePool(root, opts());
    const want: string[] = [];
    // more domain directories than are read at once, in two class directories
    for (let i = 0; i < 60; i++) {
      const rel = `${i % 3 ? 'appvms' : 'vm-templates'}/d${i}`;
      await fs.mkdir(path.join(root, rel), { recursive: true });
      for (const v of ['private', 'root'].slice(0, 1 + (i % 2))) {
        await fs.writeFile(path.join(root, rel, `${v}.img`), '');
        want.push(`${rel}/${v}`);
      }
      // not volumes: working copies, revisions, debris, bad names, a directory
      await fs.writeFile(path.join(root, rel, 'private-dirty.img'), '');
      await fs.writeFile(path.join(root, rel, 'private.img.1@2026-11-26T07:00:00Z'), '');
      await fs.writeFile(path.join(root, rel, '1bad.img'), '');
      await fs.mkdir(path.join(root, rel, 'sub.img'));
    }
    // A folder that is not a class folder is not the pool's (it may be the base directory's backup/).
    await fs.mkdir(path.join(root, 'outside/dom'), { recursive: true });
    await fs.writeFile(path.join(root, 'outside/dom/private.img'), '');
    await fs.writeFile(path.join(root, 'appvms/stray.img'), ''); // not at the depth of an image
    await fs.writeFile(path.join(root, 'loose.img'), '');
    await fs.symlink(path.join(root, 'appvms/d1'), path.join(root, 'appvms/link')); // not followed
    assert.deepEqual(await pool.listVolumes(), want.sort());
  });

  it('drops snapshot writes on stop and gives an empty volatile at every start', async () => {
    await s.app.start();
    await writeAt(await s.app.get('root').path(), 0, 'scribble');
    await writeAt(await s.app.get('volatile').path(), 0, 'swap data');
    await s.app.stop();
    assert.equal(await s.app.get('root').isDirty(), false);
    await s.app.start();
    assert.equal(await text(s.app.get('root')), 'root v2');
    assert.equal(await text(s.app.get('volatile')), '');
    assert.equal(await allocated(await s.app.get('volatile').path()), 0, 'volatile is sparse');
    assert.equal((await fs.stat(await s.app.get('volatile').path())).size, 8 * MiB);
    await s.app.stop();
  });

  it("gives a DispVM a snapshot of its AppVM's private volume", async () => {
    await s.app.start();
    await writeAt(await s.app.get('private').path(), 0, 'app private');
    await s.app.stop();
    assert.equal(s.disp.get('private').source, s.app.get('private'));
    assert.equal(s.disp.get('root').source, s.tpl.get('root'), 'the real source is up the chain');
    await s.disp.start();
    assert.equal(await text(s.disp.get('private')), 'app private');
    assert.equal(await text(s.disp.get('root')), 'root v2');
    await writeAt(await s.disp.get('private').path(), 0, 'disp wrote this');
    await s.disp.stop();
    await s.app.start();
    assert.equal(await text(s.app.get('private')), 'app private', 'DispVM writes never reach the AppVM');
    await s.app.stop();
  });

  it('keeps N revisions, prunes the oldest, with increasing ids and UTC times', async () => {
    const v = s.app.get('private');
    const before = Number((await v.revisions()).at(-1)?.id ?? 0);
    for (const word of ['one', 'two', 'three']) {
      await v.start();
      await writeAt(await v.path(), 0, word.padEnd(8, '\0'));
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
  });

  it('reverts to the exact bytes, and the revert itself can be reverted', async () => {
    const v = s.app.get('private');
    const current = await sha256(await v.path());
    const revs = await v.revisions();
    const target = revs[0]!;
    const targetHash = await sha256(path.join(dir, `appvms/work/private.img.${target.id}@${target.time}`));
    await v.revert(target.id);
    assert.equal(await sha256(await v.path()), targetHash);
    const after = await v.revisions();
    assert.ok(!after.some((r) => r.id === target.id), 'the restored revision became the current data');
    await v.revert(); // newest = the data before the revert
    assert.equal(await sha256(await v.path()), current);
  });

  it('refuses revert while dirty, and to an unknown revision', async () => {
    const v = s.app.get('private');
    await assert.rejects(v.revert('999'), QubesVolumeRevisionNotFoundError);
    await v.start();
    await assert.rejects(v.revert(), (e: unknown) => e instanceof StoragePoolException && /dirty/.test(String(e)));
    await v.stop();
  });

  it('grows on resize keeping data, refuses shrink without force, and a running copy follows', async () => {
    const v = s.app.get('private');
    const head = await text(v);
    await v.resize(6 * MiB);
    assert.equal((await fs.stat(await v.path())).size, 6 * MiB);
    assert.equal(await text(v), head);
    await assert.rejects(v.resize(5 * MiB), (e: unknown) => e instanceof QubesValueError && /shrinking/.test(String(e)));
    await v.start();
    await v.resize(7 * MiB);
    assert.equal((await fs.stat(await v.path())).size, 7 * MiB, 'running copy resized');
    await v.stop();
    assert.equal((await fs.stat(await v.path())).size, 7 * MiB);
    await v.resize(6 * MiB, { force: true });
    assert.equal(v.size, 6 * MiB);
    assert.equal(await text(v), head);
  });

  it('refuses to resize a read-only volume', async () => {
    const v = s.tpl.get('private');
    v.setRw(false);
    try {
      await assert.rejects(v.resize(9 * MiB), /read-only/);
    } finally {
      v.setRw(true);
    }
  });

  it('exports the committed data, also while running (pre-start data)', async () => {
    const v = s.app.get('private');
    const committed = await sha256(await v.path());
    await v.start();
    await writeAt(await v.path(), 0, 'uncommitted!');
    const p = await v.export();
    try {
      assert.equal(await sha256(p), committed);
    } finally {
      await v.exportEnd(p);
    }
    await v.stop();
    const p2 = await v.export();
    assert.notEqual(await sha256(p2), committed, 'after stop the export has the new data');
    await v.exportEnd(p2);
    assert.ok(!(await listFiles(dir)).some((f) => f.includes('-export-')), 'no export links left');
  });

  it('imports data on success only; a failed or short import keeps the old data and leaves nothing', async () => {
    const v = s.app.get('private');
    const old = await sha256(await v.path());
    const data = pattern(2 * MiB, 7);
    // failed
    let p = await v.importData(2 * MiB);
    await writeAt(p, 0, data.subarray(0, MiB));
    await v.importDataEnd(false);
    assert.equal(await sha256(await v.path()), old);
    assert.ok(!(await listFiles(dir)).some((f) => f.includes('-import')), 'no import file left');
    // successful
    p = await v.importData(2 * MiB);
    await writeAt(p, 0, data);
    await v.importDataEnd(true);
    assert.equal(v.size, 2 * MiB);
    assert.deepEqual(await readAt(await v.path(), 0, 2 * MiB), data);
    assert.ok((await v.revisions()).length > 0, 'the old data became a revision');
  });

  it('refuses import while running and into kinds that keep no data', async () => {
    await s.app.start();
    await assert.rejects(s.app.get('private').importData(MiB), /in use/);
    await s.app.stop();
    await assert.rejects(s.app.get('root').importData(MiB), /snapshot volume/);
  });

  it('imports a volume from another pool (and from this one)', async () => {
    const other = makePool(await ctx.tempDir('other-pool'), { setupCheck: tfs.reflink }, 'other');
    await other.setup();
    const ext = domain(other, 'ext', 'StandaloneVM', { setupCheck: tfs.reflink });
    await ext.create();
    await ext.start();
    await writeAt(await ext.get('private').path(), MiB, pattern(MiB, 3));
    await ext.stop();
    const want = await sha256(await ext.get('private').path());
    await s.app.get('private').importVolume(ext.get('private'));
    assert.equal(await sha256(await s.app.get('private').path()), want);
    await s.tpl.get('private').importVolume(s.app.get('private'));
    assert.equal(await sha256(await s.tpl.get('private').path()), want);
  });

  it('clones a domain into another pool, and removes everything', async () => {
    const other = makePool(await ctx.tempDir('clone-pool'), { setupCheck: tfs.reflink }, 'clonepool');
    await other.setup();
    const clone = domain(other, 'tpl2', 'TemplateVM', { setupCheck: tfs.reflink });
    await clone.createAsClone(s.tpl);
    for (const name of ['root', 'private'])
      assert.equal(await sha256(await clone.get(name).path()), await sha256(await s.tpl.get(name).path()));
    await clone.remove();
    assert.deepEqual((await listFiles(other.dirPath)).filter((f) => f.includes('tpl2')), []);
  });

  it('reports usage, size and usage details', async () => {
    const info = await s.app.get('private').info();
    assert.equal(info.pool, 'testpool');
    assert.equal(info.vid, 'appvms/work/private');
    assert.ok(info.usage > 0 && info.usage <= info.size + MiB);
    const d = await s.pool.usageDetails();
    assert.ok(d['data_size']! > 0 && d['data_usage']! > 0 && d['data_usage']! <= d['data_size']!);
    assert.deepEqual(await s.pool.listVolumes(), [
      'appvms/work/private',
      'vm-templates/tpl/private',
      'vm-templates/tpl/root',
    ]);
  });

  it('verifies: a missing image is an error naming it', async () => {
    const lone = domain(s.pool, 'lonely', 'StandaloneVM', opts());
    await assert.rejects(lone.verify(), /missing image file/);
    await assert.rejects(lone.start(), /missing image file/);
    assert.equal(await lone.get('private').isDirty(), false, 'a failed start starts nothing');
  });

  it('removes a domain and leaves no files', async () => {
    await s.disp.remove();
    await s.app.remove();
    await s.tpl.remove();
    assert.deepEqual(await listFiles(dir), []);
  });
});

describeEachFs('file-reflink revisions_to_keep=-1', (tfs, ctx) => {
  it('writes in place (no copies) and refuses snapshots, clones and exports while running', async () => {
    const dir = await ctx.tempDir('inplace');
    const o = { setupCheck: tfs.reflink, revisionsToKeep: 1, privateSize: 64 * MiB };
    const pool = makePool(dir, o);
    await pool.setup();
    const tpl = domain(pool, 'tpl', 'TemplateVM', o);
    const app = domain(pool, 'work', 'AppVM', o, tpl);
    await tpl.create();
    await app.create();
    const root = fv(tpl.get('root'));
    root.setRevisionsToKeep(-1);
    await writeAt(root.files.clean, 0, pattern(4 * MiB, 9));
    const taken = await spaceTaken(dir, tfs.reflink);
    await tpl.start();
    assert.equal((await fs.stat(await root.path())).ino, (await fs.stat(root.files.clean)).ino, 'same inode: no copy');
    const usedByStart = (await spaceTaken(dir, tfs.reflink)) - taken;
    assert.ok(usedByStart < 2 * MiB, `starting used ${usedByStart} bytes`);
    await writeAt(await root.path(), 0, 'in place');
    assert.equal((await readAt(root.files.clean, 0, 8)).toString(), 'in place', 'the committed image is written');
    await assert.rejects(app.start(), /snapshots disabled/);
    await assert.rejects(root.export(), /snapshots disabled/);
    const other = domain(pool, 'copy', 'TemplateVM', o);
    await other.create();
    await assert.rejects(other.get('root').importVolume(root), /snapshots disabled/);
    await tpl.stop();
    assert.deepEqual(await root.revisions(), [], 'no revision made');
    await app.start();
    assert.equal((await readAt(await app.get('root').path(), 0, 8)).toString(), 'in place');
    await app.stop();
    assert.throws(() => app.get('root').setRevisionsToKeep(-1), QubesValueError);
  });
});

describeEachFs('file-reflink copies', (tfs, ctx) => {
  it('keeps images sparse, and (with reflink) starts a large volume without using its size', async () => {
    const dir = await ctx.tempDir('sparse');
    // 2 GiB virtual with 64 MiB of data: bigger than what a copy could afford on a small test fs
    const o = { setupCheck: tfs.reflink, revisionsToKeep: 1, privateSize: 2048 * MiB };
    const pool = makePool(dir, o);
    await pool.setup();
    const vm = domain(pool, 'big', 'StandaloneVM', o);
    await vm.create();
    const priv = fv(vm.get('private'));
    assert.ok((await allocated(priv.files.clean)) < MiB, 'a new image allocates nothing');
    for (let i = 0; i < 16; i++) await writeAt(priv.files.clean, i * 128 * MiB, pattern(4 * MiB, i + 1));
    const data = await allocated(priv.files.clean);
    assert.ok(data >= 64 * MiB && data < 72 * MiB, `allocated ${data}`);
    const hash = await sha256(priv.files.clean);
    const taken = await spaceTaken(dir, tfs.reflink);
    await vm.start();
    const used = (await spaceTaken(dir, tfs.reflink)) - taken;
    if (tfs.reflink) assert.ok(used < 8 * MiB, `a reflink start used ${used} bytes`);
    else {
      assert.ok(used < 80 * MiB, `a sparse copy used ${used} bytes, not the 2 GiB size`);
      assert.ok((await allocated(priv.files.dirty)) < 72 * MiB, 'the copy is sparse');
    }
    assert.equal(await sha256(priv.files.dirty), hash);
    await vm.stop();
    const clone = domain(pool, 'bigclone', 'StandaloneVM', o);
    const taken2 = await spaceTaken(dir, tfs.reflink);
    await clone.createAsClone(vm);
    const used2 = (await spaceTaken(dir, tfs.reflink)) - taken2;
    if (tfs.reflink) assert.ok(used2 < 8 * MiB, `a reflink clone used ${used2} bytes`);
    else assert.ok(used2 < 80 * MiB, `a sparse clone used ${used2} bytes`);
    assert.equal(await sha256(await clone.get('private').path()), hash);
  });

  it(tfs.reflink ? 'accepts the pool with the reflink check' : 'refuses the pool without reflink unless setup_check=False', async () => {
    const dir = await ctx.tempDir('setup');
    const pool = makePool(dir, { setupCheck: true });
    if (tfs.reflink) await pool.setup();
    else await assert.rejects(pool.setup(), /does not support reflink.*setup_check=False/);
  });
});

describeEachFs('domain storage', (tfs, ctx) => {
  it('creation that fails midway leaves nothing behind', async () => {
    const dir = await ctx.tempDir('allornothing');
    const o = { setupCheck: tfs.reflink };
    const pool = makePool(dir, o);
    await pool.setup();
    const vm = domain(pool, 'half', 'StandaloneVM', o);
    // Plant a directory where the private image must go: that creation fails.
    await fs.mkdir(path.join(dir, 'appvms/half/private.img'), { recursive: true });
    await assert.rejects(vm.create());
    await fs.rmdir(path.join(dir, 'appvms/half/private.img'));
    assert.deepEqual(await listFiles(dir), [], 'root.img was removed again');
    await vm.create();
    assert.deepEqual((await listFiles(dir)).sort(), ['appvms/half/private.img', 'appvms/half/root.img']);
  });

  it('refuses a snapshot volume without a template volume to snapshot', () => {
    const pool = makePool('/nonexistent', { setupCheck: false });
    assert.throws(() => domain(pool, 'orphan', 'AppVM', { setupCheck: false }), /has no template/);
    assert.ok(DomainStorage);
  });

  it('refuses planted symlinks in the pool directory', async () => {
    const dir = await ctx.tempDir('symlink');
    const outside = await ctx.tempDir('outside');
    const o = { setupCheck: tfs.reflink };
    const pool = makePool(dir, o);
    await pool.setup();
    await fs.symlink(outside, path.join(dir, 'appvms', 'evil'));
    const vm = domain(pool, 'evil', 'StandaloneVM', o);
    await assert.rejects(vm.create(), /symlink/);
    assert.deepEqual(await listFiles(outside), [], 'nothing written outside the pool');
  });
});
