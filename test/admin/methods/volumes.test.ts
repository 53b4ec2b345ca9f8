// admin.vm.volume.* over the real socket: exact replies for a known state,
// state changes saved and announced, every documented error by class name.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { QubesApp } from '../../../src/domain/app.js';
import { describeEachFs } from '../../helpers/filesystems.js';
import { MiB, pattern, readAt, sha256, writeAt } from '../../helpers/data.js';
import { failsWith, ok, PRIVATE_SIZE, raw, ROOT_SIZE, startRig, type Rig } from './helpers.js';

/** Starts `name`, writes `data` at `offset` of its volume `vol` (the running copy), shuts it down (commit). */
async function writeThroughRun(app: QubesApp, name: string, vol: string, offset: number, data: Buffer): Promise<void> {
  await app.start(name);
  await writeAt(await app.domain(name).storage.get(vol).path(), offset, data);
  await app.shutdown(name);
}

describeEachFs('admin.vm.volume.List with a kernel volume', (tfs, fsx) => {
  let rig: Rig;
  before(async () => {
    const dir = await fsx.tempDir('volume-list');
    rig = await startRig(tfs, dir);
    const app = rig.rt.app;
    const kernelDir = path.join(dir, 'vm-kernels');
    await fs.mkdir(path.join(kernelDir, '6.6.48'), { recursive: true });
    await fs.writeFile(path.join(kernelDir, '6.6.48', 'vmlinuz'), 'kernel');
    await app.addPool('linux-kernel', 'linux-kernel', { dir_path: kernelDir });
    await app.setProperty(app.globals, 'default_pool_kernel', 'linux-kernel');
    await app.setProperty(app.globals, 'default_kernel', '6.6.48');
    await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await app.createDomain({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl' });
  });
  after(() => rig?.stop());

  test('answers root, private, volatile, kernel: the volume-config order, not sorted', async () => {
    for (const name of ['tpl', 'work'])
      assert.equal(
        (await raw(rig.socketPath, 'admin.vm.volume.List', name)).toString('latin1'),
        '0\0root\nprivate\nvolatile\nkernel\n',
        name,
      );
  });
});

describeEachFs('admin.vm.volume methods', (tfs, fsx) => {
  let rig: Rig;
  let S: string;
  let clock = 1_000_000;
  before(async () => {
    rig = await startRig(tfs, await fsx.tempDir('volumes'), {
      methods: { volumes: { now: () => clock, cloneTokenTtlMs: 60_000 } },
    });
    S = rig.socketPath;
    await rig.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rig.rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl' });
  });
  after(() => rig?.stop());

  const committed = (vid: string) => path.join(rig.poolDir, `${vid}.img`);

  test('List: volume names in config order, as Qubes; dom0 has none', async () => {
    assert.equal(await ok(S, 'admin.vm.volume.List', 'work'), 'root\nprivate\nvolatile\n');
    assert.equal(await ok(S, 'admin.vm.volume.List', 'tpl'), 'root\nprivate\nvolatile\n');
    assert.equal(await ok(S, 'admin.vm.volume.List', 'dom0'), '');
  });

  test('Info: exactly the spec lines, in order, for each kind', async () => {
    const app = rig.rt.app;
    const usage = (d: string, v: string) => app.domain(d).storage.get(v).usage();
    assert.equal(
      await ok(S, 'admin.vm.volume.Info', 'work', 'private'),
      `pool=default\nvid=appvms/work/private\nsize=${PRIVATE_SIZE}\nusage=${await usage('work', 'private')}\nrw=True\nsource=\n` +
        `path=${rig.poolDir}/appvms/work/private.img\nsave_on_stop=True\nsnap_on_start=False\nrevisions_to_keep=1\nephemeral=False\nis_outdated=False\n`,
    );
    assert.equal(
      await ok(S, 'admin.vm.volume.Info', 'work', 'root'),
      `pool=default\nvid=appvms/work/root\nsize=${ROOT_SIZE}\nusage=${await usage('work', 'root')}\nrw=True\nsource=vm-templates/tpl/root\n` +
        `path=${rig.poolDir}/appvms/work/root.img\nsave_on_stop=False\nsnap_on_start=True\nrevisions_to_keep=1\nephemeral=False\nis_outdated=False\n`,
    );
    const vol = app.domain('work').storage.get('volatile');
    assert.equal(
      await ok(S, 'admin.vm.volume.Info', 'work', 'volatile'),
      `pool=default\nvid=appvms/work/volatile\nsize=${ROOT_SIZE}\nusage=${await vol.usage()}\nrw=True\nsource=\n` +
        `path=${await vol.path()}\nsave_on_stop=False\nsnap_on_start=False\nrevisions_to_keep=1\nephemeral=False\nis_outdated=False\n`,
    );
    // Running: the path is the working copy; a template commit makes the running snapshot outdated.
    await app.start('work');
    try {
      assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'private'), /\npath=.*\/appvms\/work\/private-dirty\.img\n/);
      assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'root'), /\nis_outdated=False\n$/);
      await app.start('tpl');
      await app.shutdown('tpl');
      assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'root'), /\nis_outdated=True\n$/);
    } finally {
      await app.shutdown('work');
    }
  });

  test('argument errors: unknown volume, no argument, unknown domain, payload where none is taken', async () => {
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.Info', 'work', 'nosuch'], /nosuch/);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Info', 'work']);
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.Info', 'dom0', 'private']);
    await failsWith(S, 'QubesVMNotFoundError', ['admin.vm.volume.Info', 'ghost', 'private']);
    await failsWith(S, 'QubesVMNotFoundError', ['admin.vm.volume.List', 'ghost']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.List', 'work', 'private']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Info', 'work', 'private', 'x']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.ListSnapshots', 'work', 'private', 'x']);
  });

  test('ListSnapshots oldest first; Revert to one, by default the newest; errors', async () => {
    const app = rig.rt.app;
    await rig.rt.app.createDomain({ klass: 'AppVM', name: 'rev', label: 'red', template: 'tpl' });
    await ok(S, 'admin.vm.volume.Set.revisions_to_keep', 'rev', 'private', '3');
    assert.equal(await ok(S, 'admin.vm.volume.ListSnapshots', 'rev', 'private'), '');
    await writeThroughRun(app, 'rev', 'private', 0, Buffer.from('one'));
    await writeThroughRun(app, 'rev', 'private', 0, Buffer.from('two'));
    await writeThroughRun(app, 'rev', 'private', 0, Buffer.from('333'));
    const revs = (await app.domain('rev').storage.get('private').revisions()).map((r) => r.id);
    assert.equal(revs.length, 3);
    assert.equal(await ok(S, 'admin.vm.volume.ListSnapshots', 'rev', 'private'), revs.map((r) => `${r}\n`).join(''));
    assert.deepEqual(revs, [...revs].sort((a, b) => Number(a) - Number(b)), 'oldest first');
    // The same revisions with their commit times (ISO-8601 UTC, in order).
    const times = (await ok(S, 'admin.vm.volume.ListSnapshotTimes', 'rev', 'private')).split('\n').filter(Boolean).map((l) => l.split(' '));
    assert.deepEqual(times.map(([id]) => id), revs);
    for (const [, t] of times) assert.match(t!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    assert.deepEqual(times.map(([, t]) => t), times.map(([, t]) => t).sort(), 'times in order');
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.ListSnapshotTimes', 'rev', 'private', 'x']);
    const img = committed('appvms/rev/private');
    // revs: [empty, one, two]; current: 333.
    assert.equal(await ok(S, 'admin.vm.volume.Revert', 'rev', 'private', revs[1]!), '');
    assert.equal((await readAt(img, 0, 3)).toString(), 'one');
    const ev = rig.events.filter((e) => e.subject === 'rev' && e.event === 'volume-reverted').at(-1);
    assert.deepEqual(ev?.pairs, [['volume', 'private'], ['pool', 'default'], ['vid', 'appvms/rev/private'], ['revision', revs[1]!]]);
    // Default: the newest revision, which is now the '333' the revert kept.
    assert.equal(await ok(S, 'admin.vm.volume.Revert', 'rev', 'private'), '');
    assert.equal((await readAt(img, 0, 3)).toString(), '333');

    await failsWith(S, 'QubesVolumeRevisionNotFoundError', ['admin.vm.volume.Revert', 'rev', 'private', '999'], /999/);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Revert', 'rev', 'private', '../x']);
    await failsWith(S, 'QubesVolumeRevisionNotFoundError', ['admin.vm.volume.Revert', 'rev', 'volatile', '1']);
    await app.start('rev');
    try {
      const newest = (await app.domain('rev').storage.get('private').revisions()).at(-1)!.id;
      await failsWith(S, 'QubesVMNotHaltedError', ['admin.vm.volume.Revert', 'rev', 'private', newest]);
    } finally {
      await app.shutdown('rev');
    }
  });

  test('Resize: grows, saved and announced; bad numbers', async () => {
    const size = 12 * MiB;
    assert.equal(await ok(S, 'admin.vm.volume.Resize', 'work', 'private', String(size)), '');
    assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'private'), new RegExp(`^pool=default\nvid=appvms/work/private\nsize=${size}\n`));
    assert.equal((await fs.stat(committed('appvms/work/private'))).size, size);
    assert.match(await fs.readFile(rig.rt.app.stateFile, 'utf8'), new RegExp(`name="private"[^>]*size="${size}"|size="${size}"[^>]*name="private"`));
    const ev = rig.events.filter((e) => e.subject === 'work' && e.event === 'volume-resized').at(-1);
    assert.deepEqual(ev?.pairs, [['volume', 'private'], ['pool', 'default'], ['vid', 'appvms/work/private'], ['size', String(size)]]);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Resize', 'work', 'private', '-5']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Resize', 'work', 'private', '1e9']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Resize', 'work', 'private', '012']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Resize', 'work', 'private', '']);
    assert.equal(rig.rt.app.domain('work').storage.get('private').size, size);
  });

  // The stock client's side of `qvm-volume resize -f VM:VOL SIZE`: it reads the size (Info) for its
  // guard, then sends Resize with the smaller size as decimal digits; there is no force flag on the wire.
  // `qvm-volume revert VM:VOL` lists the revisions (ListSnapshots) and sends Revert with the newest.
  test('Resize to a smaller size (qvm-volume resize -f): cut, saved, announced; the old data and size are a revision; Revert undoes it; refused while running', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'shrinky', label: 'red', template: 'tpl' });
    const img = committed('appvms/shrinky/private');
    const head = pattern(4096, 11);
    const tail = pattern(4096, 12);
    await writeThroughRun(app, 'shrinky', 'private', 0, head);
    await writeThroughRun(app, 'shrinky', 'private', PRIVATE_SIZE - tail.length, tail);
    const sizeOf = async (): Promise<number> =>
      Number(/^size=(\d+)$/m.exec(await ok(S, 'admin.vm.volume.Info', 'shrinky', 'private'))![1]);
    assert.equal(await sizeOf(), PRIVATE_SIZE);
    const revsBefore = (await ok(S, 'admin.vm.volume.ListSnapshots', 'shrinky', 'private')).split('\n').filter(Boolean);
    const half = PRIVATE_SIZE / 2;

    assert.equal(await ok(S, 'admin.vm.volume.Resize', 'shrinky', 'private', String(half)), '');
    assert.equal(await sizeOf(), half);
    assert.equal((await fs.stat(img)).size, half, 'the image is cut');
    assert.deepEqual(await readAt(img, 0, head.length), head, 'the data before the new end is kept');
    assert.match(await fs.readFile(rig.rt.app.stateFile, 'utf8'), new RegExp(`name="private"[^>]*size="${half}"|size="${half}"[^>]*name="private"`));
    const ev = rig.events.filter((e) => e.subject === 'shrinky' && e.event === 'volume-resized').at(-1);
    assert.deepEqual(ev?.pairs, [['volume', 'private'], ['pool', 'default'], ['vid', 'appvms/shrinky/private'], ['size', String(half)]]);
    const revs = (await ok(S, 'admin.vm.volume.ListSnapshots', 'shrinky', 'private')).split('\n').filter(Boolean);
    assert.equal(revs.length, 1, 'revisions_to_keep 1: the newest revision is the data before the cut');
    assert.ok(!revsBefore.includes(revs[0]!), 'a new revision');

    // Back, with the cut data.
    assert.equal(await ok(S, 'admin.vm.volume.Revert', 'shrinky', 'private', revs.at(-1)!), '');
    assert.equal(await sizeOf(), PRIVATE_SIZE);
    assert.equal((await fs.stat(img)).size, PRIVATE_SIZE);
    assert.deepEqual(await readAt(img, PRIVATE_SIZE - tail.length, tail.length), tail, 'the cut data is back');
    assert.deepEqual(await readAt(img, 0, head.length), head);

    // While the domain runs its disk is not cut under it.
    await app.start('shrinky');
    try {
      await failsWith(S, 'StoragePoolException', ['admin.vm.volume.Resize', 'shrinky', 'private', String(half)], /cannot shrink .* in use/);
      assert.equal(await sizeOf(), PRIVATE_SIZE);
    } finally {
      await app.shutdown('shrinky');
    }
    assert.equal((await fs.stat(img)).size, PRIVATE_SIZE);
    // A snapshot's data is its source's.
    await failsWith(S, 'StoragePoolException', ['admin.vm.volume.Resize', 'shrinky', 'root', '4096'], /shrink the source/);
    await app.removeDomain('shrinky');
  });

  test('Set.revisions_to_keep / rw / ephemeral: saved; rules of the contract; rw needs a halted domain', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'props', label: 'green', template: 'tpl' });
    assert.equal(await ok(S, 'admin.vm.volume.Set.revisions_to_keep', 'props', 'private', '2'), '');
    assert.match(await ok(S, 'admin.vm.volume.Info', 'props', 'private'), /\nrevisions_to_keep=2\n/);
    assert.equal(await ok(S, 'admin.vm.volume.Set.revisions_to_keep', 'props', 'private', '-1'), '');
    assert.match(await ok(S, 'admin.vm.volume.Info', 'props', 'private'), /\nrevisions_to_keep=-1\n/);
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Set.revisions_to_keep', 'props', 'root', '-1'], /revisions_to_keep=-1/);
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Set.revisions_to_keep', 'props', 'private', '-2']);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Set.revisions_to_keep', 'props', 'private', 'two']);

    // (True is refused where the host cannot encrypt, test/storage/ephemeral.test.ts; accepted in the test VM.)
    assert.equal(await ok(S, 'admin.vm.volume.Set.ephemeral', 'props', 'volatile', 'False'), '');
    assert.match(await ok(S, 'admin.vm.volume.Info', 'props', 'volatile'), /\nephemeral=False\n/);
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Set.ephemeral', 'props', 'private', 'True'], /ephemeral/);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Set.ephemeral', 'props', 'volatile', 'yes']);

    assert.equal(await ok(S, 'admin.vm.volume.Set.rw', 'props', 'private', 'False'), '');
    assert.match(await ok(S, 'admin.vm.volume.Info', 'props', 'private'), /\nrw=False\n/);
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Resize', 'props', 'private', String(64 * MiB)], /read-only/);

    // All three are in the state file: a fresh load sees them.
    const xml = await fs.readFile(app.stateFile, 'utf8');
    const line = (name: string) => xml.split('\n').filter((l) => l.includes('volume-config') || l.includes('<volume ')).find((l) => l.includes(`vid="appvms/props/${name}"`)) ?? '';
    assert.match(line('private'), /revisions_to_keep="-1"/);
    assert.doesNotMatch(line('private'), /\brw=/, 'false booleans are left out, as lxml writes them');
    assert.match(line('volatile'), /ephemeral="False"/, 'an explicit False is kept, as Qubes keeps it');
    assert.match(line('root'), /\brw="True"/);

    await app.start('props');
    try {
      await failsWith(S, 'QubesVMNotHaltedError', ['admin.vm.volume.Set.rw', 'props', 'private', 'True']);
      // revisions_to_keep and ephemeral may change while running.
      assert.equal(await ok(S, 'admin.vm.volume.Set.revisions_to_keep', 'props', 'private', '1'), '');
    } finally {
      await app.shutdown('props');
    }
    assert.equal(await ok(S, 'admin.vm.volume.Set.rw', 'props', 'private', 'True'), '');
    const ev = rig.events.filter((e) => e.subject === 'props' && e.event === 'volume-set:rw');
    assert.deepEqual(ev.map((e) => e.pairs), [[['volume', 'private'], ['value', 'False']], [['volume', 'private'], ['value', 'True']]]);
  });

  test('Clear: zeros of the current size, still sparse; halted only', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'clr', label: 'red', template: 'tpl' });
    await writeThroughRun(app, 'clr', 'private', MiB, pattern(MiB, 7));
    const img = committed('appvms/clr/private');
    assert.notEqual(await sha256(img), await sha256Zero(PRIVATE_SIZE));
    await app.start('clr');
    await failsWith(S, 'QubesVMNotHaltedError', ['admin.vm.volume.Clear', 'clr', 'private']);
    await app.shutdown('clr');
    assert.equal(await ok(S, 'admin.vm.volume.Clear', 'clr', 'private'), '');
    assert.equal((await fs.stat(img)).size, PRIVATE_SIZE);
    assert.equal(await sha256(img), await sha256Zero(PRIVATE_SIZE));
    assert.ok((await fs.stat(img)).blocks * 512 < 64 * 1024, 'a cleared image is sparse');
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Clear', 'clr', 'volatile'], /not kept/);
    await failsWith(S, 'ProtocolError', ['admin.vm.volume.Clear', 'clr', 'private', 'x']);
  });

  test('CloneFrom / CloneTo: a 32-character token, used up by any use, expiring', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'csrc', label: 'red', template: 'tpl' });
    await app.createDomain({ klass: 'AppVM', name: 'cdst', label: 'red', template: 'tpl' });
    await writeThroughRun(app, 'csrc', 'private', 0, pattern(2 * MiB, 11));
    await ok(S, 'admin.vm.volume.Resize', 'csrc', 'private', String(6 * MiB));

    const token = await ok(S, 'admin.vm.volume.CloneFrom', 'csrc', 'private');
    assert.match(token, /^[0-9a-f]{32}$/);
    const other = await ok(S, 'admin.vm.volume.CloneFrom', 'csrc', 'private');
    assert.notEqual(token, other, 'a fresh token each time');
    assert.equal(await ok(S, 'admin.vm.volume.CloneTo', 'cdst', 'private', token), '');
    assert.equal(await sha256(committed('appvms/cdst/private')), await sha256(committed('appvms/csrc/private')));
    assert.match(await ok(S, 'admin.vm.volume.Info', 'cdst', 'private'), new RegExp(`\nsize=${6 * MiB}\n`));
    const ev = rig.events.filter((e) => e.subject === 'cdst' && e.event === 'volume-cloned').at(-1);
    assert.deepEqual(ev?.pairs, [['volume', 'private'], ['pool', 'default'], ['vid', 'appvms/cdst/private'], ['size', String(6 * MiB)], ['source', 'csrc:private']]);
    // One use only.
    await failsWith(S, 'QubesVolumeCopyTokenNotFoundError', ['admin.vm.volume.CloneTo', 'cdst', 'private', token], /token/);

    // Used up also by a failed use.
    await app.start('cdst');
    await failsWith(S, 'QubesVMNotHaltedError', ['admin.vm.volume.CloneTo', 'cdst', 'private', other]);
    await app.shutdown('cdst');
    await failsWith(S, 'QubesVolumeCopyTokenNotFoundError', ['admin.vm.volume.CloneTo', 'cdst', 'private', other]);

    // Expired.
    const late = await ok(S, 'admin.vm.volume.CloneFrom', 'csrc', 'private');
    clock += 60_001;
    await failsWith(S, 'QubesVolumeCopyTokenNotFoundError', ['admin.vm.volume.CloneTo', 'cdst', 'private', late], /expired/);

    await failsWith(S, 'QubesVolumeCopyTokenNotFoundError', ['admin.vm.volume.CloneTo', 'cdst', 'private', 'not-a-token']);
    await failsWith(S, 'QubesVolumeCopyTokenNotFoundError', ['admin.vm.volume.CloneTo', 'cdst', 'private', '0'.repeat(32)]);
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.CloneFrom', 'csrc', 'nosuch']);
  });

  test('Export / ExportEnd: a path to the committed data, released once', async () => {
    const app = rig.rt.app;
    await app.createDomain({ klass: 'AppVM', name: 'exp', label: 'red', template: 'tpl' });
    await writeThroughRun(app, 'exp', 'private', 0, pattern(MiB, 3));
    const p = await ok(S, 'admin.vm.volume.Export', 'exp', 'private');
    assert.ok(path.isAbsolute(p), p);
    assert.equal(await sha256(p), await sha256(committed('appvms/exp/private')));
    // While running, the export is still the data from before the start.
    await app.start('exp');
    await writeAt(await app.domain('exp').storage.get('private').path(), 0, Buffer.from('new'));
    const p2 = await ok(S, 'admin.vm.volume.Export', 'exp', 'private');
    assert.deepEqual(await readAt(p2, 0, 3), pattern(3, 3));
    await app.shutdown('exp');
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.ExportEnd', 'exp', 'root', p]);
    assert.equal(await ok(S, 'admin.vm.volume.ExportEnd', 'exp', 'private', p), '');
    assert.equal(await ok(S, 'admin.vm.volume.ExportEnd', 'exp', 'private', p2), '');
    await assert.rejects(fs.stat(p), { code: 'ENOENT' });
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.ExportEnd', 'exp', 'private', p]);
    await failsWith(S, 'PermissionDenied', ['admin.vm.volume.ExportEnd', 'exp', 'private', committed('appvms/exp/private')]);
    assert.ok((await fs.stat(committed('appvms/exp/private'))).isFile(), 'the image itself is untouched');
  });
});

async function sha256Zero(size: number): Promise<string> {
  const { createHash } = await import('node:crypto');
  const h = createHash('sha256');
  const z = Buffer.alloc(MiB);
  for (let left = size; left > 0; left -= MiB) h.update(left >= MiB ? z : z.subarray(0, left));
  return h.digest('hex');
}
