// The cluster fails mid-operation: the only OSD is killed (by pid, through
// scripts/ceph-cluster.sh). Operations fail with an error saying the cluster
// did not answer, within the pool's timeout; once the OSD is back nothing
// is lost. Imported by rbd.test.ts (after the other suites: it stops the OSD).
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { StoragePoolException } from '../../../src/storage/errors.js';
import { cleanupAfter, cluster, describeRbd, domainOn, makeRbdPool, sha, text, uniquePrefix, volumeBytes, writeVol } from './helpers.js';

describeRbd('rbd when the OSD dies mid-operation', () => {
  const prefix = uniquePrefix('fail');
  cleanupAfter(prefix);
  let osdDown = false;
  after(() => {
    if (osdDown) cluster('start-osd'); // never leave the cluster broken
  });

  it('fails start and export with a clear error within the timeout, and loses nothing', async () => {
    const timeout = 4;
    const pool = makeRbdPool({ prefix, timeout, revisionsToKeep: 2 });
    await pool.setup();
    const vm = domainOn(pool, 'sturdy', 'StandaloneVM');
    await vm.create();
    await vm.start();
    await writeVol(vm.get('private'), 0, 'committed before');
    await vm.stop();
    const priv = vm.get('private');
    const hash = sha(await volumeBytes(priv));
    const revs = await priv.revisions();

    cluster('kill-osd');
    osdDown = true;
    const limit = (timeout * 2 + 10) * 1000 + 5000;
    let t0 = Date.now();
    await assert.rejects(vm.start(), (e: unknown) => {
      assert.ok(e instanceof StoragePoolException, String(e));
      assert.match(String((e as Error).message), /did not answer within \d+ s/);
      assert.match(String((e as Error).message), /volume appvms\/sturdy\/(private|root|volatile) of pool rbdpool/);
      return true;
    });
    assert.ok(Date.now() - t0 < limit * 2, `start failed after ${Date.now() - t0} ms`);
    t0 = Date.now();
    await assert.rejects(priv.export(), /did not answer/);
    assert.ok(Date.now() - t0 < limit, `export failed after ${Date.now() - t0} ms`);

    cluster('start-osd');
    osdDown = false;
    // A start cut off midway may have taken the lock: it is this host's, so the next start goes on.
    await vm.start();
    assert.equal(await text(priv), 'committed before');
    await writeVol(priv, 0, 'written after'.padEnd(16, '\0'));
    await vm.stop();
    assert.equal(await text(priv), 'written after');
    const after2 = await priv.revisions();
    assert.ok(after2.length >= 1 && after2.length <= 2, JSON.stringify(after2));
    assert.ok(revs.length >= 1);
    const p = await priv.export();
    await priv.exportEnd(p);
    assert.notEqual(sha(await volumeBytes(priv)), hash);
    await priv.revert();
    assert.equal(sha(await volumeBytes(priv)), hash, 'the data from before the failure is the newest revision');
    await vm.remove();
  });
});
