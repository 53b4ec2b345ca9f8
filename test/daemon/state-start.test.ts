// The real qubesd (and an embedded tool) on a base directory whose
// qubes.xml is missing or broken: refused at start, exit 1, the reason and
// the way back on stderr; --init / QUBES_STORAGE_INIT=1 on purpose; and the
// modes of everything they write under the base directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AdminClient } from '../../src/admin/client.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { exists } from '../../src/files/files.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB } from '../helpers/data.js';
import { CLI_DIR } from '../cli/helpers.js';
import { daemonScope, spawnQubesd, startQubesd } from './helpers.js';
import { runNode, type NodeRun } from '../helpers/process.js';

const { sock, running } = daemonScope();

/** A base directory with a pool and a domain, started once more (so that it has a backup). */
async function stateWithDomain(base: string, reflink: boolean): Promise<void> {
  const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 4 * MiB, private: 2 * MiB } });
  await rt.app.addPool('file-reflink', 'default', { dir_path: path.join(base, 'pools', 'default'), setup_check: reflink });
  await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
  await rt.close();
  await (await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] })).close();
}

/** Starts qubesd expecting it to refuse; returns its stderr. */
async function refusedStart(base: string, extra: string[] = []): Promise<string> {
  const socketPath = await sock();
  const d = spawnQubesd(['--base-dir', base, '--socket', socketPath, '--storage-conf', path.join(base, 'storage.conf'), ...extra]);
  running.push(d);
  // A daemon that starts instead fails the test at once (rather than waiting for an exit that never comes).
  await d.waitFor(/qubesd: (listening on|error: cannot start)/).catch(() => undefined);
  assert.doesNotMatch(d.stderr(), /listening on/, 'qubesd must refuse to start');
  assert.deepEqual(await d.exited, { code: 1, signal: null }, d.stderr());
  assert.ok(!(await exists(socketPath)), 'a refused daemon makes no socket');
  assert.ok(!(await exists(path.join(base, 'qubes.xml.lock'))), 'and leaves no lock');
  return d.stderr();
}

function runTool(tool: string, args: string[], env: NodeJS.ProcessEnv): Promise<NodeRun> {
  return runNode(path.join(CLI_DIR, `${tool}.js`), args, env);
}

