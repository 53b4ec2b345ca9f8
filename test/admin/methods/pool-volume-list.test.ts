// admin.pool.volume.List over the real socket: for file and file-reflink
// pools it names the volumes the domains hold in the pool, from memory, as
// Qubes does (qubes/api/admin.py lists pool.volumes, which the file and
// reflink drivers answer with the volumes their init_volume made); for a
// driver whose storage is the record (linux-kernel here) it names what the
// pool lists.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { ok, startRig, type Rig } from './helpers.js';

describeEachFs('admin.pool.volume.List', (tfs, fsx) => {
  let rig: Rig;
  let S: string;
  let dir: string;
  before(async () => {
    dir = await fsx.tempDir('pool-volume-list');
    rig = await startRig(tfs, dir);
    S = rig.socketPath;
    const app = rig.rt.app;
    const kernelDir = path.join(dir, 'vm-kernels');
    for (const k of ['6.6.48', '6.1.0']) {
      await fs.mkdir(path.join(kernelDir, k), { recursive: true });
      await fs.writeFile(path.join(kernelDir, k, 'vmlinuz'), 'kernel');
    }
    await app.addPool('linux-kernel', 'linux-kernel', { dir_path: kernelDir });
    await app.setProperty(app.globals, 'default_pool_kernel', 'linux-kernel');
    await app.setProperty(app.globals, 'default_kernel', '6.6.48');
    await app.addPool('file', 'plain', { dir_path: path.join(dir, 'plain') });
    await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await app.createDomain({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl' });
    await app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'red', pool: 'plain' });
  });
  after(() => rig?.stop());

  test('file-reflink: every volume of its domains, images or not (an AppVM root and volatiles have none while halted), sorted', async () => {
    assert.equal(
      await ok(S, 'admin.pool.volume.List', 'dom0', 'default'),
      'appvms/work/private\nappvms/work/root\nappvms/work/volatile\n' +
        'vm-templates/tpl/private\nvm-templates/tpl/root\nvm-templates/tpl/volatile\n',
    );
  });

  test('file: the volumes of the domain in it; none of another pool', async () => {
    assert.equal(await ok(S, 'admin.pool.volume.List', 'dom0', 'plain'), 'appvms/sa/private\nappvms/sa/root\nappvms/sa/volatile\n');
  });

  test('an image on disk that no domain owns is not named (as in Qubes); the driver listing still sees it', async () => {
    const stray = path.join(rig.poolDir, 'appvms', 'stray');
    await fs.mkdir(stray);
    await fs.writeFile(path.join(stray, 'private.img'), '');
    try {
      assert.ok((await rig.rt.app.pool('default').listVolumes()).includes('appvms/stray/private'), 'the pool lists the image');
      assert.doesNotMatch(await ok(S, 'admin.pool.volume.List', 'dom0', 'default'), /stray/);
    } finally {
      await fs.rm(stray, { recursive: true });
    }
  });

  test("linux-kernel: the pool's own listing, kernels no domain uses included", async () => {
    assert.equal(await ok(S, 'admin.pool.volume.List', 'dom0', 'linux-kernel'), '6.1.0\n6.6.48\n');
  });

  test('a domain made or removed shows at once', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'aaa', label: 'red', template: 'tpl' });
    assert.match(await ok(S, 'admin.pool.volume.List', 'dom0', 'default'), /^appvms\/aaa\/private\nappvms\/aaa\/root\nappvms\/aaa\/volatile\nappvms\/work\/private\n/);
    await app.removeDomain('aaa');
    await app.removeDomain('sa');
    assert.doesNotMatch(await ok(S, 'admin.pool.volume.List', 'dom0', 'default'), /aaa/);
    assert.equal(await ok(S, 'admin.pool.volume.List', 'dom0', 'plain'), '');
  });
});
