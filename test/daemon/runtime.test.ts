// openRuntime, defaultBaseDir, defaultSocketPath: the first-use default
// pool per filesystem, storage.conf, event forwarding, the state lock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { defaultBaseDir, defaultSocketPath, openRuntime } from '../../src/daemon/runtime.js';
import { StateLockedError } from '../../src/domain/state-lock.js';
import { describeEachFs } from '../helpers/filesystems.js';

test('defaultBaseDir: QUBES_BASE_DIR, root, XDG_DATA_HOME, HOME', () => {
  assert.equal(defaultBaseDir({ QUBES_BASE_DIR: '/srv/q' }, 1000), '/srv/q');
  assert.equal(defaultBaseDir({ QUBES_BASE_DIR: '/srv/q' }, 0), '/srv/q');
  assert.equal(defaultBaseDir({ HOME: '/home/u' }, 0), '/var/lib/qubes');
  assert.equal(defaultBaseDir({ HOME: '/home/u', XDG_DATA_HOME: '/x/data' }, 1000), '/x/data/qubes-storage');
  assert.equal(defaultBaseDir({ HOME: '/home/u', XDG_DATA_HOME: 'relative' }, 1000), '/home/u/.local/share/qubes-storage');
  assert.equal(defaultBaseDir({ HOME: '/home/u' }, 1000), '/home/u/.local/share/qubes-storage');
});

test('defaultSocketPath: QUBESD_SOCKET, else BASE/qubesd.sock', () => {
  assert.equal(defaultSocketPath('/b', { QUBESD_SOCKET: '/run/q.sock' }), '/run/q.sock');
  assert.equal(defaultSocketPath('/b', {}), '/b/qubesd.sock');
});

describeEachFs('openRuntime', (tfs, fsx) => {
  test('first use: a default file-reflink pool in BASE/pools/default, setup_check by the filesystem, one notice without reflink', async () => {
    const base = await fsx.tempDir('first-use');
    const seen: string[] = [];
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], createDefaultPool: true, notice: (l) => seen.push(l) });
    try {
      // With the kernel pool a new state gets (kernel-pool.test.ts).
      assert.deepEqual(rt.app.poolNames(), ['default', 'linux-kernel']);
      const cfg = rt.app.pool('default').config();
      assert.equal(cfg['driver'], 'file-reflink');
      assert.equal(cfg['dir_path'], path.join(base, 'pools', 'default'));
      assert.equal(cfg['setup_check'], tfs.reflink);
      assert.ok((await fs.stat(path.join(base, 'pools', 'default', 'appvms'))).isDirectory());
      if (tfs.reflink) {
        assert.deepEqual(rt.notices, []);
      } else {
        assert.equal(rt.notices.length, 1);
        assert.match(rt.notices[0]!, /reflink/);
        assert.match(rt.notices[0]!, /setup_check=False/);
        assert.ok(!rt.notices[0]!.includes('\n'));
      }
      assert.deepEqual(seen, rt.notices);
      assert.ok((await fs.stat(path.join(base, 'qubes.xml'))).isFile());
    } finally {
      await rt.close();
    }
    // Second use: the pool is there; nothing added, no notice.
    const rt2 = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], createDefaultPool: true });
    try {
      assert.deepEqual(rt2.app.poolNames(), ['default', 'linux-kernel']);
      assert.deepEqual(rt2.notices, []);
    } finally {
      await rt2.close();
    }
  });

  test('without createDefaultPool no pool is made', async () => {
    const base = await fsx.tempDir('no-default');
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    try {
      assert.deepEqual(rt.app.poolNames(), []);
    } finally {
      await rt.close();
    }
  });

  test('storage.conf pools load when the file exists (and then no default pool is made)', async () => {
    const base = await fsx.tempDir('conf');
    const conf = path.join(base, 'storage.conf');
    await fs.writeFile(conf, `[mine]\ndriver=file-reflink\ndir_path=${base}/mine\nsetup_check=False\n`);
    const rt = await openRuntime({ baseDir: base, storageConf: conf, nodeModules: [], createDefaultPool: true });
    try {
      // No default pool beside storage.conf's; the kernel pool of a new state is there.
      assert.deepEqual(rt.app.poolNames(), ['mine', 'linux-kernel']);
      assert.equal(rt.app.poolOrigin('mine'), 'storage.conf');
    } finally {
      await rt.close();
    }
    // A path that does not exist is simply not used.
    const rt2 = await openRuntime({ baseDir: await fsx.tempDir('conf2'), storageConf: path.join(base, 'absent.conf'), nodeModules: [] });
    await rt2.close();
  });

  test('App events reach the bus; the methods table is complete; close stops forwarding', async () => {
    const base = await fsx.tempDir('events');
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], createDefaultPool: true, sizes: { root: 1 << 20, private: 1 << 20 } });
    const got: string[] = [];
    rt.bus.subscribe((e) => got.push(`${e.subject} ${e.event} ${e.pairs.map(([k, v]) => `${k}=${v}`).join(' ')}`));
    try {
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      assert.ok(got.includes(' domain-add vm=tpl'), got.join('\n'));
      for (const m of ['admin.pool.List', 'admin.pool.Add', 'admin.vm.volume.Import', 'admin.vm.volume.ImportWithSize', 'admin.vm.volume.Export', 'admin.Events', 'admin.vm.List', 'admin.vm.Start'])
        assert.ok(Object.hasOwn(rt.methods, m), m);
      assert.equal(rt.methods['admin.vm.volume.Import']!.kind, 'streaming');
      assert.equal(rt.methods['admin.Events']!.kind, 'events');
    } finally {
      await rt.close();
    }
  });

  test('the state lock: a second runtime on the same base directory is refused until the first closes', async () => {
    const base = await fsx.tempDir('lock');
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    await assert.rejects(openRuntime({ baseDir: base, storageConf: null, nodeModules: [] }), (e: Error) => {
      assert.ok(e instanceof StateLockedError, e.message);
      assert.match(e.message, new RegExp(String(process.pid)));
      return true;
    });
    await rt.close();
    await rt.close(); // idempotent
    const rt2 = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [] });
    await rt2.close();
  });
});
