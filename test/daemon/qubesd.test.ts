// The real qubesd as a child process: SIGKILL in the middle of calls and a
// restart (state loads, volumes recover per the crash contract), SIGTERM
// finishing an in-flight call, the state lock against a second daemon, the
// policy file and the per-call log line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { AdminClient, QubesDaemonCommunicationError } from '../../src/admin/client.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { exists } from '../../src/files/files.js';
import { PermissionDenied } from '../../src/storage/errors.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { listFiles, MiB, pattern, readAt, sha256, writeAt } from '../helpers/data.js';
import { daemonScope, spawnQubesd, startQubesd, type DaemonProc } from './helpers.js';

const { sock, running } = daemonScope();

async function start(base: string, socketPath: string, extra: string[] = []): Promise<DaemonProc> {
  const d = await startQubesd(base, socketPath, extra);
  running.push(d);
  return d;
}

async function waitForFile(p: string, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await exists(p))) {
    if (Date.now() > until) throw new Error(`${p} did not appear`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const infoField = (info: string, key: string) => new RegExp(`^${key}=(.*)$`, 'm').exec(info)?.[1];

describeEachFs('qubesd', (tfs, fsx) => {
  test('SIGKILL in the middle of calls, then a restart: the state loads and a running origin keeps what it wrote', async () => {
    const base = await fsx.tempDir('crash');
    const poolDir = path.join(base, 'pool');
    // The state, with small volumes, made in-process (the daemon then loads it).
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 8 * MiB, private: 4 * MiB } });
    await rt.app.addPool('file-reflink', 'default', { dir_path: poolDir, setup_check: tfs.reflink });
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl' });
    await rt.close();
    const tplPrivate = path.join(poolDir, 'vm-templates/tpl/private.img');
    await writeAt(tplPrivate, 0, pattern(MiB, 77));
    const tplHash = await sha256(tplPrivate);

    const socketPath = await sock();
    const d1 = await start(base, socketPath);
    const c = new AdminClient({ socketPath, timeoutMs: 30_000 });
    assert.equal((await c.call('admin.vm.Start', 'work')).toString(), '');
    const dirty = infoField((await c.call('admin.vm.volume.Info', 'work', 'private')).toString(), 'path')!;
    assert.match(dirty, /private-dirty\.img$/);
    const written = pattern(64 * 1024, 5);
    await writeAt(dirty, 3 * MiB, written); // the running domain writes (and syncs)

    // In flight when the daemon dies: an import half sent, and a burst of calls.
    const pt = new PassThrough();
    const imp = c.callStream('admin.vm.volume.ImportWithSize', 'tpl', 'private', pt);
    const impSettled = imp.then(
      () => 'resolved',
      (e: Error) => e,
    );
    pt.write(`${4 * MiB}\n`);
    pt.write(pattern(2 * MiB, 9));
    await waitForFile(path.join(poolDir, 'vm-templates/tpl/private-import.img'));
    const burst = Array.from({ length: 20 }, (_, i) =>
      c.call(i % 2 ? 'admin.vm.volume.Info' : 'admin.vm.volume.ListSnapshots', 'work', 'private').then(
        () => 'ok',
        () => 'failed',
      ),
    );
    d1.child.kill('SIGKILL');
    assert.equal((await d1.exited).signal, 'SIGKILL');
    await Promise.all(burst);
    const impResult = await impSettled;
    assert.ok(impResult instanceof QubesDaemonCommunicationError, String(impResult));
    pt.destroy();
    assert.ok(await exists(socketPath), 'a killed daemon leaves its socket');
    assert.ok(await exists(path.join(base, 'qubes.xml.lock')), 'and its lock');

    // Restart: stale socket and stale lock are taken over; the state loads.
    const d2 = await start(base, socketPath);
    const list = (await c.call('admin.vm.List', 'dom0')).toString();
    assert.match(list, /^tpl class=TemplateVM state=Halted uuid=/m);
    // With no hypervisor, power state is recorded beside the state (src/runtime/bookkeeping.ts):
    // a domain outlives its daemon, as VMs outlive qubesd under a real hypervisor.
    assert.match(list, /^work class=AppVM state=Running uuid=/m);
    // The running origin still has what it wrote before the crash.
    const dirty2 = infoField((await c.call('admin.vm.volume.Info', 'work', 'private')).toString(), 'path')!;
    assert.equal(dirty2, dirty);
    assert.deepEqual(await readAt(dirty2, 3 * MiB, written.length), written);
    assert.equal((await c.call('admin.vm.Shutdown', 'work')).toString(), '');
    assert.deepEqual(await readAt(path.join(poolDir, 'appvms/work/private.img'), 3 * MiB, written.length), written, 'committed at shutdown');
    // The import never completed: old data, and its file is gone after the next operation in the pool.
    assert.equal(await sha256(tplPrivate), tplHash);
    assert.deepEqual((await listFiles(poolDir)).filter((f) => /-import\.img$|-tmp-|-export-/.test(f)), []);
    assert.match((await c.call('admin.vm.volume.Info', 'tpl', 'private')).toString(), new RegExp(`\nsize=${4 * MiB}\n`));

    d2.child.kill('SIGTERM');
    assert.deepEqual(await d2.exited, { code: 0, signal: null });
  });

  test('SIGTERM: stops accepting, finishes the call in flight, saves, removes socket and lock, exits 0', async () => {
    const base = await fsx.tempDir('term');
    const socketPath = await sock();
    const d = await start(base, socketPath);
    if (!tfs.reflink) assert.match(d.stderr(), /qubesd: note: .*reflink.*setup_check=False/);
    const c = new AdminClient({ socketPath, timeoutMs: 30_000 });
    assert.equal((await c.call('admin.pool.List', 'dom0')).toString(), 'default\nlinux-kernel\n', 'first use: the default pool and the kernel pool');
    await c.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');

    const data = pattern(3 * MiB, 42);
    const pt = new PassThrough();
    const imp = c.callStream('admin.vm.volume.ImportWithSize', 'tpl', 'private', pt);
    pt.write(`${data.length}\n`);
    pt.write(data.subarray(0, MiB));
    await waitForFile(path.join(base, 'pools/default/vm-templates/tpl/private-import.img'));
    d.child.kill('SIGTERM');
    await d.waitFor('qubesd: SIGTERM: stopping');
    // No new calls are taken...
    await assert.rejects(new AdminClient({ socketPath, timeoutMs: 5000 }).call('admin.pool.List', 'dom0'), QubesDaemonCommunicationError);
    // ...but the one in flight completes.
    await new Promise((r) => setTimeout(r, 200));
    pt.end(data.subarray(MiB));
    assert.equal((await imp).toString(), '');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    assert.ok(!(await exists(socketPath)), 'socket removed');
    assert.ok(!(await exists(path.join(base, 'qubes.xml.lock'))), 'state lock released');
    assert.match(d.stderr(), /qubesd: call method=admin\.vm\.volume\.ImportWithSize arg=private source=dom0 dest=tpl result=ok\b/);

    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    try {
      const v = rt.app.domain('tpl').storage.get('private');
      assert.equal(v.size, data.length, 'the size the import set was saved');
      assert.equal(await sha256(path.join(base, 'pools/default/vm-templates/tpl/private.img')), await sha256Of(data));
    } finally {
      await rt.close();
    }
  });

  test('a second daemon on the same base directory is refused (state lock); one on a live socket too', async () => {
    const base = await fsx.tempDir('second');
    const socketPath = await sock();
    const d = await start(base, socketPath);
    const other = await sock();
    const d2 = spawnQubesd(['--base-dir', base, '--socket', other, '--storage-conf', path.join(base, 'storage.conf')]);
    running.push(d2);
    assert.deepEqual(await d2.exited, { code: 1, signal: null });
    assert.match(d2.stderr(), new RegExp(`qubesd: error: cannot start: .*\\b${d.pid}\\b`));
    assert.ok(!(await exists(other)), 'the refused daemon made no socket');

    const base3 = await fsx.tempDir('second-b');
    const d3 = spawnQubesd(['--base-dir', base3, '--socket', socketPath, '--storage-conf', path.join(base3, 'storage.conf')]);
    running.push(d3);
    assert.deepEqual(await d3.exited, { code: 1, signal: null });
    assert.ok(!(await exists(path.join(base3, 'qubes.xml.lock'))), 'it released the state it opened');

    const c = new AdminClient({ socketPath, timeoutMs: 10_000 });
    assert.equal((await c.call('admin.pool.List', 'dom0')).toString(), 'default\nlinux-kernel\n', 'the first one still serves');
    d.child.kill('SIGINT');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
  });

  test('--policy and --debug; one log line per call; bad usage exits 2', async () => {
    const base = await fsx.tempDir('policy');
    const policy = path.join(base, 'policy');
    await fs.writeFile(policy, 'dom0 admin.pool.List\ndom0 admin.vm.volume.*\n');
    const socketPath = await sock();
    const d = await start(base, socketPath, ['--policy', policy, '--debug']);
    const c = new AdminClient({ socketPath, timeoutMs: 10_000 });
    assert.equal((await c.call('admin.pool.List', 'dom0')).toString(), 'default\nlinux-kernel\n');
    await assert.rejects(c.call('admin.pool.Info', 'dom0', 'default'), PermissionDenied);
    await assert.rejects(c.call('admin.vm.volume.Info', 'ghost', 'private'), (e: Error & { remoteTraceback?: string }) => {
      assert.equal(e.name, 'QubesVMNotFoundError');
      assert.ok(e.remoteTraceback && e.remoteTraceback.length > 0, 'with --debug the traceback is sent');
      return true;
    });
    await d.waitFor('result=QubesVMNotFoundError');
    const calls = d.stderr().split('\n').filter((l) => l.startsWith('qubesd: ') && l.includes(' call method='));
    assert.deepEqual(
      // Up to the result (the line may go on with the duration and other details).
      calls.map((l) => /^.* result=\S+/.exec(l)?.[0]),
      [
        'qubesd: call method=admin.pool.List arg=- source=dom0 dest=dom0 result=ok',
        'qubesd: warning: call method=admin.pool.Info arg=default source=dom0 dest=dom0 result=PermissionDenied',
        'qubesd: warning: call method=admin.vm.volume.Info arg=private source=dom0 dest=ghost result=QubesVMNotFoundError',
      ],
    );
    d.child.kill('SIGTERM');
    assert.equal((await d.exited).code, 0);

    const bad = spawnQubesd(['--bogus']);
    running.push(bad);
    assert.equal((await bad.exited).code, 2);
    assert.match(bad.stderr(), /usage: qubesd/);
  });
});

async function sha256Of(b: Buffer): Promise<string> {
  const { createHash } = await import('node:crypto');
  return createHash('sha256').update(b).digest('hex');
}
