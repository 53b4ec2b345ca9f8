import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { linuxKernelDriver, LinuxKernelPool, type LinuxKernelVolume } from '../../../src/drivers/linux-kernel/index.js';
import { DriverRegistry } from '../../../src/registry/drivers.js';
import { QubesValueError, StoragePoolException } from '../../../src/storage/errors.js';
import type { Volume, VolumeSpec } from '../../../src/storage/volume.js';
import { makeTmp, removeTmp } from '../../registry/fixtures.js';
import { treeDigest } from '../../helpers/data.js';

let tmp: string;
let kernels: string;
let pool: LinuxKernelPool;
const domain = { name: 'work', dirPrefix: 'appvms' };

/** DIR/VERSION/FILE -> contents. */
const TREE: Record<string, Record<string, string>> = {
  '6.1.0-1.fc37': { vmlinuz: 'K'.repeat(100), initramfs: 'I'.repeat(50), 'modules.img': 'M'.repeat(30) },
  '5.15.0': { vmlinuz: 'k'.repeat(10), initramfs: 'i'.repeat(5) },
  incomplete: { vmlinuz: 'x' },
};

before(async () => {
  tmp = await makeTmp('linux-kernel');
  kernels = path.join(tmp, 'vm-kernels');
  for (const [version, files] of Object.entries(TREE))
    for (const [f, text] of Object.entries(files)) {
      await fs.mkdir(path.join(kernels, version), { recursive: true });
      await fs.writeFile(path.join(kernels, version, f), text);
    }
  // Not versions: a plain file and a name with a space.
  await fs.writeFile(path.join(kernels, 'README'), 'not a kernel');
  await fs.mkdir(path.join(kernels, 'bad name'));
  const reg = await DriverRegistry.open();
  pool = (await reg.createPool('linux-kernel', 'linux-kernel', { dir_path: kernels })) as LinuxKernelPool;
});
after(() => removeTmp(tmp));

function kernel(version: string, extra: Partial<VolumeSpec> = {}): LinuxKernelVolume {
  return pool.initVolume(domain, { name: 'kernel', vid: version, ...extra });
}

describe('linux-kernel pool', () => {
  it('is made through the registry with dir_path and declares itself read-only', () => {
    assert.ok(pool instanceof LinuxKernelPool);
    assert.equal(linuxKernelDriver.capabilities.writable, false);
    assert.equal(linuxKernelDriver.capabilities.maxRevisions, 0);
    assert.deepEqual(pool.config(), { name: 'linux-kernel', driver: 'linux-kernel', dir_path: kernels, revisions_to_keep: 0, ephemeral_volatile: false });
  });

  it('sets up on an existing directory and refuses a missing one', async () => {
    await pool.setup();
    const missing = new LinuxKernelPool('k2', { dir_path: path.join(tmp, 'nope') });
    await assert.rejects(missing.setup(), (e: unknown) => e instanceof StoragePoolException && /pool k2: kernels directory .*nope: ENOENT/.test(e.message));
  });

  it('lists the version directories with valid names', async () => {
    assert.deepEqual(await pool.listVolumes(), ['5.15.0', '6.1.0-1.fc37', 'incomplete']);
  });

  it('gets a volume for a present version, refuses an absent one', async () => {
    const v = await pool.getVolume('6.1.0-1.fc37');
    assert.equal(v.vid, '6.1.0-1.fc37');
    assert.equal(v.rw, false);
    assert.equal(v.size, 180);
    await assert.rejects(pool.getVolume('9.9.9'), /no kernel version '9.9.9'/);
  });

  it('reports the bytes of all kernels as usage', async () => {
    assert.equal(await pool.usage(), 180 + 15 + 1);
    assert.equal(await pool.size(), null);
  });
});

