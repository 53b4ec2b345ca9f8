// A new state's kernel pool, as Qubes' first start makes it: the pool
// `linux-kernel` at BASE/vm-kernels, default_pool_kernel, default_kernel
// (the newest installed kernel), and the `kernel` volume every domain class
// but AdminVM gets (vid = its kernel, '' for none). An existing state is
// never changed. Expected values are Qubes' (qubes/config.py pool_configs,
// Qubes.load_initial_values, the installer's default kernel rule, the
// domain classes' volume_config), not read from this code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AdminClient } from '../../src/admin/client.js';
import { openRuntime, type Runtime } from '../../src/daemon/runtime.js';
import type { DomainRunner } from '../../src/domain/runner.js';
import { compareKernelVersions } from '../../src/drivers/linux-kernel/versions.js';
import type { BlockDevice } from '../../src/storage/volume.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { daemonScope, startQubesd } from './helpers.js';

const { sock } = daemonScope();

/** Installs kernel VERSION in DIR: the files named (vmlinuz and initramfs make it complete). */
async function install(dir: string, version: string, files: readonly string[] = ['vmlinuz', 'initramfs']): Promise<void> {
  await fs.mkdir(path.join(dir, version), { recursive: true });
  for (const f of files) await fs.writeFile(path.join(dir, version, f), `${version} ${f}\n`);
}

function open(base: string, runner?: DomainRunner): Promise<Runtime> {
  return openRuntime({ baseDir: base, storageConf: null, nodeModules: [], createDefaultPool: true, ...(runner ? { runner } : {}) });
}

/** name: pool/vid rw snap_on_start save_on_stop, per volume in the domain's order. */
function volumeSummary(rt: Runtime, name: string): string[] {
  return [...rt.app.domain(name).storage.volumes.values()].map(
    (v) => `${v.name}: ${v.pool.name}/${v.vid} rw=${v.rw} snap=${v.snap_on_start} save=${v.save_on_stop} keep=${v.revisions_to_keep}`,
  );
}

test('kernel versions in the order of Python LooseVersion (numbers by value, a prefix first)', () => {
  const sorted = ['5.15.0', '5.15.0-1', '6.6.9-1.fc37', '6.6.48-1.fc37', '6.12.9-1.fc41', '10.0'];
  for (let i = 0; i < sorted.length; i++)
    for (let j = 0; j < sorted.length; j++)
      assert.equal(Math.sign(compareKernelVersions(sorted[i]!, sorted[j]!)), Math.sign(i - j), `${sorted[i]} vs ${sorted[j]}`);
});

