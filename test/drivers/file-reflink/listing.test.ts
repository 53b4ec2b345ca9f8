// listVolumes remembers the images of settled domain directories (one lstat
// per directory instead of a read): every change made outside the pool's own
// operations (an image made, removed or renamed by hand, a domain directory
// renamed, replaced or swapped for a symlink) must still show at the next
// listing. The expected lists are written out by hand.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { makePool } from '../../helpers/reflink-scenario.js';
import { FILE_FLAVOR, createFilePool } from '../../../src/drivers/file/pool.js';
import { LISTING_SETTLE_MS, type FileReflinkPool } from '../../../src/drivers/file-reflink/pool.js';

/**
 * Waits until a timestamp this filesystem gives now is later than `dir`'s
 * ctime, so a change made next is seen in the directory's times (a change
 * within the timestamp granularity of the last one would not be: listVolumes
 * guards against that by not remembering recent directories, which the tests
 * switch off by moving the pool's clock on).
 */
async function pastTimesOf(dir: string, probeDir: string): Promise<void> {
  const { ctimeNs } = await fs.lstat(dir, { bigint: true });
  const probe = path.join(probeDir, 'clock-probe');
  for (;;) {
    await fs.writeFile(probe, '');
    const st = await fs.lstat(probe, { bigint: true });
    await fs.unlink(probe);
    if (st.ctimeNs > ctimeNs) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}

describeEachFs('file-reflink listing', (tfs, ctx) => {
  const flavors: Array<[string, (dir: string) => FileReflinkPool]> = [
    ['file-reflink', (dir) => makePool(dir, { setupCheck: tfs.reflink })],
    ['file', (dir) => createFilePool('filepool', { dir_path: dir, revisions_to_keep: 1, ephemeral_volatile: false }, FILE_FLAVOR)],
  ];
  for (const [driver, make] of flavors)
    it(`${driver}: remembers settled directories, and every change made outside shows at the next listing`, async () => {
      const root = await ctx.tempDir(`listing-${driver}`);
      const scratch = await ctx.tempDir(`listing-${driver}-probe`);
      const pool = make(root);
      await pool.setup();
      const img = (rel: string) => path.join(root, `${rel}.img`);
      for (const d of ['appvms/a', 'appvms/b', 'vm-templates/t']) await fs.mkdir(path.join(root, d));
      for (const v of ['appvms/a/private', 'appvms/b/private', 'appvms/b/root', 'vm-templates/t/root']) await fs.writeFile(img(v), '');
      // Every directory counts as settled from here on.
      pool.listingNow = () => Date.now() + 10 * LISTING_SETTLE_MS;

      const first = ['appvms/a/private', 'appvms/b/private', 'appvms/b/root', 'vm-templates/t/root'];
      assert.deepEqual(await pool.listVolumes(), first);
      assert.equal(pool.lastListingReads, 3, 'a first listing reads every domain directory');
      assert.deepEqual(await pool.listVolumes(), first);
      assert.equal(pool.lastListingReads, 0, 'unchanged directories are remembered, not read');

      // an image made by hand
      await pastTimesOf(path.join(root, 'appvms/a'), scratch);
      await fs.writeFile(img('appvms/a/volatile'), '');
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/private', 'appvms/a/volatile', 'appvms/b/private', 'appvms/b/root', 'vm-templates/t/root']);
      assert.equal(pool.lastListingReads, 1, 'only the changed directory is read again');

      // removed by hand
      await pastTimesOf(path.join(root, 'appvms/b'), scratch);
      await fs.unlink(img('appvms/b/root'));
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/private', 'appvms/a/volatile', 'appvms/b/private', 'vm-templates/t/root']);

      // renamed by hand (a volume's image to another name, and to a name that is no image)
      await pastTimesOf(path.join(root, 'appvms/a'), scratch);
      await fs.rename(img('appvms/a/volatile'), img('appvms/a/extra'));
      await fs.rename(img('appvms/a/private'), path.join(root, 'appvms/a/private-old'));
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/extra', 'appvms/b/private', 'vm-templates/t/root']);

      // a domain directory renamed
      await pastTimesOf(path.join(root, 'appvms/b'), scratch);
      await fs.rename(path.join(root, 'appvms/b'), path.join(root, 'appvms/c'));
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/extra', 'appvms/c/private', 'vm-templates/t/root']);

      // a domain directory replaced by another of the same name (another inode, other images)
      assert.equal(pool.lastListingReads, 1, 'the renamed directory is read under its new name');
      await pastTimesOf(path.join(root, 'vm-templates/t'), scratch);
      await fs.rm(path.join(root, 'vm-templates/t'), { recursive: true });
      await fs.mkdir(path.join(root, 'vm-templates/t'));
      await fs.writeFile(img('vm-templates/t/private'), '');
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/extra', 'appvms/c/private', 'vm-templates/t/private']);

      // a domain directory swapped for a symlink to another: not followed
      await fs.rename(path.join(root, 'appvms/c'), path.join(scratch, 'c'));
      await fs.symlink(path.join(root, 'appvms/a'), path.join(root, 'appvms/c'));
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/extra', 'vm-templates/t/private']);

      // the pool's own operations go the same way: a volume made and removed
      const v = pool.initVolume({ name: 'c2', dirPrefix: 'appvms' }, { name: 'private', rw: true, save_on_stop: true, size: 4096 });
      await v.create();
      assert.ok((await pool.listVolumes()).includes('appvms/c2/private'));
      await pastTimesOf(path.join(root, 'appvms/c2'), scratch);
      await v.remove();
      assert.deepEqual(await pool.listVolumes(), ['appvms/a/extra', 'vm-templates/t/private']);
    });

  it('reads a directory changed within the settle time again at every listing (no clock moved)', async () => {
    const root = await ctx.tempDir('listing-recent');
    const pool = makePool(root, { setupCheck: tfs.reflink });
    await pool.setup();
    await fs.mkdir(path.join(root, 'appvms/a'));
    await fs.writeFile(path.join(root, 'appvms/a/private.img'), '');
    assert.deepEqual(await pool.listVolumes(), ['appvms/a/private']);
    assert.deepEqual(await pool.listVolumes(), ['appvms/a/private']);
    assert.equal(pool.lastListingReads, 1, 'a directory changed moments ago is not remembered');
    // A change right after (possibly within one timestamp tick of the last): seen.
    await fs.writeFile(path.join(root, 'appvms/a/root.img'), '');
    assert.deepEqual(await pool.listVolumes(), ['appvms/a/private', 'appvms/a/root']);
  });
});
