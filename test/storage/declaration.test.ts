// The driver's declaration (capabilities) is the contract: the storage base classes refuse, once and
// before the driver is called, what it rules out. One table of expectations, derived from each driver's
// declared capabilities, run against real pools: file and file-reflink on the test filesystems,
// linux-kernel on a directory of kernels, the example out-of-tree driver declared with at most one
// revision (a third-party driver that does not pass its declaration to the Pool constructor: the
// registry binds it), and a callback pool in front of
// linux-kernel (it answers with its backend's declaration). Every refusal has its error class and
// message, and leaves nothing changed: no file made or touched, no property or option changed.
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { linuxKernelDriver } from '../../src/drivers/linux-kernel/index.js';
import { DriverRegistry } from '../../src/registry/drivers.js';
import type { DriverCapabilities } from '../../src/storage/driver.js';
import { QubesValueError, StoragePoolException } from '../../src/storage/errors.js';
import type { Pool } from '../../src/storage/pool.js';
import { volumeKind, type DomainRef, type Volume, type VolumeKind, type VolumeSpec } from '../../src/storage/volume.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { makeTmp, removeTmp } from '../registry/fixtures.js';
import { dirDriver } from '../../examples/dir-driver/index.js';
import { treeDigest } from '../helpers/data.js';

/** The example driver, declared here with at most one revision so that the bound is exercised for a third party. */
const oneRevisionDir = { ...dirDriver, capabilities: { ...dirDriver.capabilities, maxRevisions: 1 } };

const KINDS: readonly VolumeKind[] = ['volatile', 'snapshot', 'origin', 'origin_snapshot'];
const FLAGS: Record<VolumeKind, { snap_on_start: boolean; save_on_stop: boolean }> = {
  volatile: { snap_on_start: false, save_on_stop: false },
  snapshot: { snap_on_start: true, save_on_stop: false },
  origin: { snap_on_start: false, save_on_stop: true },
  origin_snapshot: { snap_on_start: true, save_on_stop: true },
};
const work: DomainRef = { name: 'work', dirPrefix: 'appvms' };
const tpl: DomainRef = { name: 'tpl', dirPrefix: 'vm-templates' };
const KERNEL = '6.1.0-1.fc37';

async function writeKernels(dir: string): Promise<void> {
  await fs.mkdir(path.join(dir, KERNEL), { recursive: true });
  for (const f of ['vmlinuz', 'initramfs', 'modules.img']) await fs.writeFile(path.join(dir, KERNEL, f), f);
}

let registry: DriverRegistry;
let tmp: string;
let n = 0;
before(async () => {
  registry = await DriverRegistry.open({ drivers: [oneRevisionDir] });
  tmp = await makeTmp('declaration');
});
after(() => removeTmp(tmp));

/** A pool under test: how it is made, and what directory shows whether anything changed. */
interface Subject {
  readonly driver: string;
  /** The driver whose declaration the pool answers to (the backend's for a callback pool). */
  readonly declaredBy: string;
  make(): Promise<{ pool: Pool; dir: string; options: Record<string, string> }>;
}

/** A volume spec of `kind` for the pool (the kernel pool takes the version as vid). */
function specOf(s: Subject, kind: VolumeKind, source: Volume | null, extra: Partial<VolumeSpec> = {}): VolumeSpec {
  const caps = registry.get(s.declaredBy).capabilities;
  const spec: VolumeSpec = { name: 'private', rw: caps.writable, size: 1 << 20, ...FLAGS[kind], source: FLAGS[kind].snap_on_start ? source : null, ...extra };
  if (s.declaredBy === 'linux-kernel') return { ...spec, name: 'kernel', vid: KERNEL };
  return spec;
}

/** The source for snapshot kinds: an origin volume of the template, when the pool serves origins. */
function sourceIn(s: Subject, pool: Pool, caps: DriverCapabilities): Volume | null {
  if (!caps.volumeKinds.includes('origin')) return null;
  return pool.initVolume(tpl, { ...specOf(s, 'origin', null), name: 'root' });
}

