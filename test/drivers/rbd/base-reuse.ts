// The base snapshot of a template's image that AppVM roots are cloned from:
// kept after the AppVM stops and reused by the next start while it still
// holds the template's committed data; never reused once the data changed,
// on this host or another, even when the change's count was cut off.
// Imported by rbd.test.ts.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import {
  CEPH_POOL, cleanupAfter, describeRbd, domainOn, makeRbdPool, rbdSync, restlessSnaps, snapsOf, text, uniquePrefix, writeSpec, writeVol,
} from './helpers.js';

/** The snapshot a clone was made from (rbd info). */
function parentSnap(image: string): string {
  const info = JSON.parse(rbdSync(['info', `${CEPH_POOL}/${image}`, '--format', 'json'])) as { parent?: { snapshot: string } };
  assert.ok(info.parent, `${image} is a clone`);
  return info.parent.snapshot;
}

describeRbd('rbd: base snapshots kept and reused', () => {
  const prefix = uniquePrefix('base');
  cleanupAfter(prefix);

  it('clones the next AppVM start from the base kept at the last stop, and takes a new one once the template changed', async () => {
    const poolA = makeRbdPool({ prefix, hostId: 'hostA' });
    // Host B keeps no revisions: its template stop leaves no snapshot behind, only the generation count.
    const poolB = makeRbdPool({ prefix, hostId: 'hostB', revisionsToKeep: 0 });
    await poolA.setup();
    await poolB.setup();
    const tplA = domainOn(poolA, 'tpl', 'TemplateVM');
    const vm = domainOn(poolA, 'work', 'AppVM', tplA);
    const tplB = domainOn(poolB, 'tpl', 'TemplateVM');
    await tplA.create();
    await vm.create();
    const tplImage = (tplA.get('root') as RbdVolume).image;
    const runImage = (vm.get('root') as RbdVolume).runImage;
    const bases = (): string[] => snapsOf(tplImage).filter((s) => s.startsWith('qs-base-'));

    await tplA.start();
    await writeVol(tplA.get('root'), 0, 'tpl one');
    await tplA.stop(); // generation 1

    await vm.start();
    assert.equal(await text(vm.get('root'), 7), 'tpl one');
    const first = parentSnap(runImage);
    assert.match(first, /^qs-base-hostA-g1-[0-9a-f]{12}$/);
    await vm.stop();
    assert.deepEqual(bases(), [first], 'the base is kept after the stop');
    assert.deepEqual(restlessSnaps(tplImage), [], 'and is at rest (not debris)');

    const before = snapsOf(tplImage);
    await vm.start();
    assert.equal(parentSnap(runImage), first, 'the next start clones the kept base');
    assert.deepEqual(snapsOf(tplImage), before, 'no snapshot made or removed');
    assert.equal(await text(vm.get('root'), 7), 'tpl one');
    await vm.stop();

    // Another host commits new template data: it leaves A's base alone, and counts the commit.
    await tplB.start();
    await writeVol(tplB.get('root'), 0, 'tpl two');
    await tplB.stop();
    assert.deepEqual(bases(), [first], "host B does not touch host A's base");
    assert.deepEqual(restlessSnaps(tplImage), [first], 'a base of an older generation is debris');
    await vm.start();
    assert.equal(await text(vm.get('root'), 7), 'tpl two', 'cloned from the new data, not the stale base');
    const second = parentSnap(runImage);
    assert.match(second, /^qs-base-hostA-g2-[0-9a-f]{12}$/);
    await vm.stop();
    assert.deepEqual(bases(), [second], 'the stale base was removed');

    // A change whose count was cut off (a host died between changing the data and counting it):
    // the snapshot it took before changing the data is enough to tell the base is stale.
    rbdSync(['snap', 'create', `${CEPH_POOL}/${tplImage}@other-change`]);
    await writeSpec(`${CEPH_POOL}/${tplImage}`, 0, 'tpl three');
    await vm.start();
    assert.equal(await text(vm.get('root'), 9), 'tpl three', 'cloned from the changed data');
    const third = parentSnap(runImage);
    assert.notEqual(third, second);
    await vm.stop();
    rbdSync(['snap', 'rm', `${CEPH_POOL}/${tplImage}@other-change`]);

    // A grown template (a resize keeps the data, and the base): the clone gets the new size, from a new base.
    const grown = 12 * 1024 * 1024;
    await tplA.get('root').resize(grown);
    await vm.start();
    assert.notEqual(parentSnap(runImage), third, 'a base of the old size is not reused');
    const info = JSON.parse(rbdSync(['info', `${CEPH_POOL}/${runImage}`, '--format', 'json'])) as { size: number };
    assert.equal(info.size, grown, 'the clone has the grown size');
    assert.equal(await text(vm.get('root'), 9), 'tpl three');
    await vm.stop();

    // This host's own operations on the template drop its bases.
    await tplA.start();
    assert.deepEqual(bases(), [], "the template's start removes this host's bases");
    await tplA.stop();
    await vm.remove();
    await tplA.remove();
    await poolA.close();
    await poolB.close();
  });
});