describeEachFs('qubesd state at start', (tfs, fsx) => {
  test('qubes.xml missing while pools and volumes exist: qubesd exits 1 saying so and how to restore; --init starts afresh', async () => {
    const base = await fsx.tempDir('missing');
    await stateWithDomain(base, tfs.reflink);
    await fs.unlink(path.join(base, 'qubes.xml'));
    const err = await refusedStart(base);
    assert.match(err, new RegExp(`qubesd: error: cannot start: ${base}/qubes\\.xml is missing, but ${base} holds backup/, pools/: a state was there before`));
    assert.match(err, /cp -p \S+\/backup\/qubes-\S+\.xml \S+\/qubes\.xml/);
    assert.match(err, /qubesd --init/);
    assert.ok(!(await exists(path.join(base, 'qubes.xml'))), 'no new state written');

    const socketPath = await sock();
    const d = await startQubesd(base, socketPath, ['--init']);
    running.push(d);
    const c = new AdminClient({ socketPath, timeoutMs: 10_000 });
    assert.match((await c.call('admin.vm.List', 'dom0')).toString(), /^dom0 class=AdminVM state=Running\b[^\n]*\n$/, 'only dom0');
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    assert.ok(await exists(path.join(base, 'pools', 'default', 'vm-templates', 'tpl', 'private.img')), 'the old volumes are untouched');
  });

  test('a corrupt qubes.xml: qubesd exits 1 naming the problem and the backup; the commands it gives bring the state back', async () => {
    const base = await fsx.tempDir('corrupt');
    await stateWithDomain(base, tfs.reflink);
    const file = path.join(base, 'qubes.xml');
    await fs.truncate(file, Math.floor((await fs.stat(file)).size / 3));
    const err = await refusedStart(base, ['--init']);
    assert.match(err, new RegExp(`qubesd: error: cannot start: ${base}/qubes\\.xml:\\d+:\\d+: .*Not starting\\.`));
    const m = /with no qubesd or tool running: (.*?) {2}\(older backups/.exec(err);
    assert.ok(m, err);
    execFileSync('/bin/sh', ['-c', m[1]!]);
    const socketPath = await sock();
    const d = await startQubesd(base, socketPath);
    running.push(d);
    const c = new AdminClient({ socketPath, timeoutMs: 10_000 });
    assert.match((await c.call('admin.vm.List', 'dom0')).toString(), /^tpl class=TemplateVM state=Halted\b/m);
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
  });

  test('an embedded tool refuses the same way (exit non-zero, the reason on stderr); QUBES_STORAGE_INIT=1 starts afresh', async () => {
    const base = await fsx.tempDir('tool');
    await stateWithDomain(base, tfs.reflink);
    await fs.unlink(path.join(base, 'qubes.xml'));
    const env = { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBES_STORAGE_EMBEDDED: '1' };
    const r = await runTool('qvm-ls', [], env);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /qubes\.xml is missing, but .* holds backup\/, pools\/: a state was there before/);
    assert.match(r.stderr, /QUBES_STORAGE_INIT=1/);
    assert.ok(!(await exists(path.join(base, 'qubes.xml'))));
    const r2 = await runTool('qvm-ls', [], { ...env, QUBES_STORAGE_INIT: '1' });
    assert.equal(r2.code, 0, r2.stderr);
    assert.match(r2.stdout, /^dom0 /m);
    assert.doesNotMatch(r2.stdout, /tpl/);
  });

  test('everything qubesd writes in the base directory is 0600 (directories: backup 0700; the socket 0660)', async (t) => {
    const base = await fsx.tempDir('modes');
    const socketPath = path.join(base, 'qubesd.sock');
    const start = async () => {
      const d = await startQubesd(base, socketPath);
      running.push(d);
      return d;
    };
    // Every save goes to the journal, so that it exists too.
    process.env['QUBES_STORAGE_JOURNAL_FROM'] = '0';
    t.after(() => delete process.env['QUBES_STORAGE_JOURNAL_FROM']);
    // First use: the daemon makes the state and the default pool.
    let d = await start();
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    // A domain with small volumes (the daemon's defaults are 10 GiB), by the runtime the daemon runs.
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 4 * MiB, private: 2 * MiB } });
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    // Some bulk, so that a one-domain change is small enough for the journal (it takes records up to half the state).
    for (let i = 0; i < 6; i++) await rt.app.createDomain({ klass: 'AppVM', name: `app${i}`, label: 'red', template: 'tpl' });
    await rt.close();
    d = await start();
    const c = new AdminClient({ socketPath, timeoutMs: 60_000 });
    await c.call('admin.vm.Start', 'tpl');
    await c.call('admin.vm.feature.Set', 'tpl', 'f', 'v');
    const files: string[] = [];
    const other: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      for (const e of await fs.readdir(path.join(base, rel), { withFileTypes: true })) {
        const r = path.join(rel, e.name);
        const mode = (await fs.lstat(path.join(base, r))).mode & 0o777;
        if (e.isFile()) files.push(`${r} ${mode.toString(8)}`);
        else other.push(`${r}${e.isDirectory() ? '/' : e.isSocket() ? '=' : '?'} ${mode.toString(8)}`);
        if (e.isDirectory()) await walk(r);
      }
    };
    await walk('');
    // The pools' files are the drivers' (volumes are made 0600 there); shown, not judged here.
    t.diagnostic(`pools: ${[...files, ...other].filter((f) => f.startsWith('pools')).join(', ')}`);
    files.splice(0, files.length, ...files.filter((f) => !f.startsWith('pools')));
    const names = files.map((f) => f.split(' ')[0]);
    for (const want of ['qubes.xml', 'qubes.xml.journal', 'qubes.xml.lock', 'running-domains']) assert.ok(names.includes(want), `${want} in ${files.join(', ')}`);
    assert.ok(names.some((n) => n!.startsWith('backup/qubes-')), files.join(', '));
    assert.deepEqual(files.filter((f) => !f.endsWith(' 600')), [], 'every file 0600');
    assert.deepEqual(other.filter((o) => o.startsWith('backup/') || o.startsWith('qubesd.sock')).sort(), ['backup/ 700', 'qubesd.sock= 660']);
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
  });
});