function declarationSuite(title: string, s: Subject): void {
  let pool: Pool;
  let dir: string;
  let options: Record<string, string>;
  let caps: DriverCapabilities;
  before(async () => {
    ({ pool, dir, options } = await s.make());
    caps = registry.get(s.declaredBy).capabilities;
  });

  /** Runs `fn`, which must throw `Err` with a message matching `message`, and proves nothing changed on disk. */
  async function refused(fn: () => unknown, Err: typeof QubesValueError, message: RegExp): Promise<void> {
    const before = await treeDigest(dir);
    await assert.rejects(
      (async () => fn())(),
      (e: unknown) => {
        assert.ok(e instanceof Err, `${title}: expected ${Err.name}, got ${String(e)}`);
        assert.match(e.message, message);
        return true;
      },
    );
    assert.equal(await treeDigest(dir), before, `${title}: nothing on disk changed`);
  }

  it(`knows its driver's declaration (${s.declaredBy})`, () => {
    assert.deepEqual(pool.capabilities, caps);
    assert.equal(pool.capabilities.maxRevisions, caps.maxRevisions);
  });

  for (const kind of KINDS)
    it(`${kind} volumes: served only when declared`, async () => {
      const source = sourceIn(s, pool, caps);
      const make = (): Volume => pool.initVolume(work, specOf(s, kind, source));
      if (caps.volumeKinds.includes(kind)) {
        assert.equal(make().kind, kind);
        return;
      }
      const f = FLAGS[kind];
      await refused(
        make,
        QubesValueError,
        new RegExp(
          `: driver ${s.declaredBy} does not serve ${kind} volumes \\(snap_on_start=${f.snap_on_start ? 'True' : 'False'}, ` +
            `save_on_stop=${f.save_on_stop ? 'True' : 'False'}\\); it serves ${caps.volumeKinds.join(', ')}$`,
        ),
      );
    });

  /** A volume of a kind the pool serves that may keep revisions (an origin, else a volatile one). */
  const keeper = (extra: Partial<VolumeSpec> = {}): Volume =>
    pool.initVolume(work, specOf(s, caps.volumeKinds.includes('origin') ? 'origin' : 'volatile', null, extra));
  const most = (): string => `at most ${caps.maxRevisions} revision${caps.maxRevisions === 1 ? '' : 's'}`;

  it('revisions_to_keep of a volume: up to maxRevisions, more refused when made and when set', async () => {
    if (!Number.isFinite(caps.maxRevisions)) {
      assert.equal(keeper({ revisions_to_keep: 1000 }).revisions_to_keep, 1000);
      const v = keeper();
      v.setRevisionsToKeep(1000);
      assert.equal(v.revisions_to_keep, 1000);
      return;
    }
    const max = caps.maxRevisions;
    assert.equal(keeper({ revisions_to_keep: max }).revisions_to_keep, max);
    const over = max + 1;
    const message = new RegExp(`: revisions_to_keep: ${over} is more than driver ${s.declaredBy} keeps \\(${most()}\\)$`);
    await refused(() => keeper({ revisions_to_keep: over }), QubesValueError, message);
    const v = keeper({ revisions_to_keep: max });
    await refused(() => v.setRevisionsToKeep(over), QubesValueError, message);
    assert.equal(v.revisions_to_keep, max, 'the volume keeps its value');
    assert.equal(v.config().revisions_to_keep, max);
  });

  it('revisions_to_keep of the pool: up to maxRevisions, more refused when made and when set', async () => {
    const declared = registry.get(s.driver).options.some((o) => o.name === 'revisions_to_keep');
    const before = pool.revisions_to_keep;
    assert.ok(before <= caps.maxRevisions, 'the default follows the declaration');
    if (!Number.isFinite(caps.maxRevisions)) {
      if (declared) assert.equal((await registry.createPool(s.driver, `big${++n}`, { ...options, revisions_to_keep: '1000' })).revisions_to_keep, 1000);
      return;
    }
    const over = caps.maxRevisions + 1;
    await refused(() => pool.setOption('revisions_to_keep', over), QubesValueError, new RegExp(`option revisions_to_keep: ${over} is more than driver ${s.declaredBy} keeps \\(${most()}\\)$`));
    assert.equal(pool.revisions_to_keep, before, 'the pool keeps its value');
    assert.equal(pool.config()['revisions_to_keep'] ?? before, before);
    // linux-kernel has no such option (refused as unknown, whatever its value); a callback pool passes it to its backend.
    if (!declared || s.driver !== s.declaredBy) return;
    const name = `over${++n}`;
    await refused(
      () => registry.createPool(s.driver, name, { ...options, revisions_to_keep: String(over) }),
      QubesValueError,
      new RegExp(`^pool ${name}: option revisions_to_keep: must be at most ${caps.maxRevisions}, got ${over}$`),
    );
  });

  it('writable: rw volumes only when declared; a read-only driver refuses every change of data', async () => {
    if (caps.writable) {
      const v = keeper();
      assert.equal(v.rw, true);
      v.setRw(false);
      v.setRw(true);
      assert.equal(v.rw, true);
      return;
    }
    const message = (what: string): RegExp => new RegExp(`: cannot ${what}: driver ${s.declaredBy} serves read-only volumes$`);
    await refused(() => pool.initVolume(work, specOf(s, 'volatile', null, { rw: true })), QubesValueError, message('be writable'));
    const v = keeper();
    const other = keeper();
    await refused(() => v.setRw(true), QubesValueError, message('be writable'));
    assert.equal(v.rw, false);
    await refused(() => v.resize(2 << 20), StoragePoolException, message('resize'));
    await refused(() => v.resize(0, { force: true }), StoragePoolException, message('resize'));
    await refused(() => v.revert(), StoragePoolException, message('revert'));
    await refused(() => v.importData(4096), StoragePoolException, message('import data'));
    await refused(() => v.importVolume(other), StoragePoolException, message('import a volume'));
    assert.equal(v.size, 1 << 20, 'the size is unchanged');
    assert.equal(v.rw, false);
  });
}

