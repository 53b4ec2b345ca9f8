// Pools on a filesystem really filled to the last block (a file written with
// data until the kernel says ENOSPC): every write path of the file-based
// drivers either works (reflinks and sparse files need next to no space) or
// is refused with what the product itself answers, a StoragePoolException
// naming the pool, the volume and "not enough space left (ENOSPC ...)";
// a refused operation changes nothing (old data, old revisions, no debris);
// once space is freed everything works again. The daemon is asked over its
// real socket (Import streamed, ImportWithSize through qvm-volume).
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AdminClient } from '../../../src/admin/client.js';
import { openRuntime } from '../../../src/daemon/runtime.js';
import { fileDriver } from '../../../src/drivers/file/index.js';
import { fileReflinkDriver } from '../../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../../src/drivers/file-reflink/pool.js';
import { StoragePoolException } from '../../../src/storage/errors.js';
import type { DomainStorage } from '../../../src/storage/domain-storage.js';
import { MiB, listFiles, pattern, sha256, writeAt } from '../../helpers/data.js';
import { domain } from '../../helpers/reflink-scenario.js';
import { ensureDead, socketDir, startQubesd, type DaemonProc } from '../../daemon/helpers.js';
import { describeEachSmallFs, fillFilesystem as fill, unfill as unlinkAll } from '../../helpers/small-fs.js';

const run = promisify(execFile);
const QVM_VOLUME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'cli', 'qvm-volume.js');

