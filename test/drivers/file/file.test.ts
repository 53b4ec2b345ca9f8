// What is specific to the file driver and its R3.2 name xen: the Qubes file
// layout, copies by reflink or sparse copy (no device-mapper here), the
// options they take. The volume contract (at most one revision kept,
// revert, ...) is checked by the conformance suite (test/conformance/file.test.ts).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { MiB, allocated, listFiles, pattern, readAt, sha256, writeAt } from '../../helpers/data.js';
import { fileDriver, xenDriver } from '../../../src/drivers/file/index.js';
import type { FileReflinkPool } from '../../../src/drivers/file-reflink/pool.js';
import { parseOptions } from '../../../src/storage/options.js';
import { poolOptionSpecs } from '../../../src/storage/driver.js';
import { DomainStorage } from '../../../src/storage/domain-storage.js';
import { defaultVolumeConfigs, dirPrefixOf, type DomainClass } from '../../../src/storage/volume-sets.js';

function dom(pool: FileReflinkPool, name: string, klass: DomainClass, template: DomainStorage | null = null): DomainStorage {
  const p = pool.name;
  return DomainStorage.init(
    {
      domain: { name, dirPrefix: dirPrefixOf(klass) },
      volumes: defaultVolumeConfigs(klass, { root: p, private: p, volatile: p }, { root: 8 * MiB, private: 4 * MiB }),
      template,
    },
    () => pool,
  );
}

for (const driver of [fileDriver, xenDriver]) {
  describeEachFs(`${driver.name} driver`, (tfs, ctx) => {
    it('takes no setup_check option, and says revisions_to_keep is at most 1', () => {
      assert.throws(() => parseOptions(poolOptionSpecs(driver), { dir_path: '/x', revisions_to_keep: '2' }, 'pool p'), /at most 1/);
      assert.throws(() => parseOptions(driver.options, { dir_path: '/x', setup_check: 'False' }, 'pool p'), /unknown option 'setup_check'/);
    });

    it('keeps the Qubes file layout through a template/AppVM lifecycle', async () => {
      const dir = await ctx.tempDir(driver.name);
      const pool = driver.createPool('foo', parseOptions(driver.options, { dir_path: dir }, 'pool foo')) as FileReflinkPool;
      await pool.setup();
      const tpl = dom(pool, 'fedora', 'TemplateVM');
      const app = dom(pool, 'work', 'AppVM', tpl);
      await tpl.create();
      await app.create();
      const classDirs = (await fs.readdir(dir)).sort();
      assert.deepEqual(classDirs, driver.name === 'xen' ? ['appvms', 'servicevms', 'vm-templates'] : ['appvms', 'vm-templates']);
      assert.deepEqual(await listFiles(dir), ['appvms/work/private.img', 'vm-templates/fedora/private.img', 'vm-templates/fedora/root.img']);
      await tpl.start();
      const running = await listFiles(dir);
      assert.ok(running.includes('vm-templates/fedora/root-cow.img'), running.join(' '));
      assert.ok(running.includes('vm-templates/fedora/volatile.img'), running.join(' '));
      await writeAt(await tpl.get('root').path(), 0, pattern(MiB, 1));
      await tpl.stop();
      await app.start();
      assert.deepEqual(await readAt(await app.get('root').path(), 0, MiB), pattern(MiB, 1));
      await writeAt(await app.get('private').path(), 0, 'one');
      await app.stop();
      await app.remove();
      await tpl.remove();
      assert.deepEqual(await listFiles(dir), []);
    });

    it(`copies ${tfs.reflink ? 'by reflink' : 'sparsely'} without needing setup_check`, async () => {
      const dir = await ctx.tempDir(`${driver.name}-sparse`);
      const pool = driver.createPool('big', parseOptions(driver.options, { dir_path: dir }, 'pool big')) as FileReflinkPool;
      await pool.setup();
      const vm = dom(pool, 'vm', 'StandaloneVM');
      await vm.create();
      const priv = vm.get('private');
      await priv.resize(512 * MiB);
      const image = path.join(dir, 'appvms/vm/private.img');
      await writeAt(image, 100 * MiB, pattern(2 * MiB, 5));
      await vm.start();
      const cow = path.join(dir, 'appvms/vm/private-cow.img');
      assert.equal(await sha256(cow), await sha256(image));
      assert.ok((await allocated(cow)) <= 3 * MiB, `the copy allocates ${await allocated(cow)} bytes`);
      await vm.stop();
    });
  });
}

describeEachFs('R3.2 storage.conf example', (tfs, ctx) => {
  it('[foo] driver=xen dir_path=/opt/qubes-vm makes images at the R3.2 paths', async () => {
    const root = await ctx.tempDir('r32');
    const dirPath = path.join(root, 'opt/qubes-vm');
    const pool = xenDriver.createPool('foo', parseOptions(xenDriver.options, { dir_path: dirPath }, 'pool foo')) as FileReflinkPool;
    await pool.setup();
    const tpl = dom(pool, 'fedora-23', 'TemplateVM');
    const app = dom(pool, 'work', 'AppVM', tpl);
    await tpl.create();
    await app.create();
    await tpl.start();
    await app.start().catch(() => undefined); // an AppVM may start while its template runs
    const files = await listFiles(dirPath);
    for (const f of [
      'vm-templates/fedora-23/root.img',
      'vm-templates/fedora-23/private.img',
      'vm-templates/fedora-23/root-cow.img',
      'vm-templates/fedora-23/volatile.img',
      'appvms/work/private.img',
      'appvms/work/volatile.img',
    ])
      assert.ok(files.includes(f), `${f} missing from ${files.join(' ')}`);
    await app.stop();
    await tpl.stop();
    assert.ok(tfs.name);
  });
});
