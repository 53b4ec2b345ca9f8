// A read-only and a failing filesystem, for real, on a loop-mounted ext4 made
// and removed by this test: after `mount -o remount,ro` every write path of
// the file-based drivers answers a StoragePoolException naming the pool and
// "the filesystem is read-only (EROFS ...)"; after the filesystem shutdown
// ioctl (`xfs_io -x -c shutdown`: every later I/O fails) it answers "I/O
// error on PATH (EIO)". Nothing changes while refused; once writable again
// (remount rw; unmount and mount after the shutdown) the data is intact and
// everything works.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { fileDriver } from '../../../src/drivers/file/index.js';
import { fileReflinkDriver } from '../../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../../src/drivers/file-reflink/pool.js';
import type { DomainStorage } from '../../../src/storage/domain-storage.js';
import { StoragePoolException } from '../../../src/storage/errors.js';
import { MiB, listFiles, pattern, sha256, writeAt } from '../../helpers/data.js';
import { domain } from '../../helpers/reflink-scenario.js';
import { DirPool } from '../../../examples/dir-driver/index.js';

const run = promisify(execFile);
const SBIN = { PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` };
const sh = (cmd: string, args: string[]) => run(cmd, args, { env: { ...process.env, ...SBIN } });

async function have(cmd: string): Promise<boolean> {
  return sh('sh', ['-c', `command -v ${cmd}`]).then(
    () => true,
    () => false,
  );
}

const why =
  process.getuid?.() !== 0
    ? 'not root: cannot loop-mount'
    : !(await have('mkfs.ext4'))
      ? 'mkfs.ext4 not found (Debian package e2fsprogs)'
      : !(await have('xfs_io'))
        ? 'xfs_io not found (Debian package xfsprogs)'
        : null;

/** A small ext4 of its own, loop-mounted; unmounted and removed by `remove`. */
class LoopFs {
  private constructor(
    readonly work: string,
    readonly mnt: string,
  ) {}
  private mounted = false;
  static async make(): Promise<LoopFs> {
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-werr-'));
    const l = new LoopFs(work, path.join(work, 'mnt'));
    await fs.mkdir(l.mnt);
    await sh('truncate', ['-s', '64M', l.image]);
    await sh('mkfs.ext4', ['-q', '-F', l.image]);
    await l.mount();
    return l;
  }
  get image(): string {
    return path.join(this.work, 'fs.img');
  }
  async mount(): Promise<void> {
    await sh('mount', ['-o', 'loop', this.image, this.mnt]); // the loop device goes with the unmount
    this.mounted = true;
  }
  async umount(): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        await sh('umount', [this.mnt]);
        this.mounted = false;
        return;
      } catch (e) {
        if (i >= 20) throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }
  async remove(): Promise<void> {
    if (this.mounted) await this.umount().catch(() => sh('umount', ['-l', this.mnt]));
    await fs.rm(this.work, { recursive: true, force: true });
  }
}

/** Every file below `dir` with its hash. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of await listFiles(dir)) out[f] = await sha256(path.join(dir, f));
  return out;
}

interface World {
  dir: string;
  poolName: string;
  tpl: DomainStorage;
  app: DomainStorage;
  busy: DomainStorage;
  target: DomainStorage;
  fresh: DomainStorage;
}

/** Two file-based pools with a template, an AppVM with a revision, a running AppVM, a standalone. */
async function build(root: string, driver: typeof fileReflinkDriver): Promise<World> {
  const poolName = `p_${driver.name.replace('-', '_')}`;
  const dir = path.join(root, poolName);
  const pool = driver.createPool(poolName, { dir_path: dir, setup_check: false, revisions_to_keep: 1, ephemeral_volatile: false }) as FileReflinkPool;
  await pool.setup();
  const o = { setupCheck: false, revisionsToKeep: 1, rootSize: 4 * MiB, privateSize: 4 * MiB };
  const tpl = domain(pool, 'tpl', 'TemplateVM', o);
  const app = domain(pool, 'work', 'AppVM', o, tpl);
  const busy = domain(pool, 'busy', 'AppVM', o, tpl);
  const target = domain(pool, 'target', 'StandaloneVM', o);
  const fresh = domain(pool, 'fresh', 'AppVM', o, tpl);
  for (const d of [tpl, app, busy, target]) await d.create();
  for (const seed of [1, 2]) {
    await app.start();
    await writeAt(await app.get('private').path(), 0, pattern(MiB, seed));
    await app.stop();
  }
  await busy.start();
  await writeAt(await busy.get('private').path(), 0, pattern(MiB, 3));
  return { dir, poolName, tpl, app, busy, target, fresh };
}

/** Every write path, each expected refused with `reason`; returns what each answered. */
async function everyWrite(w: World, reason: RegExp, check: (what: string) => Promise<void>): Promise<string[]> {
  const answers: string[] = [];
  const ops: [string, () => Promise<unknown>][] = [
    ['create', () => w.fresh.create()],
    ['start', () => w.app.start()],
    ['stop (commit)', () => w.busy.stop()],
    ['resize', () => w.app.get('private').resize(8 * MiB)],
    ['revert', () => w.app.get('private').revert()],
    ['export', () => w.app.get('private').export()],
    ['clone', () => w.target.get('private').importVolume(w.app.get('private'))],
    ['import', () => w.target.get('root').importData(2 * MiB)],
    ['remove', () => w.target.remove()],
  ];
  for (const [what, op] of ops) {
    const e = await op().then(
      () => null,
      (err: unknown) => err,
    );
    assert.ok(e instanceof StoragePoolException, `${what}: ${String(e)} is not a StoragePoolException`);
    assert.match(e.message, new RegExp(`\\bpool ${w.poolName}\\b`), `${what}: names the pool`);
    assert.match(e.message, reason, `${what}: says what is wrong`);
    assert.ok(!e.message.includes('\n'));
    answers.push(`${what}: ${e.message}`);
    await check(what);
  }
  return answers;
}

describe('write errors on a real read-only and a real failing filesystem', { skip: why ?? false }, () => {
  let lfs: LoopFs;
  before(async () => {
    lfs = await LoopFs.make();
  });
  after(async () => {
    await lfs?.remove();
  });

  for (const driver of [fileReflinkDriver, fileDriver]) {
    it(`${driver.name}: read-only (EROFS), then writable again`, async (t) => {
      const w = await build(path.join(lfs.mnt, `ro-${driver.name}`), driver);
      const before = await snapshot(w.dir);
      await sh('mount', ['-o', 'remount,ro', lfs.mnt]);
      try {
        const answers = await everyWrite(w, /: the filesystem is read-only \(EROFS at \//, async (what) => {
          assert.deepEqual(await snapshot(w.dir), before, `${what} changed something`);
        });
        t.diagnostic(answers.join('; '));
      } finally {
        await sh('mount', ['-o', 'remount,rw', lfs.mnt]);
      }
      // Writable again: everything works, the data is what it was.
      await w.busy.stop();
      await w.app.start();
      await w.app.stop();
      await w.target.get('private').importVolume(w.app.get('private'));
      assert.equal(await sha256(await w.target.get('private').path()), await sha256(await w.app.get('private').path()));
      await w.fresh.create();
      assert.deepEqual((await listFiles(w.dir)).filter((f) => /-(tmp|export)-|-import\.img$/.test(f)), []);
    });
  }

  it('a driver that leaves these errors to the contract (the example dir driver): the volume contract answers the mapped error', async () => {
    const dir = path.join(lfs.mnt, 'dir');
    const pool = new DirPool('dirpool', { dir_path: dir });
    await pool.setup();
    const v = pool.initVolume({ name: 'work', dirPrefix: 'appvms' }, { name: 'private', rw: true, save_on_stop: true, size: MiB });
    await v.create();
    const fresh = pool.initVolume({ name: 'new', dirPrefix: 'appvms' }, { name: 'private', rw: true, save_on_stop: true, size: MiB });
    await fs.mkdir(path.join(dir, 'appvms', 'new')); // (Node's recursive mkdir says ENOENT on a read-only filesystem)
    await sh('mount', ['-o', 'remount,ro', lfs.mnt]);
    try {
      for (const [what, op] of [
        ['create', () => fresh.create()],
        ['start', () => v.start()],
        ['resize', () => v.resize(2 * MiB)],
        ['import', () => v.importData(MiB)],
      ] as const) {
        const e = await op().then(
          () => null,
          (err: unknown) => err,
        );
        assert.ok(e instanceof StoragePoolException, `${what}: ${String(e)}`);
        assert.match(e.message, /^volume appvms\/\w+\/private of pool dirpool: the filesystem is read-only \(EROFS at \//, what);
      }
    } finally {
      await sh('mount', ['-o', 'remount,rw', lfs.mnt]);
    }
    await fresh.create();
  });

  it('file-reflink: a failing filesystem (EIO after a shutdown), then mounted again', async (t) => {
    const w = await build(path.join(lfs.mnt, 'eio'), fileReflinkDriver);
    await fs.writeFile(path.join(lfs.mnt, 'sync-marker'), ''); // everything above is fsynced by the driver
    const before = await snapshot(w.dir);
    await sh('xfs_io', ['-x', '-c', 'shutdown', lfs.mnt]);
    try {
      const answers = await everyWrite(w, /: I\/O error on \/[^ ]* \(EIO\)$/, async () => undefined);
      t.diagnostic(answers.join('; '));
    } finally {
      await lfs.umount();
      await lfs.mount();
    }
    // After log recovery: the committed data and revision are there; nothing left over once used.
    const after = await snapshot(w.dir);
    for (const [f, h] of Object.entries(before)) if (!/-dirty\.img$|-base\.img$/.test(f)) assert.equal(after[f], h, `${f} after the shutdown`);
    await w.busy.stop();
    await w.app.start();
    await w.app.stop();
    await w.fresh.create();
    assert.deepEqual((await listFiles(w.dir)).filter((f) => /-(tmp|export)-|-import\.img$/.test(f)), []);
  });
});
