// The pool factories of the drivers of this project (and the example
// driver), for the conformance suite: each makes fresh pools in fresh
// places on a test filesystem (or the test Ceph cluster) and removes them
// after the suite.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { StorageDriver } from '../../src/storage/driver.js';
import type { OptionValue } from '../../src/storage/options.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Revision, Volume } from '../../src/storage/volume.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import type { CallbackVolume } from '../../src/drivers/callback/index.js';
import { removeTree, tempDirOn, TEST_FILESYSTEMS, type TestFs } from '../helpers/filesystems.js';
import { readAt } from '../helpers/data.js';
import { dirDriver, type DirVolume } from '../../examples/dir-driver/index.js';
import { conformanceRegistry, openPool } from './open-pool.js';
import { fileIo, filesUnder, type ConformanceTarget, type Place } from './target.js';

export { TEST_FILESYSTEMS };

export function testFs(name: TestFs['name']): TestFs {
  return TEST_FILESYSTEMS.find((t) => t.name === name)!;
}

/** What every factory shares: pool names, made directories, cleanup. */
class Places {
  private n = 0;
  private readonly dirs: string[] = [];
  constructor(readonly label: string, readonly tfs: TestFs | null) {}
  poolName(): string {
    return `${this.label.replace(/[^A-Za-z0-9]/g, '')}${++this.n}`;
  }
  async dir(what: string): Promise<string> {
    const d = this.tfs
      ? await tempDirOn(this.tfs, `conf-${this.label}-${what}`)
      : await fs.mkdtemp(path.join(os.tmpdir(), `qs-conf-${this.label}-${what}-`));
    this.dirs.push(d);
    return d;
  }
  async cleanup(): Promise<void> {
    for (const d of this.dirs.splice(0).reverse()) await removeTree(d);
  }
}

async function driverOf(name: string): Promise<StorageDriver> {
  return (await conformanceRegistry()).get(name);
}

/** Files of a file-family pool that are not at rest: anything but images and revisions. */
async function fileDebris(dir: string): Promise<string[]> {
  return (await filesUnder(dir)).filter((f) => !/^(appvms|vm-templates|servicevms)\/[^/]+\/[A-Za-z_][A-Za-z0-9_]*\.img(\.[0-9]+@[0-9T:-]+Z)?$/.test(f));
}

function reflinkRevision(v: Volume, r: Revision, length: number): Promise<Buffer> {
  const fv = ('backend' in v ? (v as CallbackVolume).backend : v) as FileReflinkVolume;
  return readAt(fv.files.revision(Number(r.id), r.time), 0, length);
}

/** file-reflink, file or xen on one test filesystem. */
export async function fileFamilyTarget(driver: 'file-reflink' | 'file' | 'xen', tfs: TestFs): Promise<ConformanceTarget> {
  const places = new Places(driver, tfs);
  const dirOf = new Map<Pool, string>();
  return {
    driver: await driverOf(driver),
    place: tfs.name,
    skip: tfs.skip ?? false,
    async makePool(options: Record<string, OptionValue> = {}) {
      const dir = await places.dir('pool');
      const base: Record<string, OptionValue> = { dir_path: dir };
      if (driver === 'file-reflink') base['setup_check'] = tfs.reflink;
      const pool = await openPool(driver, places.poolName(), { ...base, ...options });
      dirOf.set(pool, dir);
      return pool;
    },
    scratchDir: () => places.dir('scratch'),
    cleanup: () => places.cleanup(),
    io: fileIo,
    failpoints: ['reflink.'],
    debris: (pool) => fileDebris(String(pool.config()['dir_path'] ?? dirOf.get(pool))),
    revisionData: reflinkRevision,
  };
}

/** callback around file-reflink: every hook runs /bin/true. */
export async function callbackTarget(tfs: TestFs): Promise<ConformanceTarget> {
  const places = new Places('callback', tfs);
  const backendDir = new Map<string, string>();
  return {
    driver: await driverOf('callback'),
    place: tfs.name,
    skip: tfs.skip ?? false,
    async makePool(options: Record<string, OptionValue> = {}) {
      const dir = await places.dir('pool');
      const data = path.join(dir, 'data');
      const conf = path.join(dir, 'callback.json');
      await fs.writeFile(
        conf,
        JSON.stringify({ conformance: { backend: { driver: 'file-reflink', options: { dir_path: data, setup_check: tfs.reflink } }, default_hook: ['/bin/true'] } }),
      );
      const name = places.poolName();
      backendDir.set(name, data);
      return openPool('callback', name, { conf_id: 'conformance', conf_path: conf, ...options });
    },
    scratchDir: () => places.dir('scratch'),
    cleanup: () => places.cleanup(),
    io: fileIo,
    failpoints: ['reflink.'],
    debris: (pool) => fileDebris(backendDir.get(pool.name)!),
    revisionData: reflinkRevision,
  };
}

/** linux-kernel: a kernels directory with one complete version. */
export async function linuxKernelTarget(tfs: TestFs): Promise<ConformanceTarget> {
  const places = new Places('linux-kernel', tfs);
  const version = '6.1.0-conformance';
  return {
    driver: await driverOf('linux-kernel'),
    place: tfs.name,
    skip: tfs.skip ?? false,
    async makePool(options: Record<string, OptionValue> = {}) {
      const dir = await places.dir('kernels');
      await fs.mkdir(path.join(dir, version));
      for (const f of ['vmlinuz', 'initramfs', 'modules.img']) await fs.writeFile(path.join(dir, version, f), f.repeat(10));
      return openPool('linux-kernel', places.poolName(), { dir_path: dir, ...options });
    },
    scratchDir: () => places.dir('scratch'),
    cleanup: () => places.cleanup(),
    io: fileIo,
    failpoints: [],
    debris: async () => [],
    presentVid: version,
  };
}

/** The example driver of examples/dir-driver. */
export async function dirExampleTarget(tfs: TestFs): Promise<ConformanceTarget> {
  const places = new Places('dir', tfs);
  return {
    driver: dirDriver,
    place: tfs.name,
    skip: tfs.skip ?? false,
    async makePool(options: Record<string, OptionValue> = {}) {
      return openPool('dir', places.poolName(), { dir_path: await places.dir('pool'), ...options });
    },
    scratchDir: () => places.dir('scratch'),
    cleanup: () => places.cleanup(),
    io: fileIo,
    failpoints: [],
    debris: async (pool) => (await filesUnder(String(pool.config()['dir_path']))).filter((f) => !/\.img(@[0-9]+)?$/.test(f)),
    revisionData: (v, r, length) => readAt(`${(v as DirVolume).file}@${r.id}`, 0, length),
  };
}

export type { Place };