for (const driver of ['file-reflink', 'file'])
  describeEachFs(`declaration: ${driver}`, (tfs, ctx) => {
    declarationSuite(driver, {
      driver,
      declaredBy: driver,
      async make() {
        const dir = await ctx.tempDir(driver);
        const options: Record<string, string> = { dir_path: dir };
        if (driver === 'file-reflink') options['setup_check'] = tfs.reflink ? 'True' : 'False';
        const pool = await registry.createPool(driver, `p${++n}`, options);
        await pool.setup();
        return { pool, dir, options };
      },
    });
  });

describe('declaration: linux-kernel', () => {
  declarationSuite('linux-kernel', {
    driver: 'linux-kernel',
    declaredBy: 'linux-kernel',
    async make() {
      const dir = path.join(tmp, 'kernels');
      await writeKernels(dir);
      const options = { dir_path: dir };
      const pool = await registry.createPool('linux-kernel', `k${++n}`, options);
      await pool.setup();
      return { pool, dir, options };
    },
  });

  it('a built-in pool made without the registry knows its declaration too', () => {
    const pool = linuxKernelDriver.createPool('direct', { dir_path: path.join(tmp, 'kernels') });
    assert.equal(pool.capabilities, linuxKernelDriver.capabilities);
    assert.throws(() => pool.initVolume(work, { name: 'kernel', vid: KERNEL, rw: true }), /cannot be writable: driver linux-kernel serves read-only volumes/);
  });
});

describe('declaration: dir, the example driver (a third-party driver; the registry binds its declaration)', () => {
  declarationSuite('dir', {
    driver: 'dir',
    declaredBy: 'dir',
    async make() {
      const dir = path.join(tmp, 'dir');
      const options = { dir_path: dir };
      const pool = await registry.createPool('dir', `t${++n}`, options);
      await pool.setup();
      return { pool, dir, options };
    },
  });
});

describe('declaration: callback in front of linux-kernel (the backend declares)', () => {
  declarationSuite('callback', {
    driver: 'callback',
    declaredBy: 'linux-kernel',
    async make() {
      const dir = path.join(tmp, 'cb-kernels');
      await writeKernels(dir);
      const conf = path.join(tmp, 'callback.json');
      await fs.writeFile(conf, JSON.stringify({ k: { backend: { driver: 'linux-kernel', options: { dir_path: dir } } } }));
      const options = { conf_id: 'k', conf_path: conf };
      const pool = await registry.createPool('callback', `cb${++n}`, options);
      await pool.setup();
      return { pool, dir, options };
    },
  });
});

describe('declaration: the kinds follow from the two flags', () => {
  it('volumeKind', () => {
    for (const kind of KINDS) assert.equal(volumeKind(FLAGS[kind].snap_on_start, FLAGS[kind].save_on_stop), kind);
  });
});