describe('linux-kernel volumes', () => {
  it('uses the version as vid and gives modules.img or the directory as path', async () => {
    assert.equal(kernel('6.1.0-1.fc37').vid, '6.1.0-1.fc37');
    assert.equal(await kernel('6.1.0-1.fc37').path(), path.join(kernels, '6.1.0-1.fc37', 'modules.img'));
    assert.equal(await kernel('5.15.0').path(), path.join(kernels, '5.15.0'));
    const bd = await kernel('6.1.0-1.fc37').blockDevice();
    assert.deepEqual(bd, { path: path.join(kernels, '6.1.0-1.fc37', 'modules.img'), name: 'kernel', devtype: 'disk', rw: false, domain: 'work' });
  });

  it('counts the bytes of its files as usage, with no revisions and never dirty', async () => {
    const v = kernel('6.1.0-1.fc37');
    assert.equal(await v.usage(), 180);
    assert.equal(await kernel('5.15.0').usage(), 15);
    assert.deepEqual(await v.revisions(), []);
    assert.equal(await v.isDirty(), false);
    assert.equal(await v.isOutdated(), false);
    assert.equal((await v.info()).revisions_to_keep, 0);
  });

  it('starts, stops and verifies a present version', async () => {
    const v = kernel('5.15.0');
    assert.equal(await v.verify(), true);
    await v.start();
    await v.stop();
  });

  const missing: { name: string; version: string; error: RegExp }[] = [
    { name: 'an absent version', version: '9.9.9', error: /kernel version '9.9.9' not found \(no directory .*9\.9\.9\)/ },
    { name: 'a version without initramfs', version: 'incomplete', error: /kernel version 'incomplete' is incomplete: initramfs missing/ },
  ];
  for (const c of missing) {
    it(`accepts ${c.name} at init, refuses it at start and verify`, async () => {
      const v = kernel(c.version);
      await v.create();
      await assert.rejects(v.start(), (e: unknown) => e instanceof StoragePoolException && c.error.test(e.message));
      await assert.rejects(v.verify(), (e: unknown) => e instanceof StoragePoolException && c.error.test(e.message));
    });
  }

  // '' is no bad version but the volume of a domain without a kernel (below).
  const badVersions = ['../etc', 'a/b', '..', '.', '.hidden', 'x'.repeat(65), 'sp ace', 'a..b'];
  for (const vid of badVersions)
    it(`refuses the version ${JSON.stringify(vid.length > 20 ? vid.slice(0, 20) + '...' : vid)}`, () => {
      assert.throws(() => kernel(vid), QubesValueError);
    });

  // rw, the kinds other than volatile and revisions are refused per the
  // declaration by the conformance suite (test/conformance/linux-kernel.test.ts).
  const badKinds: { name: string; spec: Partial<VolumeSpec>; error: RegExp }[] = [
    { name: 'ephemeral', spec: { ephemeral: true }, error: /ephemeral is only allowed for rw volumes/ },
  ];
  for (const c of badKinds)
    it(`refuses a ${c.name} kernel volume at init`, () => {
      assert.throws(() => kernel('5.15.0', c.spec), (e: unknown) => e instanceof QubesValueError && c.error.test(e.message));
    });

  it("the empty vid: a domain without a kernel (Qubes' kernel volume when its kernel is empty)", async () => {
    const v = kernel('');
    assert.equal(v.vid, '');
    assert.equal(await v.path(), '', 'no path');
    assert.equal(await v.usage(), 0);
    const info = await v.info();
    assert.deepEqual(
      { pool: info.pool, vid: info.vid, size: info.size, usage: info.usage, path: info.path, rw: info.rw },
      { pool: 'linux-kernel', vid: '', size: 0, usage: 0, path: '', rw: false },
    );
    assert.equal((await v.blockDevice()).path, '', 'nothing to attach');
    await v.create();
    assert.equal(await v.verify(), true, 'nothing to check');
    await v.start();
    await v.stop();
    await v.remove();
    await assert.rejects(v.export(), (e: unknown) => e instanceof StoragePoolException && /no kernel\) .*names no kernel/.test(e.message));
    // The kernels directory is untouched, and '' is no version to look up or list.
    await assert.rejects(pool.getVolume(''), QubesValueError);
    assert.ok(!(await pool.listVolumes()).includes(''));
  });

  it('refuses a volume without a version', () => {
    assert.throws(() => pool.initVolume(domain, { name: 'kernel' }), /needs a kernel version as its vid/);
  });

  // What would change data is refused by the base class (the driver declares writable: false), as
  // StoragePoolException like Qubes' LinuxModules; the property setters as QubesValueError, as Qubes'.
  const readOnly = (what: string): string => `volume 6.1.0-1.fc37 of pool linux-kernel: cannot ${what}: driver linux-kernel serves read-only volumes`;
  const refusals: { op: string; run: (v: LinuxKernelVolume, other: Volume) => Promise<unknown>; error: typeof QubesValueError; message: string }[] = [
    { op: 'resize', run: (v) => v.resize(1 << 20), error: StoragePoolException, message: readOnly('resize') },
    { op: 'forced shrink', run: (v) => v.resize(0, { force: true }), error: StoragePoolException, message: readOnly('resize') },
    { op: 'revert', run: (v) => v.revert(), error: StoragePoolException, message: readOnly('revert') },
    { op: 'revert to a named revision', run: (v) => v.revert('1'), error: StoragePoolException, message: readOnly('revert') },
    { op: 'importData', run: (v) => v.importData(10), error: StoragePoolException, message: readOnly('import data') },
    { op: 'importDataEnd', run: (v) => v.importDataEnd(true), error: StoragePoolException, message: readOnly('import data') },
    { op: 'importVolume', run: (v, other) => v.importVolume(other), error: StoragePoolException, message: readOnly('import a volume') },
    {
      op: 'export',
      run: (v) => v.export(),
      error: StoragePoolException,
      message: `volume 6.1.0-1.fc37 of pool linux-kernel: cannot export: kernel volumes are read-only (kernel 6.1.0-1.fc37 comes from ${path.join('KERNELS', '6.1.0-1.fc37')})`,
    },
    { op: 'setRw(true)', run: async (v) => v.setRw(true), error: QubesValueError, message: readOnly('be writable') },
    {
      op: 'setRevisionsToKeep(1)',
      run: async (v) => v.setRevisionsToKeep(1),
      error: QubesValueError,
      message: 'volume 6.1.0-1.fc37 of pool linux-kernel: revisions_to_keep: 1 is more than driver linux-kernel keeps (at most 0 revisions)',
    },
    {
      op: 'setEphemeral(true)',
      run: async (v) => v.setEphemeral(true),
      error: QubesValueError,
      message: 'volume 6.1.0-1.fc37 of pool linux-kernel: ephemeral is only allowed for rw volumes with neither snap_on_start nor save_on_stop',
    },
  ];
  for (const c of refusals)
    it(`refuses ${c.op} and leaves the kernels untouched`, async () => {
      const before = await treeDigest(kernels);
      const v = kernel('6.1.0-1.fc37');
      await assert.rejects(c.run(v, kernel('5.15.0')), (e: unknown) => {
        assert.ok(e instanceof c.error, String(e));
        assert.equal(e.message, c.message.replace('KERNELS', kernels));
        return true;
      });
      assert.equal(await treeDigest(kernels), before);
      assert.equal(v.rw, false);
      assert.equal(v.revisions_to_keep, 0);
      assert.equal(v.ephemeral, false);
    });

  it('creates and removes nothing: the kernel is the system’s', async () => {
    const before = await treeDigest(kernels);
    const v = kernel('6.1.0-1.fc37');
    await v.create();
    await v.remove();
    assert.equal(await treeDigest(kernels), before);
    v.setRw(false);
    v.setRevisionsToKeep(0);
  });
});
