// What is specific to file-reflink on real filesystems: its on-disk layout,
// sparseness and reflink use, in-place writes with revisions_to_keep=-1, and
// domain storage over it. The volume contract itself (every kind, revisions,
// revert, resize, import, export, clones, usage, verify, crashes) is checked
// by the conformance suite (test/conformance/file-reflink.test.ts).
import { it, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { MiB, allocated, listFiles, spaceTaken, pattern, readAt, sha256, writeAt } from '../../helpers/data.js';
import { domain, makePool, scenario, type Scenario } from '../../helpers/reflink-scenario.js';
import { QubesValueError } from '../../../src/storage/errors.js';
import { DomainStorage } from '../../../src/storage/domain-storage.js';
import type { Volume } from '../../../src/storage/volume.js';
import type { FileReflinkVolume } from '../../../src/drivers/file-reflink/volume.js';

const fv = (v: Volume): FileReflinkVolume => v as FileReflinkVolume;

const text = async (v: Volume, n = 16): Promise<string> =>
  (await readAt(await v.path(), 0, n)).toString('latin1').replace(/\0+$/, '');

describeEachFs('file-reflink layout', (tfs, ctx) => {
  let dir: string;
  let s: Scenario;
  const opts = () => ({ setupCheck: tfs.reflink, revisionsToKeep: 2 });

  before(async () => {
    dir = await ctx.tempDir('layout');
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

  it('names revisions IMAGE.ID@TIME, next to the image', async () => {
    const v = s.app.get('private');
    await v.start();
    await writeAt(await v.path(), 0, 'one');
    await v.stop();
    const [r] = await v.revisions();
    assert.ok(r);
    assert.ok((await listFiles(dir)).includes(`appvms/work/private.img.${r.id}@${r.time}`));
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

  it('gives a volatile volume a sparse image of its size', async () => {
    await s.app.start();
    assert.equal(await allocated(await s.app.get('volatile').path()), 0, 'volatile is sparse');
    assert.equal((await fs.stat(await s.app.get('volatile').path())).size, 8 * MiB);
    await s.app.stop();
  });

  it("gives a DispVM a snapshot of its AppVM's private volume, and of the template's root up the chain", async () => {
    await s.app.start();
    await writeAt(await s.app.get('private').path(), 0, 'app private');
    await s.app.stop();
    assert.equal(s.disp.get('private').source, s.app.get('private'));
    assert.equal(s.disp.get('root').source, s.tpl.get('root'), 'the real source is up the chain');
    await s.disp.start();
    assert.equal(await text(s.disp.get('private')), 'app private');
    await writeAt(await s.disp.get('private').path(), 0, 'disp wrote this');
    await s.disp.stop();
    await s.app.start();
    assert.equal(await text(s.app.get('private')), 'app private', 'DispVM writes never reach the AppVM');
    await s.app.stop();
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

  it('removes the domains and leaves no files', async () => {
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
