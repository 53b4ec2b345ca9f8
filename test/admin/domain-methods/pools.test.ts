// Domains across pools, over the socket: a template change moves the
// snapshot volumes to the new template's pool (Qubes takes a snapshot's pool
// from its source), all or nothing; and the stock client's clone_vm call
// sequence (CreateInPool with pool:VOLUME=POOL, then CloneFrom/CloneTo per
// volume) keeps the source's pools.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { describeEachFs } from '../../helpers/filesystems.js';
import { MiB, listFiles, pattern, sha256 } from '../../helpers/data.js';
import { failingWriter } from '../../domain/helpers.js';
import { PRIVATE_SIZE, startDaemon, type Daemon } from './harness.js';

const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** admin.vm.volume.Info as a map. */
async function info(d: Daemon, vm: string, vol: string): Promise<Map<string, string>> {
  const text = await d.ok('admin.vm.volume.Info', vm, vol);
  return new Map(text.split('\n').filter((l) => l !== '').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** The pool attribute of the saved <volume> with this vid, read from qubes.xml itself. */
async function savedPool(d: Daemon, vid: string): Promise<string | null> {
  const xml = await fs.readFile(d.stateFile, 'utf8');
  const tag = [...xml.matchAll(/<volume\s[^>]*>/g)].map((m) => m[0]).find((t) => t.includes(`vid="${vid}"`));
  return tag ? (/\spool="([^"]*)"/.exec(tag)?.[1] ?? null) : null;
}

const propValue = async (d: Daemon, vm: string, prop: string): Promise<string> =>
  (await d.ok('admin.vm.property.Get', vm, prop)).replace(/^default=\w+ type=\w+ /, '');

describeEachFs('admin domain methods: domains across pools', (tfs, fsctx) => {
  let d: Daemon;
  let p3Dir: string;
  const tplBData = pattern(1 * MiB, 77);
  const saves = { fail: false };

  before(async () => {
    const dir = await fsctx.tempDir('pools');
    d = await startDaemon(tfs, dir, { allMethods: true, writeFile: failingWriter(saves) });
    p3Dir = path.join(dir, 'p3');
    await d.app.addPool('file-reflink', 'p3', { dir_path: p3Dir, setup_check: tfs.reflink });
    await d.ok('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl-a label=black');
    await d.ok('admin.vm.CreateInPool.TemplateVM', 'dom0', '', 'name=tpl-b label=black pool=p3');
    await d.ok('admin.vm.volume.ImportWithSize', 'tpl-b', 'root', Buffer.concat([Buffer.from(`${tplBData.length}\n`), tplBData]));
  });
  after(async () => {
    await d?.stop();
  });

  it('a template in another pool: the root (and a disposable\'s) follows it, the old pool keeps nothing', async () => {
    // work's own volumes in p3; its root is a snapshot of tpl-a's, in default.
    await d.ok('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl-a', 'name=work label=red pool:private=p3 pool:volatile=p3');
    await d.ok('admin.vm.property.Set', 'work', 'template_for_dispvms', 'True');
    await d.ok('admin.vm.Create.DispVM', 'dom0', 'work', 'name=disp1 label=red');
    assert.equal((await info(d, 'work', 'root')).get('pool'), 'default');
    assert.equal((await info(d, 'disp1', 'root')).get('pool'), 'default');
    assert.equal((await info(d, 'disp1', 'private')).get('pool'), 'p3');
    // A start and stop with tpl-a leaves its snapshot's directory in default.
    await d.ok('admin.vm.Start', 'work');
    await d.ok('admin.vm.Shutdown', 'work', 'wait');
    const defaultPool = d.poolDir;
    assert.ok((await fs.stat(path.join(defaultPool, 'appvms', 'work'))).isDirectory(), 'work has a directory in default before');

    // qvm-prefs work template tpl-b
    assert.equal(await d.ok('admin.vm.property.Set', 'work', 'template', 'tpl-b'), '');
    assert.equal(await propValue(d, 'work', 'template'), 'tpl-b');
    const root = await info(d, 'work', 'root');
    assert.equal(root.get('pool'), 'p3');
    assert.equal(root.get('source'), 'vm-templates/tpl-b/root');
    assert.equal(root.get('size'), String(tplBData.length), 'the snapshot takes its new source\'s size');
    // The disposable based on work follows too (its root's source is tpl-b's).
    assert.equal((await info(d, 'disp1', 'root')).get('pool'), 'p3');
    assert.equal((await info(d, 'disp1', 'root')).get('source'), 'vm-templates/tpl-b/root');
    // Nothing of work or disp1 is left in default.
    const left = (await listFiles(defaultPool)).filter((f) => /^appvms\/(work|disp1)\//.test(f));
    assert.deepEqual(left, []);
    await assert.rejects(fs.stat(path.join(defaultPool, 'appvms', 'work')), { code: 'ENOENT' });
    await assert.rejects(fs.stat(path.join(defaultPool, 'appvms', 'disp1')), { code: 'ENOENT' });
    // Saved so: qubes.xml names the new pool, and a restart reads it back.
    assert.equal(await savedPool(d, 'appvms/work/root'), 'p3');
    assert.equal(await savedPool(d, 'appvms/disp1/root'), 'p3');
    await d.restart();
    assert.equal((await info(d, 'work', 'root')).get('pool'), 'p3');

    // The start snapshots tpl-b's data, in p3.
    await d.ok('admin.vm.Start', 'work');
    const running = await info(d, 'work', 'root');
    assert.ok(running.get('path')!.startsWith(p3Dir + path.sep), `root path ${running.get('path')} is in p3`);
    assert.equal(await sha256(running.get('path')!), digest(tplBData));
    // Refused while running; nothing changes.
    const xmlBefore = await fs.readFile(d.stateFile);
    const err = await d.fail('admin.vm.property.Set', 'work', 'template', 'tpl-a');
    assert.equal(err.name, 'QubesVMNotHaltedError');
    assert.equal(await propValue(d, 'work', 'template'), 'tpl-b');
    assert.equal((await info(d, 'work', 'root')).get('pool'), 'p3');
    assert.deepEqual(await fs.readFile(d.stateFile), xmlBefore);
    await d.ok('admin.vm.Shutdown', 'work', 'wait');

    // And back: the root returns to default, nothing of it stays in p3.
    await d.ok('admin.vm.property.Set', 'work', 'template', 'tpl-a');
    assert.equal((await info(d, 'work', 'root')).get('pool'), 'default');
    assert.equal((await info(d, 'disp1', 'root')).get('pool'), 'default');
    assert.deepEqual((await listFiles(p3Dir)).filter((f) => /^appvms\/(work|disp1)\/root/.test(f)), []);
    assert.equal(await savedPool(d, 'appvms/work/root'), 'default');
    for (const n of ['disp1', 'work']) await d.ok('admin.vm.Remove', n);
  });

  it('a pool that refuses the moved volume: the old template and volumes stay, nothing is saved or left', async () => {
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl-a', 'name=w2 label=red');
    // A file where p3 would make w2's directory: p3 cannot make the volume.
    await fs.mkdir(path.join(p3Dir, 'appvms'), { recursive: true });
    const blocker = path.join(p3Dir, 'appvms', 'w2');
    await fs.writeFile(blocker, 'not a directory');
    const xmlBefore = await fs.readFile(d.stateFile);
    const p3Before = await listFiles(p3Dir);
    const defaultBefore = await listFiles(d.poolDir);

    const err = await d.fail('admin.vm.property.Set', 'w2', 'template', 'tpl-b');
    assert.equal(err.name, 'StoragePoolException', err.message);
    assert.equal(await propValue(d, 'w2', 'template'), 'tpl-a');
    const root = await info(d, 'w2', 'root');
    assert.equal(root.get('pool'), 'default');
    assert.equal(root.get('source'), 'vm-templates/tpl-a/root');
    assert.deepEqual(await fs.readFile(d.stateFile), xmlBefore);
    assert.deepEqual(await listFiles(p3Dir), p3Before);
    assert.deepEqual(await listFiles(d.poolDir), defaultBefore);
    await d.restart();
    assert.equal(await propValue(d, 'w2', 'template'), 'tpl-a');
    assert.equal((await info(d, 'w2', 'root')).get('pool'), 'default');

    // p3 can now, but the save fails: the volume made in p3 goes again.
    await fs.unlink(blocker);
    saves.fail = true;
    try {
      const e2 = await d.fail('admin.vm.property.Set', 'w2', 'template', 'tpl-b');
      assert.equal(e2.name, 'StoragePoolException', e2.message);
      assert.match(e2.message, /ENOSPC/);
    } finally {
      saves.fail = false;
    }
    assert.equal(await propValue(d, 'w2', 'template'), 'tpl-a');
    assert.equal((await info(d, 'w2', 'root')).get('pool'), 'default');
    assert.deepEqual(await fs.readFile(d.stateFile), xmlBefore);
    await assert.rejects(fs.stat(path.join(p3Dir, 'appvms', 'w2')), { code: 'ENOENT' }, 'nothing of w2 left in p3');
    assert.deepEqual(await listFiles(d.poolDir), defaultBefore);

    // Then the same change goes through.
    await d.ok('admin.vm.property.Set', 'w2', 'template', 'tpl-b');
    assert.equal((await info(d, 'w2', 'root')).get('pool'), 'p3');
    await d.ok('admin.vm.Remove', 'w2');
  });

  it('a new AppVM of tpl-b without a pool: its root is in p3, the rest in default', async () => {
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl-b', 'name=w3 label=red');
    assert.equal((await info(d, 'w3', 'root')).get('pool'), 'p3');
    assert.equal((await info(d, 'w3', 'private')).get('pool'), 'default');
    assert.equal((await info(d, 'w3', 'volatile')).get('pool'), 'default');
    await d.ok('admin.vm.Remove', 'w3');
  });

  it("the stock client's clone_vm sequence keeps each volume in the source's pool", async () => {
    await d.ok('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl-a', 'name=src label=green pool:private=p3');
    const data = pattern(PRIVATE_SIZE, 5);
    await d.ok('admin.vm.volume.Import', 'src', 'private', data);
    // clone_vm: the volumes not in their default pool (snap_on_start and
    // read-only ones skipped), sorted by name, as pool:VOLUME=POOL.
    const vols = (await d.ok('admin.vm.volume.List', 'src')).split('\n').filter((l) => l !== '').sort();
    const pools: string[] = [];
    for (const v of vols) {
      const i = await info(d, 'src', v);
      if (i.get('snap_on_start') === 'True' || i.get('rw') !== 'True') continue;
      const dflt = (await d.ok('admin.property.Get', 'dom0', `default_pool_${v}`)).replace(/^default=\w+ type=\w+ /, '');
      if (dflt !== i.get('pool')) pools.push(`pool:${v}=${i.get('pool')}`);
    }
    assert.deepEqual(pools, ['pool:private=p3']);
    await d.ok('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl-a', `name=dst label=green ${pools.join(' ')}`);
    for (const v of (await d.ok('admin.vm.volume.List', 'dst')).split('\n').filter((l) => l !== '').sort()) {
      if ((await info(d, 'dst', v)).get('save_on_stop') !== 'True') continue;
      const token = await d.ok('admin.vm.volume.CloneFrom', 'src', v);
      assert.equal(await d.ok('admin.vm.volume.CloneTo', 'dst', v, token), '');
    }
    assert.equal((await info(d, 'dst', 'private')).get('pool'), 'p3');
    assert.equal((await info(d, 'dst', 'root')).get('pool'), 'default');
    assert.equal((await info(d, 'dst', 'volatile')).get('pool'), 'default');
    assert.equal(await sha256(path.join(p3Dir, 'appvms', 'dst', 'private.img')), digest(data));
    for (const n of ['dst', 'src']) await d.ok('admin.vm.Remove', n);
  });
});