/** Every file below `dir` with its hash: what "nothing changed" compares. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of await listFiles(dir)) out[f] = await sha256(path.join(dir, f));
  return out;
}

const DEBRIS = /-(tmp|export)-[0-9a-f]+\.img$|-import\.img$|-base\.img$|^\.reflink-probe/;

/** The error the product answered for running out of space in pool `pool`. */
function assertNoSpace(e: unknown, pool: string, what: string): void {
  assert.ok(e instanceof StoragePoolException, `${what}: ${String(e)} is not a StoragePoolException`);
  assert.match(e.message, new RegExp(`\\bpool ${pool}\\b`), `${what}: the error names the pool`);
  assert.match(e.message, /: not enough space left \(ENOSPC\b/, `${what}: the error says what ran out`);
  assert.ok(!e.message.includes('\n'), `${what}: one line`);
}

describeEachSmallFs('full disk', (small) => {
  const made: string[] = [];
  const fillers: string[] = [];
  const daemons: DaemonProc[] = [];
  after(async () => {
    for (const d of daemons) await ensureDead(d);
    await unlinkAll(fillers);
    for (const d of made) await fs.rm(d, { recursive: true, force: true });
  });

  const o = { setupCheck: small.reflink, revisionsToKeep: 2, rootSize: 16 * MiB, privateSize: 16 * MiB };

  for (const driver of [fileReflinkDriver, fileDriver]) {
    it(`${driver.name}: every library write path refuses with the mapped error and changes nothing, then works again`, async (t) => {
      // The space is freed and the files removed after each test, also when it fails.
      t.after(async () => {
        await unlinkAll(fillers);
        for (const m of made.splice(0)) await fs.rm(m, { recursive: true, force: true });
      });
      const base = await fs.mkdtemp(path.join(small.root, 'full-'));
      made.push(base);
      // A source pool on another filesystem: a copy from it must write data (no reflink across filesystems).
      const elsewhere = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-full-src-'));
      made.push(elsewhere);
      const dir = path.join(base, 'pool');
      const poolName = `full_${driver.name.replace('-', '_')}`;
      const mk = (d: string, name: string, setupCheck: boolean) =>
        driver.createPool(name, { dir_path: d, setup_check: setupCheck, revisions_to_keep: 2, ephemeral_volatile: false }) as FileReflinkPool;
      const pool = mk(dir, poolName, small.reflink);
      const srcPool = mk(path.join(elsewhere, 'pool'), 'srcpool', false);
      await pool.setup();
      await srcPool.setup();

      const tpl = domain(pool, 'tpl', 'TemplateVM', o);
      const app = domain(pool, 'work', 'AppVM', o, tpl);
      const running = domain(pool, 'busy', 'AppVM', o, tpl);
      const target = domain(pool, 'target', 'StandaloneVM', o);
      const foreign = domain(srcPool, 'foreign', 'StandaloneVM', o);
      for (const d of [tpl, app, running, target, foreign]) await d.create();
      await tpl.start();
      await writeAt(await tpl.get('root').path(), 0, pattern(4 * MiB, 1));
      await tpl.stop();
      for (const seed of [2, 3]) {
        // Two commits: the private volume has data and a revision.
        await app.start();
        await writeAt(await app.get('private').path(), 0, pattern(4 * MiB, seed));
        await app.stop();
      }
      await foreign.start();
      await writeAt(await foreign.get('private').path(), 0, pattern(4 * MiB, 4));
      await foreign.stop();
      await running.start();
      await writeAt(await running.get('private').path(), 0, pattern(MiB, 5)); // committed at its stop below
      const revisionsBefore = await app.get('private').revisions();
      assert.equal(revisionsBefore.length, 2);

      await fill(base, fillers);

      const outcomes: string[] = [];
      const refused = new Set<string>();
      const attempt = async (what: string, op: () => Promise<string | void>, undo?: () => Promise<unknown>) => {
        await fill(base, fillers); // a refused operation before may have freed a few blocks
        const before = await snapshot(dir);
        try {
          const note = await op();
          outcomes.push(`${what}: ${note ?? 'worked'}`);
          if (undo) await undo();
        } catch (e) {
          assertNoSpace(e, poolName, what);
          assert.deepEqual(await snapshot(dir), before, `${what}: a refused operation changed something`);
          outcomes.push(`${what}: refused`);
          refused.add(what);
        }
      };
      const fresh: DomainStorage = domain(pool, 'fresh', 'AppVM', o, tpl);
      await attempt('create', () => fresh.create(), () => fresh.remove());
      await attempt('start (working copy, snapshot, volatile)', () => app.start(), () => app.stop());
      await attempt('stop (commit)', () => running.stop());
      await attempt('resize', () => app.get('private').resize(32 * MiB));
      await attempt('revert', () => app.get('private').revert(), () => app.get('private').revert());
      await attempt('export', async () => {
        const p = await app.get('private').export();
        await app.get('private').exportEnd(p);
      });
      await attempt('clone within the pool', () => target.get('private').importVolume(app.get('private')));
      await attempt('clone from another filesystem', () => target.get('private').importVolume(foreign.get('private')));
      // The library's import: importData gives a file the caller writes; what fails there is the caller's write.
      await attempt('import', async () => {
        const v = target.get('root');
        const p = await v.importData(8 * MiB);
        try {
          await writeAt(p, 0, pattern(8 * MiB, 6));
        } catch (e) {
          assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC', String(e));
          await v.importDataEnd(false);
          return 'the data could not be written (ENOSPC), dropped';
        }
        await v.importDataEnd(true);
        return 'worked';
      });
      t.diagnostic(`while full: ${outcomes.join('; ')}`);
      // Writing data cannot work on a full filesystem: these must have been refused.
      assert.ok(refused.has('clone from another filesystem'), outcomes.join('; '));
      if (!small.reflink) {
        assert.ok(refused.has('start (working copy, snapshot, volatile)'), `a sparse working copy needs space: ${outcomes.join('; ')}`);
        assert.ok(refused.has('clone within the pool'), `a sparse copy needs space: ${outcomes.join('; ')}`);
      }
      assert.deepEqual((await listFiles(dir)).filter((f) => DEBRIS.test(path.basename(f))), [], 'no debris while full');

      await unlinkAll(fillers);
      // Space again: the refused operations work, nothing was lost.
      if (refused.has('stop (commit)')) await running.stop();
      await app.start();
      await app.stop();
      await target.get('private').importVolume(foreign.get('private'));
      assert.equal(await sha256(await target.get('private').path()), await sha256(await foreign.get('private').path()));
      await target.get('private').importVolume(app.get('private'));
      assert.equal(await sha256(await target.get('private').path()), await sha256(await app.get('private').path()));
      await fresh.create();
      await app.get('private').resize(32 * MiB);
      assert.deepEqual((await listFiles(dir)).filter((f) => DEBRIS.test(path.basename(f))), []);
    });
  }

  it('the daemon over its real socket: Import (streamed) and qvm-volume import answer StoragePoolException, change nothing, work after', async (t) => {
    t.after(async () => {
      for (const d of daemons.splice(0)) await ensureDead(d);
      await unlinkAll(fillers);
      for (const m of made.splice(0)) await fs.rm(m, { recursive: true, force: true });
    });
    const base = await fs.mkdtemp(path.join(small.root, 'fulld-'));
    made.push(base);
    const sockDir = await socketDir();
    made.push(sockDir);
    const socketPath = path.join(sockDir, 'qubesd.sock');
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 4 * MiB, private: 4 * MiB } });
    await rt.app.addPool('file-reflink', 'fullpool', { dir_path: path.join(base, 'pool'), setup_check: small.reflink, revisions_to_keep: 2 });
    await rt.app.addPool('file', 'fullfile', { dir_path: path.join(base, 'filepool'), revisions_to_keep: 1 });
    await rt.app.createDomain({ klass: 'StandaloneVM', name: 'work', label: 'blue', pool: 'fullpool' });
    await rt.app.createDomain({ klass: 'StandaloneVM', name: 'old', label: 'blue', pool: 'fullfile' });
    await rt.close();
    const d = await startQubesd(base, socketPath);
    daemons.push(d);
    const c = new AdminClient({ socketPath, timeoutMs: 60_000 });
    const importStream = (dom: string, seed: number) => {
      const pt = new PassThrough();
      const done = c.callStream('admin.vm.volume.Import', dom, 'private', pt);
      pt.end(pattern(4 * MiB, seed));
      return done;
    };
    // Two imports each: data and a revision.
    for (const [dom, seed] of [['work', 1], ['work', 2], ['old', 1], ['old', 2]] as const) await importStream(dom, seed);
    const cases = [
      { dom: 'work', pool: 'fullpool', dir: path.join(base, 'pool', 'appvms', 'work') },
      { dom: 'old', pool: 'fullfile', dir: path.join(base, 'filepool', 'appvms', 'old') },
    ];
    const before = new Map<string, { files: Record<string, string>; snaps: string }>();
    for (const x of cases)
      before.set(x.dom, { files: await snapshot(x.dir), snaps: (await c.call('admin.vm.volume.ListSnapshots', x.dom, 'private')).toString() });
    assert.notEqual(before.get('work')!.snaps, '', 'a revision to keep');

    const source = path.join(sockDir, 'data.img'); // on another filesystem
    await fs.writeFile(source, pattern(4 * MiB, 9));
    // Full but for a few blocks (a file can be made, the data cannot be written), then to the last block.
    for (const slack of [256 * 1024, 0]) {
      for (const x of cases) {
        await fill(base, fillers, slack);
        const e = await importStream(x.dom, 3).then(
          () => null,
          (err: unknown) => err,
        );
        t.diagnostic(`slack ${slack}: Import into ${x.dom} answered: ${String(e)}`);
        assertNoSpace(e, x.pool, `Import into ${x.dom}`);
        assert.match((e as Error).message, new RegExp(`^volume appvms/${x.dom}/private of pool ${x.pool}: import failed: not enough space left \\(ENOSPC at `));
        // qvm-volume import prints it as one line: streamed (ImportWithSize, the daemon's own error) and
        // local (the import service writes the file and ends the import as failed: Qubes' "Data import failed: ...")
        for (const [how, args, expect] of [
          ['streamed', ['--stream'], `^qvm-volume: error: volume appvms/${x.dom}/private of pool ${x.pool}: import failed: not enough space left \\(ENOSPC[^\\n]*\\)\\n$`],
          // (ImportBegin itself may find no room: then the daemon's own error.)
          ['local', [], `^qvm-volume: error: (Data import failed|volume appvms/${x.dom}/private of pool ${x.pool}: import failed): not enough space left \\(ENOSPC at [^\\n]*\\)\\n$`],
        ] as const) {
          const cli = await run(process.execPath, [QVM_VOLUME, 'import', ...args, `${x.dom}:private`, source], {
            env: { ...process.env, QUBESD_SOCKET: socketPath, QUBES_STORAGE_FAILPOINTS: '' },
          }).then(
            () => null,
            (err: { code: number; stdout: string; stderr: string }) => err,
          );
          assert.ok(cli, `qvm-volume import (${how}) must fail on a full disk`);
          assert.notEqual(cli.code, 0);
          assert.match(cli.stderr, new RegExp(expect), how);
        }
        // Nothing changed: the committed data, every revision, no debris.
        const b = before.get(x.dom)!;
        assert.deepEqual(await snapshot(x.dir), b.files, `${x.dom}: the old data and revisions`);
        assert.equal((await c.call('admin.vm.volume.ListSnapshots', x.dom, 'private')).toString(), b.snaps);
      }
    }
    // CloneFrom/CloneTo across the two pools: a data copy on ext4 (refused), maybe a reflink on XFS.
    {
      const before = await snapshot(cases[0]!.dir);
      const token = (await c.call('admin.vm.volume.CloneFrom', 'old', 'private')).toString();
      const e = await c.call('admin.vm.volume.CloneTo', 'work', 'private', Buffer.from(token)).then(
        () => null,
        (err: Error) => err,
      );
      t.diagnostic(`CloneTo answered: ${e === null ? 'ok' : String(e)}`);
      if (e !== null || !small.reflink) {
        assertNoSpace(e, 'fullpool', 'CloneTo');
        assert.deepEqual(await snapshot(cases[0]!.dir), before, 'CloneTo: refused, nothing changed');
      }
    }
    assert.doesNotMatch(d.stderr(), /internal error/);

    await unlinkAll(fillers);
    for (const x of cases) {
      await importStream(x.dom, 4);
      const img = path.join(x.dir, 'private.img');
      assert.equal(await sha256(img), sha256Of(pattern(4 * MiB, 4)));
      assert.deepEqual((await listFiles(x.dir)).filter((f) => DEBRIS.test(f)), []);
    }
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
  });
});

function sha256Of(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
