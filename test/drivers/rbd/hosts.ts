// Several hosts, one Ceph pool: two pool objects with their own host_id and
// their own domain objects (two "hosts" in this process) on the same images.
// A running volume is locked by its host; the other host is refused, naming
// the holder; after a stop it starts elsewhere with the same data and no
// copy; a dead host's lock is broken only explicitly. Imported by rbd.test.ts.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import { cleanupAfter, describeRbd, domainOn, imagesWith, makeRbdPool, rbdSync, CEPH_POOL, text, uniquePrefix, writeVol } from './helpers.js';

describeRbd('rbd: several hosts, one pool', () => {
  const prefix = uniquePrefix('hosts');
  cleanupAfter(prefix);

  it('locks a running volume to its host, moves it by metadata only, and breaks a dead host\'s lock only when told', async () => {
    const poolA = makeRbdPool({ prefix, hostId: 'hostA' });
    const poolB = makeRbdPool({ prefix, hostId: 'hostB' });
    await poolA.setup();
    await poolB.setup();
    const tplA = domainOn(poolA, 'tpl', 'TemplateVM');
    const vmA = domainOn(poolA, 'mover', 'AppVM', tplA);
    await tplA.create();
    await vmA.create();
    // Host B knows the same domains (its own state file), and creates nothing.
    const tplB = domainOn(poolB, 'tpl', 'TemplateVM');
    const vmB = domainOn(poolB, 'mover', 'AppVM', tplB);
    assert.deepEqual(await poolB.listVolumes(), await poolA.listVolumes());

    await vmA.start();
    await writeVol(vmA.get('private'), 0, 'written on A');
    await assert.rejects(vmB.start(), /in use by host hostA \(lock qubes:hostA, client\.\d+ at /);
    assert.equal(await vmB.get('private').isDirty(), true, 'B sees the volume in use');
    await assert.rejects(vmB.get('private').revert(), /dirty/);
    await assert.rejects(vmB.get('private').importData(1024), /in use/);
    assert.equal(await text(vmA.get('private')), 'written on A', "B's refused start changed nothing on A");
    assert.match((await (vmA.get('private') as RbdVolume).lockHolder())!, /host hostA/);

    await vmA.stop();
    const imagesBefore = imagesWith(prefix);
    await vmB.start();
    assert.equal(await text(vmB.get('private')), 'written on A', 'same data on B');
    assert.deepEqual(imagesWith(prefix).filter((i) => !i.includes('~')), imagesBefore.filter((i) => !i.includes('~')), 'no copy made');
    await assert.rejects(vmA.start(), /in use by host hostB/);
    await writeVol(vmB.get('private'), 0, 'written on B');
    await vmB.stop();

    // Host A dies while running the domain: its locks stay.
    await vmA.start();
    await writeVol(vmA.get('private'), 0, 'A wrote, then died');
    await assert.rejects(vmB.start(), /in use by host hostA.*break_stale_locks=hostA/);
    // Explicit: the volume's forced operation...
    const broken = await (vmB.get('private') as RbdVolume).breakLock();
    assert.equal(broken.length, 1);
    assert.match(broken[0]!, /host hostA/);
    // ...or the pool option naming the dead host, for all its volumes.
    await assert.rejects(vmB.start(), /in use by host hostA/, 'root and volatile are still locked by A');
    poolB.setOption('break_stale_locks', 'hostA');
    await vmB.start();
    assert.equal(await text(vmB.get('private'), 18), 'A wrote, then died', "nothing A's domain wrote is lost");
    await vmB.stop();
    poolB.setOption('break_stale_locks', '');
    const locks = rbdSync(['lock', 'ls', `${CEPH_POOL}/${prefix}appvms=mover=private`, '--format', 'json']).trim();
    assert.ok(locks === '[]' || locks === '' || locks === '{}', locks);
    await vmB.remove();
    await tplB.remove();
    assert.deepEqual(imagesWith(prefix), []);
  });
});