describeEachFs('a new state: the kernel pool', (_tfs, fsx) => {
  test('no kernel installed: pool linux-kernel at BASE/vm-kernels (made, mode 0750), default_pool_kernel set, default_kernel empty; saved as Qubes writes it', async () => {
    const base = await fsx.tempDir('kp-none');
    const rt = await open(base);
    try {
      assert.ok(rt.app.poolNames().includes('linux-kernel'));
      const cfg = rt.app.pool('linux-kernel').config();
      assert.equal(cfg['driver'], 'linux-kernel');
      assert.equal(cfg['dir_path'], path.join(base, 'vm-kernels'));
      const st = await fs.stat(path.join(base, 'vm-kernels'));
      assert.ok(st.isDirectory());
      assert.equal(st.mode & 0o7777, 0o750, 'as the base directory\'s other directories; no setgid (Qubes\' 2770 serves its qubes group)');
      const pk = rt.app.globals.readProperty('default_pool_kernel');
      assert.deepEqual([pk.value, pk.isDefault], ['linux-kernel', false], 'set, not a default');
      const dk = rt.app.globals.readProperty('default_kernel');
      assert.deepEqual([dk.value, dk.isDefault], ['', true]);
      assert.deepEqual(rt.notices.filter((n) => /no kernel pool/.test(n)), []);
    } finally {
      await rt.close();
    }
    const xml = await fs.readFile(path.join(base, 'qubes.xml'), 'utf8');
    assert.ok(xml.includes(`<pool dir_path="${path.join(base, 'vm-kernels')}" driver="linux-kernel" name="linux-kernel"/>`), xml);
    assert.match(xml, /<property name="default_pool_kernel">linux-kernel<\/property>/);
    assert.doesNotMatch(xml, /default_kernel"/);
  });

  test('kernels installed before the first start: the state is made (vm-kernels is no trace), default_kernel the newest complete one whose name starts with a digit', async () => {
    const base = await fsx.tempDir('kp-some');
    const kdir = path.join(base, 'vm-kernels');
    await install(kdir, '5.15.0');
    await install(kdir, '6.6.9-1.fc37');
    await install(kdir, '6.6.48-1.fc37', ['vmlinuz', 'initramfs', 'modules.img']);
    await install(kdir, '6.12.9-1.fc41', ['vmlinuz']); // incomplete: no initramfs
    await install(kdir, 'latest'); // Qubes' installer skips names not starting with a digit
    await fs.chmod(kdir, 0o755);
    const rt = await open(base);
    try {
      const dk = rt.app.globals.readProperty('default_kernel');
      assert.deepEqual([dk.value, dk.isDefault], ['6.6.48-1.fc37', false]);
      assert.equal(rt.app.globals.readProperty('default_pool_kernel').value, 'linux-kernel');
      assert.equal((await fs.stat(kdir)).mode & 0o7777, 0o755, 'an existing kernels directory keeps its mode');

      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
      const v = rt.app.domain('work').storage.get('kernel');
      assert.equal(v.vid, '6.6.48-1.fc37', 'the kernel volume resolves to the default kernel');
      assert.equal(await v.path(), path.join(kdir, '6.6.48-1.fc37', 'modules.img'));
      assert.equal(await v.verify(), true);
    } finally {
      await rt.close();
    }
    assert.match(await fs.readFile(path.join(base, 'qubes.xml'), 'utf8'), /<property name="default_kernel">6\.6\.48-1\.fc37<\/property>/);
  });

  test('TemplateVM, AppVM, DispVM, StandaloneVM: root, private, volatile, kernel in that order; the kernel volume read-only, no snapshot, not saved, no revisions', async () => {
    const base = await fsx.tempDir('kp-classes');
    await install(path.join(base, 'vm-kernels'), '6.1.0');
    const rt = await open(base);
    try {
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await rt.app.createDomain({ klass: 'AppVM', name: 'dvm', label: 'red', template: 'tpl', properties: { template_for_dispvms: true } });
      await rt.app.createDomain({ klass: 'DispVM', name: 'disp1', label: 'red', template: 'dvm' });
      await rt.app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'red' });
      const kernel = 'kernel: linux-kernel/6.1.0 rw=false snap=false save=false keep=0';
      for (const name of ['tpl', 'dvm', 'disp1', 'sa']) {
        const s = volumeSummary(rt, name);
        assert.deepEqual(
          s.map((l) => l.split(':')[0]),
          ['root', 'private', 'volatile', 'kernel'],
          `${name}: ${s.join('; ')}`,
        );
        assert.equal(s[3], kernel, name);
      }
      assert.deepEqual(volumeSummary(rt, 'dom0'), [], 'AdminVM: no volumes');
      const info = await rt.app.domain('dvm').storage.get('kernel').info();
      assert.deepEqual({ size: info.size, source: info.source, ephemeral: info.ephemeral }, { size: 0, source: null, ephemeral: false });
    } finally {
      await rt.close();
    }
  });

  test('no kernel: the kernel volume stays, vid "", no path, no usage; the domain starts without a kernel disk; a kernel set and reset follows', async () => {
    const base = await fsx.tempDir('kp-empty');
    const started: ReadonlyMap<string, BlockDevice>[] = [];
    const runner: DomainRunner = {
      async start(_d, disks) {
        started.push(new Map(disks));
      },
      async shutdown() {},
      async kill() {},
    };
    const rt = await open(base, runner);
    try {
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
      assert.deepEqual(volumeSummary(rt, 'work').map((l) => l.split(':')[0]), ['root', 'private', 'volatile', 'kernel']);
      const info = await rt.app.domain('work').storage.get('kernel').info();
      assert.deepEqual(
        { pool: info.pool, vid: info.vid, path: info.path, size: info.size, usage: info.usage, rw: info.rw },
        { pool: 'linux-kernel', vid: '', path: '', size: 0, usage: 0, rw: false },
      );
      await rt.app.start('work');
      assert.deepEqual([...started[0]!.keys()].sort(), ['private', 'root', 'volatile'], 'no kernel disk: the domain boots its own');
      await rt.app.shutdown('work');

      await install(path.join(base, 'vm-kernels'), '6.1.0');
      await rt.app.setProperty(rt.app.domain('tpl'), 'kernel', '6.1.0');
      assert.equal(rt.app.domain('work').storage.get('kernel').vid, '6.1.0', 'follows its template');
      await rt.app.resetProperty(rt.app.domain('tpl'), 'kernel');
      assert.equal(rt.app.domain('work').storage.get('kernel').vid, '', 'kept, naming no kernel again');
    } finally {
      await rt.close();
    }
    const xml = await fs.readFile(path.join(base, 'qubes.xml'), 'utf8');
    assert.match(xml, /<volume name="kernel" pool="linux-kernel" vid=""\/>/);
    // And it loads back.
    const rt2 = await open(base, runner);
    try {
      assert.equal(rt2.app.domain('work').storage.get('kernel').vid, '');
    } finally {
      await rt2.close();
    }
  });

  test('an existing state without a kernel pool is not changed: no pool, no directory, no setting, byte for byte', async () => {
    const base = await fsx.tempDir('kp-old');
    const made = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    try {
      await fs.mkdir(path.join(base, 'pools', 'default'), { recursive: true });
      await made.app.addPool('file-reflink', 'default', { dir_path: path.join(base, 'pools', 'default'), setup_check: false });
      await made.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await made.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
    } finally {
      await made.close();
    }
    const before = await fs.readFile(path.join(base, 'qubes.xml'));
    assert.doesNotMatch(before.toString(), /linux-kernel|name="kernel"|default_kernel|default_pool_kernel/);
    const rt = await open(base);
    try {
      assert.deepEqual(rt.app.poolNames(), ['default']);
      assert.equal(rt.app.globals.readProperty('default_pool_kernel').isDefault, true);
      assert.equal(rt.app.domain('work').storage.volumes.has('kernel'), false);
      assert.deepEqual(rt.notices, []);
    } finally {
      await rt.close();
    }
    assert.ok(!(await fs.stat(path.join(base, 'vm-kernels')).catch(() => null)), 'no kernels directory made');
    assert.deepEqual(await fs.readFile(path.join(base, 'qubes.xml')), before);
  });

  test('a storage.conf pool already named linux-kernel: kept, a notice, the state goes on', async () => {
    const base = await fsx.tempDir('kp-conf');
    const conf = path.join(base, 'storage.conf');
    await fs.writeFile(conf, `[linux-kernel]\ndriver=file-reflink\ndir_path=${base}/mine\nsetup_check=False\n`);
    const rt = await openRuntime({ baseDir: base, storageConf: conf, nodeModules: [], createDefaultPool: true });
    try {
      assert.deepEqual(rt.app.poolNames(), ['linux-kernel']);
      assert.equal(rt.app.pool('linux-kernel').config()['driver'], 'file-reflink');
      assert.equal(rt.notices.length, 1);
      assert.match(rt.notices[0]!, /no kernel pool made: a pool named linux-kernel already exists/);
      assert.equal(rt.app.globals.readProperty('default_pool_kernel').isDefault, true);
    } finally {
      await rt.close();
    }
  });

  test('a storage.conf pool writing in BASE/vm-kernels: the kernel pool is refused with a notice, nothing left behind', async () => {
    const base = await fsx.tempDir('kp-clash');
    const conf = path.join(base, 'storage.conf');
    await fs.writeFile(conf, `[mine]\ndriver=file-reflink\ndir_path=${base}/vm-kernels\nsetup_check=False\n`);
    const rt = await openRuntime({ baseDir: base, storageConf: conf, nodeModules: [], createDefaultPool: true });
    try {
      assert.deepEqual(rt.app.poolNames(), ['mine']);
      assert.equal(rt.notices.length, 1);
      assert.match(rt.notices[0]!, /^note: no kernel pool made at .*vm-kernels: /);
    } finally {
      await rt.close();
    }
    assert.doesNotMatch(await fs.readFile(path.join(base, 'qubes.xml'), 'utf8'), /linux-kernel/);
  });

  test('qubesd: a new state has the kernel pool (admin.pool.Info as Qubes answers it)', async () => {
    const base = await fsx.tempDir('kp-daemon');
    const socketPath = await sock();
    const d = await startQubesd(base, socketPath);
    try {
      const c = new AdminClient({ socketPath, timeoutMs: 30_000 });
      assert.equal((await c.call('admin.pool.List', 'dom0')).toString(), 'default\nlinux-kernel\n');
      const info = (await c.call('admin.pool.Info', 'dom0', 'linux-kernel')).toString();
      assert.match(info, new RegExp(`^dir_path=${path.join(base, 'vm-kernels')}\n`, 'm'));
      assert.match(info, /^driver=linux-kernel\n/m);
      assert.equal((await c.call('admin.property.Get', 'dom0', 'default_pool_kernel')).toString(), 'default=False type=str linux-kernel');
    } finally {
      d.child.kill('SIGTERM');
      await d.exited;
    }
  });
});
