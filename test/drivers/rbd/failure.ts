// The cluster fails mid-operation: the only OSD is killed (by pid, through
// scripts/ceph-cluster.sh). Operations fail with an error saying the cluster
// did not answer, within the pool's timeout; once the OSD is back nothing
// is lost. Imported by rbd.test.ts (after the other suites: it stops the OSD).
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { RbdError } from '../../../src/drivers/rbd/librbd.js';
import { StoragePoolException } from '../../../src/storage/errors.js';
import { cleanupAfter, cluster, describeRbd, domainOn, makeRbdPool, sha, text, uniquePrefix, volumeBytes, writeVol } from './helpers.js';

/** Rejects with "NAME never settled" if `p` is still pending long after every timeout involved (a hang). */
async function settles<T>(p: Promise<T>, name: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${name} never settled: a call waits past the pool's timeout`)), 300_000);
  });
  try {
    return await Promise.race([p, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** True when `e` or one of its causes is a librbd call that timed out (ETIMEDOUT). */
function timedOutCause(e: unknown): boolean {
  for (let c: unknown = e; c; c = (c as { cause?: unknown }).cause) if (c instanceof RbdError && c.timedOut) return true;
  return false;
}

describeRbd('rbd when the OSD dies mid-operation', () => {
  const prefix = uniquePrefix('fail');
  cleanupAfter(prefix);
  let osdDown = false;
  after(() => {
    if (osdDown) cluster('start-osd'); // never leave the cluster broken
  });

  it('fails start and export with the cluster timeout as the reason (no hang), and loses nothing', async () => {
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
    // Behaviour, not speed: each call settles (does not hang) and fails with the cluster's timeout as its
    // reason, naming the configured seconds; `settles` only bounds a hang, far above any expected duration.
    await assert.rejects(settles(vm.start(), 'start'), (e: unknown) => {
      assert.ok(e instanceof StoragePoolException, String(e));
      assert.match(String((e as Error).message), new RegExp(`did not answer within ${timeout} s`));
      assert.match(String((e as Error).message), /volume appvms\/sturdy\/(private|root|volatile) of pool rbdpool/);
      assert.ok(timedOutCause(e), `the cause is a timed-out Ceph call: ${String(e)}`);
      return true;
    });
    await assert.rejects(settles(priv.export(), 'export'), (e: unknown) => {
      assert.match(String((e as Error).message), new RegExp(`did not answer within ${timeout} s`));
      assert.ok(timedOutCause(e), `the cause is a timed-out Ceph call: ${String(e)}`);
      return true;
    });

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
