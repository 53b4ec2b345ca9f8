// Leftovers of crashed processes in file-based pools (temporary copies,
// imports, exports, reflink probes) are removed when the App next opens: it
// holds the state lock, so no other process works in its pools and every
// such file is debris. Only our exact names go, symlinks are never followed,
// and a live export of a running daemon survives another process's attempt
// to open the same state.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminClient } from '../../src/admin/client.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { StateLockedError } from '../../src/domain/state-lock.js';
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import { QubesValueError } from '../../src/storage/errors.js';
import { listFiles, MiB, pattern, writeAt } from '../helpers/data.js';
import { openTestApp } from '../helpers/app-child.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { ensureDead, socketDir, startQubesd, type DaemonProc } from '../daemon/helpers.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), '../helpers/app-child.js');

/** Runs app-child; with `failpoint`, it must be killed there. */
function child(dir: string, reflink: boolean, args: string[], failpoint?: string): void {
  const r = spawnSync(process.execPath, [CHILD, dir, String(reflink), ...args], {
    env: { ...process.env, QUBES_STORAGE_FAILPOINTS: failpoint ?? '' },
    encoding: 'utf8',
  });
  if (failpoint) assert.equal(r.signal, 'SIGKILL', `${args.join(' ')} not killed at ${failpoint}: ${r.stderr}`);
  else assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
}

const LEFTOVER = /-(tmp|export)-[0-9a-f]+\.img$|-import\.img$|\.reflink-probe-/;

const daemons: DaemonProc[] = [];
const sockDirs: string[] = [];
after(async () => {
  for (const d of daemons) await ensureDead(d);
  for (const s of sockDirs) await fs.rm(s, { recursive: true, force: true });
});

test("a file pool refuses a vid whose files could take a temporary file's shape", () => {
  const pool = fileReflinkDriver.createPool('p', { dir_path: '/nonexistent/p', setup_check: false });
  for (const vid of ['appvms/work/private-tmp-ab', 'appvms/work/root-import', 'appvms/work/a.b', 'appvms/work/x-export-0'])
    assert.throws(
      () => pool.initVolume(null, { name: 'private', vid, rw: true, save_on_stop: true, size: MiB }),
      (e: unknown) => e instanceof QubesValueError && /its last part names the image files/.test((e as Error).message),
      vid,
    );
  assert.doesNotThrow(() => pool.initVolume(null, { name: 'private', vid: 'appvms/sys-net/private_2', rw: true, save_on_stop: true, size: MiB }));
});

