// The two things a stop and an import no longer wait for, on the real
// cluster: the prune of the oldest revisions after a stop (a background job
// under the volume's lock), and the admin import's writer (the payload
// straight into the image, no temporary file). Imported by rbd.test.ts.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../../../src/admin/client.js';
import type { RbdPool } from '../../../src/drivers/rbd/pool.js';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import type { Volume } from '../../../src/storage/volume.js';
import { run, tempBase, toolEnv } from '../../cli/helpers.js';
import { ensureDead, startQubesd, type DaemonProc } from '../../daemon/helpers.js';
import {
  CEPH_CONF, CEPH_POOL, cleanupAfter, describeRbd, domainOn, imagesWith, makeRbdPool, rbdTempFiles, readSpec, restlessSnaps, snapsOf,
  tempDir, uniquePrefix, writeSpec, writeVol,
} from './helpers.js';

const MiB = 1024 * 1024;
const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'prune-import-child.js');
const SIZES = { root: 8 * MiB, private: 8 * MiB };

/** The revision snapshots of an image, as `rbd snap ls` lists them: their ids, oldest first. */
function revIds(image: string): number[] {
  return snapsOf(image)
    .map((s) => /^qs-rev-([0-9]+)-/.exec(s))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

/** The first `n` bytes of revision `id` of `image` (rbd export of its snapshot). */
async function revText(image: string, id: number, n = 8): Promise<string> {
  const snap = snapsOf(image).find((s) => s.startsWith(`qs-rev-${id}-`));
  assert.ok(snap, `revision ${id} of ${image}`);
  return (await readSpec(`${CEPH_POOL}/${image}@${snap}`)).subarray(0, n).toString('latin1').replace(/\0+$/, '');
}

/** One run of the domain writing `word` at the start of `v`. */
async function session(v: Volume, word: string): Promise<void> {
  await v.start();
  await writeVol(v, 0, word.padEnd(8, '\0'));
  await v.stop();
}

function child(prefix: string, vm: string, keep: number, action: string): { signal: NodeJS.Signals | null; stderr: string } {
  const r = spawnSync(process.execPath, [CHILD, prefix, vm, String(keep), action], { encoding: 'utf8', timeout: 180_000 });
  return { signal: r.signal, stderr: r.stderr };
}

describeRbd('rbd: the prune of old revisions after a stop runs in the background', () => {
  const prefix = uniquePrefix('prune');
  cleanupAfter(prefix);
  const pools: RbdPool[] = [];
  after(async () => {
    for (const p of pools) await p.close();
  });
  const open = async (vm: string, keep: number): Promise<{ pool: RbdPool; v: RbdVolume }> => {
    const pool = makeRbdPool({ prefix, revisionsToKeep: keep });
    pools.push(pool);
    await pool.setup();
    return { pool, v: domainOn(pool, vm, 'StandaloneVM', null, SIZES).get('private') as RbdVolume };
  };

  it('removes exactly the revisions past revisions_to_keep, the oldest, once settled', async () => {
    const { pool, v } = await open('p1', 2);
    await v.create();
    for (const w of ['one', 'two', 'three', 'four']) await session(v, w);
    await pool.settled();
    // Revision k holds what was committed before the k-th start: the (k-1)-th session's word.
    assert.deepEqual(revIds(v.image), [3, 4], snapsOf(v.image).join(' '));
    assert.equal(await revText(v.image, 3), 'two');
    assert.equal(await revText(v.image, 4), 'three');
    assert.deepEqual((await v.revisions()).map((r) => r.id), ['3', '4']);
    assert.deepEqual(restlessSnaps(v.image), []);
    // The next operation's own prune (recover) removes nothing that is within the limit.
    await v.start();
    assert.deepEqual(revIds(v.image), [3, 4], `after the next start: ${snapsOf(v.image).join(' ')}`);
    await v.stop();
    await pool.settled();
    assert.deepEqual(revIds(v.image), [4, 5]);
    await v.remove();
  });

  it('the queued prune takes the volume lock and reads the list and the limit then, not at the stop', async () => {
    const { pool, v } = await open('p2', 1);
    await v.create();
    await session(v, 'one');
    await v.start();
    await writeVol(v, 0, 'two\0\0\0\0\0');
    // The stop takes the volume's lock at once; the lock taken here is queued behind it and ahead of
    // the prune job the stop queues: the limit is raised after the stop, before the job runs.
    const stop = v.stop();
    const held = pool.locks.run(v.vid, async () => v.setRevisionsToKeep(2));
    await Promise.all([stop, held]);
    await pool.settled();
    assert.deepEqual(revIds(v.image), [1, 2], `the limit raised before the job ran keeps both: ${snapsOf(v.image).join(' ')}`);
    await v.remove();
  });

  it('a crash between a stop and its prune leaves one revision too many, which the next operation removes', async () => {
    const { v } = await open('p3', 1);
    await v.create();
    await session(v, 'one'); // revision 1
    const r = child(prefix, 'p3', 1, 'stop-then-die'); // revision 2, its prune never run
    assert.equal(r.signal, 'SIGKILL', r.stderr);
    assert.deepEqual(revIds(v.image), [1, 2], 'the crash came before the prune');
    const { pool: p2, v: again } = await open('p3', 1);
    await again.start(); // the next operation
    assert.deepEqual(revIds(again.image), [2], `pruned by the start: ${snapsOf(again.image).join(' ')}`);
    await again.stop();
    await p2.settled();
    assert.deepEqual(revIds(again.image), [3]);
    assert.deepEqual(restlessSnaps(again.image), []);
    await again.remove();
  });

  it('a revert racing the prune keeps the revision it reverts to and the one it makes', async () => {
    const { pool, v } = await open('p4', 1);
    await v.create();
    await session(v, 'one'); // revision 1: empty
    await session(v, 'two'); // revision 2: one (1 pruned)
    await v.start();
    await writeVol(v, 0, 'three\0\0\0');
    await v.stop(); // revision 3: two; the prune of 2 queued
    // At once: revert to revision 3 (the data 'two'); the current data 'three' becomes revision 4.
    await v.revert('3');
    await pool.settled();
    assert.equal((await readSpec(`${CEPH_POOL}/${v.image}`)).subarray(0, 3).toString(), 'two', 'reverted to revision 3');
    assert.deepEqual(revIds(v.image), [4], snapsOf(v.image).join(' '));
    assert.equal(await revText(v.image, 4), 'three', 'the data before the revert is kept');
    await v.revert('4');
    assert.equal((await readSpec(`${CEPH_POOL}/${v.image}`)).subarray(0, 5).toString(), 'three', 'and the revert undone');
    await pool.settled();
    assert.deepEqual(restlessSnaps(v.image), []);
    await v.remove();
  });
});

describeRbd('rbd: imports through the volume writer (no temporary file)', () => {
  const prefix = uniquePrefix('wimp');
  cleanupAfter(prefix);
  const pools: RbdPool[] = [];
  after(async () => {
    for (const p of pools) await p.close();
  });
  const open = async (vm: string, tmpDir = ''): Promise<{ pool: RbdPool; v: RbdVolume }> => {
    const pool = makeRbdPool({ prefix, revisionsToKeep: 1, tmpDir });
    pools.push(pool);
    await pool.setup();
    return { pool, v: domainOn(pool, vm, 'StandaloneVM', null, SIZES).get('private') as RbdVolume };
  };
  /** New data with holes: 'A' in the first MiB, zeros, 'B' in the 6th MiB, zeros to the end. */
  const payload = (size: number): Buffer => {
    const b = Buffer.alloc(size);
    b.fill(0x41, 0, MiB);
    b.fill(0x42, 5 * MiB, 6 * MiB);
    return b;
  };
  const oldData = Buffer.alloc(8 * MiB, 0x6f); // 'o' everywhere
  const at = (b: Buffer, mib: number) => String.fromCharCode(b[mib * MiB + 7]!);

  it('writes the data into the image, zeroing what the payload leaves as holes in an image that had data, and keeps the old as a revision', async () => {
    const { pool, v } = await open('w1');
    await v.create();
    await writeSpec(`${CEPH_POOL}/${v.image}`, 0, oldData);
    const w = await v.importWriter(8 * MiB);
    const data = payload(8 * MiB);
    // As the sparse writer hands it over: only the runs of data, in order.
    await w.writev([data.subarray(0, MiB)], 0);
    await w.writev([data.subarray(5 * MiB, 5.5 * MiB), data.subarray(5.5 * MiB, 6 * MiB)], 5 * MiB);
    await v.importDataEnd(true);
    await pool.settled();
    const now = await readSpec(`${CEPH_POOL}/${v.image}`);
    assert.equal(now.length, 8 * MiB);
    assert.ok(now.equals(data), `the image holds exactly the payload (MiB 0, 2, 5, 7: ${[0, 2, 5, 7].map((m) => at(now, m)).join(',')})`);
    assert.deepEqual(revIds(v.image).length, 1);
    assert.ok((await readSpec(`${CEPH_POOL}/${v.image}@${snapsOf(v.image).find((s) => s.startsWith('qs-rev-'))}`)).equals(oldData), 'the old data is the revision');
    assert.deepEqual(restlessSnaps(v.image), []);
    await v.remove();
  });

  it('a failure mid-way (importDataEnd(false)) leaves the old data, size and revisions, and no debris; exports meanwhile read the old data', async () => {
    const tmp = await tempDir('wimp');
    const { pool, v } = await open('w2', tmp);
    await v.create();
    await writeSpec(`${CEPH_POOL}/${v.image}`, 0, oldData);
    const revsBefore = revIds(v.image);
    const w = await v.importWriter(6 * MiB);
    await w.writev([Buffer.alloc(2 * MiB, 0x6e)], 0);
    // While the import runs, the committed data is the old one.
    const exp = await v.export();
    try {
      assert.ok((await fs.readFile(exp)).equals(oldData), 'an export during the import reads the old data');
    } finally {
      await v.exportEnd(exp);
    }
    await v.importDataEnd(false);
    await pool.settled();
    assert.ok((await readSpec(`${CEPH_POOL}/${v.image}`)).equals(oldData), 'old data and size');
    assert.deepEqual(revIds(v.image), revsBefore, 'no revision made');
    assert.deepEqual(snapsOf(v.image).filter((s) => s.startsWith('qs-import')), []);
    assert.deepEqual(restlessSnaps(v.image), []);
    assert.deepEqual(await rbdTempFiles(tmp), [], 'no file in tmp_dir');
    assert.deepEqual(imagesWith(prefix).filter((i) => i.includes('~')), []);
    await v.remove();
  });

  it('a crash mid-way leaves the old data: the next operation rolls the image back, no debris', async () => {
    const { v } = await open('w3');
    await v.create();
    await writeSpec(`${CEPH_POOL}/${v.image}`, 0, oldData);
    const r = child(prefix, 'w3', 1, 'import-then-die');
    assert.equal(r.signal, 'SIGKILL', r.stderr);
    assert.ok(snapsOf(v.image).includes('qs-import-old'), 'the crash came mid-import');
    const { pool: p2, v: again } = await open('w3');
    await again.start(); // the next operation
    await again.stop();
    await p2.settled();
    const now = await readSpec(`${CEPH_POOL}/${again.image}`);
    assert.ok(now.equals(oldData), `old data (${at(now, 0)} at 0)`);
    assert.deepEqual(restlessSnaps(again.image), []);
    await again.remove();
  });

  it('through the daemon (admin.vm.volume.ImportWithSize): a full payload lands exactly; a short one is refused and changes nothing', async () => {
    const base = await tempBase('qs-rbd-wimp-');
    let d: DaemonProc | undefined;
    try {
      const sock = path.join(base, 's');
      d = await startQubesd(base, sock);
      const env = toolEnv(base, sock);
      const tmp = path.join(base, 'tmp');
      await fs.mkdir(tmp);
      const ok = (x: { code: number | null; stderr: string }, what: string) => assert.equal(x.code, 0, `${what}: ${x.stderr}`);
      ok(await run('qvm-pool', ['add', 'ceph', 'rbd', '-o', `ceph_pool=${CEPH_POOL}`, '-o', `ceph_conf=${CEPH_CONF}`, '-o', `image_prefix=${prefix}d-`, '-o', `tmp_dir=${tmp}`], env), 'qvm-pool add');
      ok(await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'ceph', 'imp'], env), 'qvm-create');
      const image = `${prefix}d-appvms=imp=private`;
      const client = new AdminClient({ socketPath: sock, timeoutMs: 120_000 });
      const data = payload(8 * MiB);
      const body = (b: Buffer, size: number) => Readable.from([Buffer.from(`${size}\n`), b.subarray(0, 3 * MiB), b.subarray(3 * MiB)]);
      await client.callStream('admin.vm.volume.ImportWithSize', 'imp', 'private', body(data, 8 * MiB));
      assert.ok((await readSpec(`${CEPH_POOL}/${image}`)).equals(data), 'the image holds exactly the payload');
      const revs = revIds(image);
      // Short: 8 MiB announced, 5 MiB sent.
      const short = Readable.from([Buffer.from(`${8 * MiB}\n`), Buffer.alloc(5 * MiB, 0x73)]);
      await assert.rejects(client.callStream('admin.vm.volume.ImportWithSize', 'imp', 'private', short), /got 5242880 bytes of data, expected 8388608/);
      assert.ok((await readSpec(`${CEPH_POOL}/${image}`)).equals(data), 'the data of the first import is kept');
      const info = await run('qvm-volume', ['info', 'imp:private', 'size'], env);
      assert.equal(info.stdout.trim(), String(8 * MiB));
      assert.deepEqual(revIds(image), revs, 'no revision made');
      assert.deepEqual(restlessSnaps(image), []);
      assert.deepEqual(await rbdTempFiles(tmp), [], 'no file in tmp_dir');
    } finally {
      await ensureDead(d);
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});
