// An AppVM start+stop's cheaper steps (docs/benchmarks.md, Issue 16 item 2,
// fifth pass) keep what they stand for: the root clone and the volatile
// image are locked through their header objects (no open) and another host
// is refused; the stop's move to the trash runs after it returns, yet no
// later call sees the image; the source generation written on a clone's
// header object is read as image metadata, and is_outdated follows the
// template's commits; a stop racing another host's daemon on the same
// image neither fails nor moves an image that host made since.
// Imported by rbd.test.ts.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import { CEPH_POOL, cleanupAfter, describeRbd, domainOn, imagesWith, makeRbdPool, metaOf, rbdSync, uniquePrefix, writeVol } from './helpers.js';

/** The cookies of the advisory locks on `image`, as `rbd lock ls` lists them. */
function lockIds(image: string): string[] {
  const out = JSON.parse(rbdSync(['lock', 'ls', `${CEPH_POOL}/${image}`, '--format', 'json']) || '[]') as unknown;
  // Older rbd: an object keyed by lock id; newer: an array of {id, locker, address}.
  return Array.isArray(out) ? (out as { id: string }[]).map((l) => l.id).sort() : Object.keys(out as object).sort();
}

describeRbd('rbd: start and stop of an AppVM, the cheaper steps', () => {
  const prefix = uniquePrefix('startstop');
  cleanupAfter(prefix);

  it("locks the root clone and the volatile image for this host (another host is refused); the stop frees them before any later call looks", async () => {
    const poolA = makeRbdPool({ prefix, hostId: 'hostA' });
    const poolB = makeRbdPool({ prefix, hostId: 'hostB' });
    await poolA.setup();
    await poolB.setup();
    try {
      const tplA = domainOn(poolA, 'tpl', 'TemplateVM');
      const vmA = domainOn(poolA, 'work', 'AppVM', tplA);
      const vmB = domainOn(poolB, 'work', 'AppVM', domainOn(poolB, 'tpl', 'TemplateVM'));
      await tplA.create();
      await vmA.create();
      const root = vmA.get('root') as RbdVolume;
      const volatile = vmA.get('volatile') as RbdVolume;
      for (let cycle = 0; cycle < 2; cycle++) {
        await vmA.start();
        assert.deepEqual(lockIds(root.runImage), ['qubes:hostA'], `cycle ${cycle}: root clone locked (rbd lock ls)`);
        assert.deepEqual(lockIds(volatile.runImage), ['qubes:hostA'], `cycle ${cycle}: volatile image locked`);
        await assert.rejects(vmB.get('root').start(), /in use by host hostA \(lock qubes:hostA/);
        await assert.rejects(vmB.get('volatile').start(), /in use by host hostA \(lock qubes:hostA/);
        await vmA.stop();
        // The trash moves may still run: every call naming the images waits for them (a look right away finds none).
        for (const v of [root, volatile]) assert.equal(await poolA.rbd.withImageIfAny(v.runImage, async () => 'open', true), null, `cycle ${cycle}: ${v.runImage} gone`);
        assert.equal(await root.isDirty(), false, `cycle ${cycle}: root not dirty once stopped`);
        assert.equal(await volatile.isDirty(), false, `cycle ${cycle}: volatile not dirty once stopped`);
        assert.deepEqual(imagesWith(prefix).filter((n) => n.includes('~')), [], `cycle ${cycle}: no running image left in the names`);
      }
      // Back to back: host B starts right after A's stop returned.
      await vmA.start();
      await vmA.stop();
      await vmB.start();
      assert.deepEqual(lockIds((vmB.get('root') as RbdVolume).runImage), ['qubes:hostB']);
      await vmB.stop();
      await vmA.remove();
      await tplA.remove();
      assert.deepEqual(imagesWith(prefix), []);
    } finally {
      await poolA.close();
      await poolB.close();
    }
  });

  it("a root cloned from a kept base records the template's generation (rbd image-meta), and is_outdated follows the template's commits", async () => {
    const pool = makeRbdPool({ prefix: `${prefix}o-`, hostId: 'hostA' });
    await pool.setup();
    try {
      const tpl = domainOn(pool, 'tpl', 'TemplateVM');
      const vm = domainOn(pool, 'work', 'AppVM', tpl);
      await tpl.create();
      await vm.create();
      const root = vm.get('root') as RbdVolume;
      // The first start makes the base (its clone records the generation), the second reuses it.
      await vm.start();
      await vm.stop();
      await vm.start();
      assert.equal(metaOf(root.runImage, 'qubes.source-generation'), '0', 'the generation, as rbd image-meta reads it');
      assert.equal(await root.isOutdated(), false);
      await tpl.start();
      await writeVol(tpl.get('root'), 0, 'new template data');
      assert.equal(await root.isOutdated(), false, 'the template runs: nothing committed yet');
      await tpl.stop();
      assert.equal(await root.isOutdated(), true, 'the template committed after the clone');
      await vm.stop();
      await vm.start();
      assert.equal(metaOf(root.runImage, 'qubes.source-generation'), '1');
      assert.equal(await root.isOutdated(), false, 'a new start clones the new data');
      await vm.stop();
      await vm.remove();
      await tpl.remove();
    } finally {
      await pool.close();
    }
  });

  it('a stop whose running image another host removed meanwhile takes it as gone, and never moves the image another host made since under that name', async () => {
    // Two daemons on one pool, the same domain: host B's stop trashes the image host A is about to trash
    // (the run of 2026-12-03 failed here with ESTALE), or B starts again under the same name before A's move.
    const poolA = makeRbdPool({ prefix: `${prefix}r-`, hostId: 'hostA' });
    const poolB = makeRbdPool({ prefix: `${prefix}r-`, hostId: 'hostB' });
    await poolA.setup();
    await poolB.setup();
    try {
      const img = `${prefix}r-work~snap`;
      await poolB.rbd.create(img, 4 << 20);
      const meant = (await poolA.rbd.header(img)).id; // what A looked at before its move
      await poolB.rbd.discard(img);
      await poolA.rbd.discard(img, meant); // A's move comes second: the image is gone, as A wanted
      assert.deepEqual(imagesWith(`${prefix}r-`), []);
      await poolB.rbd.create(img, 4 << 20); // B starts anew: the same name, another image
      const fresh = (await poolB.rbd.header(img)).id;
      assert.notEqual(fresh, meant);
      await poolA.rbd.discard(img, meant);
      assert.equal((await poolB.rbd.header(img)).id, fresh, "B's new image is still there");
      await poolA.rbd.discard(img, meant, true); // the same from a stop's background move
      await poolA.rbd.idObjectExists(img); // waits for that move
      assert.equal((await poolB.rbd.header(img)).id, fresh, "B's new image is still there after a background move");
      await poolB.rbd.discard(img);
      assert.deepEqual(imagesWith(`${prefix}r-`), []);
    } finally {
      await poolA.close();
      await poolB.close();
    }
  });
});