describeEachFs('leftovers swept at open', (tfs, fsx) => {
  test('every kind, in every file-based driver, at any depth; nothing else, nothing through a symlink', async () => {
    const base = await fsx.tempDir('sweep');
    const outside = await fsx.tempDir('outside');
    const app0 = await openTestApp(base, tfs.reflink); // pool default: file-reflink
    await app0.addPool('file', 'filepool', { dir_path: path.join(base, 'file') });
    await app0.addPool('xen', 'xenpool', { dir_path: path.join(base, 'xen') });
    await app0.close();

    const leftovers: string[] = [];
    const kept: string[] = [];
    const put = async (file: string, list: string[]) => {
      await fs.mkdir(path.dirname(file), { recursive: true });
      await fs.writeFile(file, 'x');
      list.push(file);
    };
    for (const dir of [path.join(base, 'pool'), path.join(base, 'file'), path.join(base, 'xen')]) {
      for (const f of [
        'appvms/work/private-tmp-0a1b2c3d4e5f.img', // a copy in progress (start, resize, clone)
        'appvms/work/private-export-00ff00ff00ff.img', // an export whose ExportEnd never came
        'appvms/work/private-import.img', // an import cut short
        'vm-templates/tpl/root-tmp-abc.img',
        'servicevms/net/volatile-import.img',
        'appvms/data-tmp-1.img', // vid appvms/data: its files one level down
        'vm-templates/a/b/c/data-export-9.img', // vid vm-templates/a/b/c/data
        '.reflink-probe-0123456789ab',
        '.reflink-probe-0123456789ab-copy',
      ])
        await put(path.join(dir, f), leftovers);
      for (const f of [
        'appvms/work/private.img',
        'appvms/work/private.img.1@2026-01-01T00:00:00Z',
        'appvms/work/private-dirty.img',
        'appvms/work/private-cow.img',
        'appvms/work/private-base.img',
        'appvms/work/private-tmp-xyz.img', // not hexadecimal
        'appvms/work/private-tmp-.img',
        'appvms/work/private-import.img.part',
        'appvms/work/pri-vate-tmp-ab.img', // not a volume's stem
        'appvms/work/private-export-ab.raw',
        'appvms/work/README',
        'appvms/work/-tmp-ab.img',
        'custom/data-tmp-1.img', // outside the class folders: not the pool's to remove
        'backup/x-export-0a1b2c3d4e5f.img',
      ])
        await put(path.join(dir, f), kept);
      // A planted directory symlink leading out of the pool, and a symlink with a temporary name.
      await put(path.join(outside, 'x-tmp-ab.img'), kept);
      await put(path.join(outside, 'y-import.img'), kept);
      await fs.symlink(outside, path.join(dir, 'appvms', 'evil'));
      await fs.symlink(path.join(outside, 'y-import.img'), path.join(dir, 'appvms', 'work', 'z-tmp-ab.img'));
      kept.push(path.join(dir, 'appvms', 'work', 'z-tmp-ab.img'));
    }

    // Opened and closed at once: the sweep started at open ends before the state lock is released.
    await (await openTestApp(base, tfs.reflink)).close();
    {
      const wrong: string[] = [];
      for (const f of leftovers) if (await fs.lstat(f).catch(() => null)) wrong.push(`not swept: ${f}`);
      for (const f of kept) if (!(await fs.lstat(f).catch(() => null))) wrong.push(`removed: ${f}`);
      assert.deepEqual(wrong, []);
    }
  });

  test('what crashed children really left (a clone, an import) is gone at the next open', async () => {
    const base = await fsx.tempDir('sweep-crash');
    const pool = path.join(base, 'pool');
    child(base, tfs.reflink, ['create-template', 'tpl']);
    const leftNow = async () => (await listFiles(pool)).filter((f) => LEFTOVER.test(f));
    // A clone killed after its copy: the copy (-tmp-) and the source's export link stay behind.
    child(base, tfs.reflink, ['clone', 'tpl', 'copy'], 'reflink.import-volume.after-copy');
    let left = await leftNow();
    assert.ok(left.some((f) => /-tmp-/.test(f)), `a copy left: ${left.join(', ')}`);
    assert.ok(left.some((f) => /^vm-templates\/tpl\/root-export-/.test(f)), `an export left: ${left.join(', ')}`);
    // The next process opens the App (sweeping those), then is killed in an import after its file was made.
    child(base, tfs.reflink, ['import', 'tpl', 'private'], 'reflink.import.after-create');
    left = await leftNow();
    assert.deepEqual(left, ['vm-templates/tpl/private-import.img'], 'the clone debris went at the open, the import left its file');

    const app = await openTestApp(base, tfs.reflink);
    try {
      await app.leftoversSwept(); // started at open, before any operation
      assert.deepEqual((await listFiles(pool)).filter((f) => LEFTOVER.test(f)), [], 'swept at open, before any operation');
    } finally {
      await app.close();
    }
  });

  test("a running daemon's live export is not swept by another process; after the daemon dies, the next open sweeps it", async () => {
    const base = await fsx.tempDir('sweep-daemon');
    const sd = await socketDir();
    sockDirs.push(sd);
    const socketPath = path.join(sd, 'qubesd.sock');
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 4 * MiB, private: 4 * MiB } });
    await rt.app.addPool('file-reflink', 'default', { dir_path: path.join(base, 'pool'), setup_check: tfs.reflink });
    await rt.app.createDomain({ klass: 'StandaloneVM', name: 'work', label: 'blue' });
    await rt.close();
    await writeAt(path.join(base, 'pool', 'appvms', 'work', 'private.img'), 0, pattern(MiB, 1));

    const d = await startQubesd(base, socketPath);
    daemons.push(d);
    const c = new AdminClient({ socketPath, timeoutMs: 30_000 });
    const exported = (await c.call('admin.vm.volume.Export', 'work', 'private')).toString();
    assert.match(exported, /appvms\/work\/private-export-[0-9a-f]+\.img$/);
    // The daemon's own operations in that directory keep it (it holds it) ...
    await c.call('admin.vm.Start', 'work');
    await c.call('admin.vm.Shutdown', 'work');
    assert.ok(await fs.lstat(exported).catch(() => null), 'kept by the daemon that made it');
    // ... and another process cannot even open the state, so it sweeps nothing.
    await assert.rejects(openRuntime({ baseDir: base, storageConf: null, nodeModules: [] }), StateLockedError);
    assert.ok(await fs.lstat(exported).catch(() => null), 'kept while its daemon runs');

    d.child.kill('SIGKILL');
    await d.exited;
    assert.ok(await fs.lstat(exported).catch(() => null), 'left by the killed daemon');
    const rt2 = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    try {
      await rt2.app.leftoversSwept();
      assert.equal(await fs.lstat(exported).catch(() => null), null, 'swept at the next open');
    } finally {
      await rt2.close();
    }
  });
});
