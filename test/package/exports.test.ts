/**
 * The package's public surface, as a program outside this repository sees
 * it: a temporary project whose node_modules/qubes-storage links to this
 * checkout imports the package by name (runtime, through `exports`) and
 * type-checks against it (through `types`). What a driver needs is listed
 * here, so a name dropped from src/index.ts fails this test.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Values a driver written outside the repository takes from 'qubes-storage'. */
const DRIVER_NAMES = [
  'DRIVER_API_VERSION',
  'DRIVER_API_AGE',
  'createPoolFrom',
  'Pool',
  'Volume',
  'COMMON_POOL_OPTIONS',
  'parseOptions',
  'QubesException',
  'QubesValueError',
  'StoragePoolException',
  'QubesVolumeRevisionNotFoundError',
  'storageError',
  'storageErrnoError',
  'fsyncDir',
  'fsyncFile',
  'writeFileAtomic',
  'sweepAtomicTemps',
  'createSparse',
  'copyFileCow',
  'reflinkSupported',
  'exists',
  'declareFailpoint',
  'failpoint',
  'FAILPOINTS',
];
/** Values a program that manages drivers and pools takes from it. */
const LIBRARY_NAMES = ['DriverRegistry', 'checkDriverShape', 'loadStorageConf', 'addPoolToStorageConf', 'builtinDrivers', 'BUILTIN_DRIVER_NAMES'];
const BUILTIN_DRIVERS = { fileReflinkDriver: 'file-reflink', fileDriver: 'file', xenDriver: 'xen', linuxKernelDriver: 'linux-kernel', rbdDriver: 'rbd', lvmThinDriver: 'lvm_thin' };

let project = '';

before(async () => {
  project = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-consumer-'));
  await fs.mkdir(path.join(project, 'node_modules'));
  await fs.symlink(ROOT, path.join(project, 'node_modules', 'qubes-storage'));
  await fs.writeFile(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', type: 'module', private: true }));
});
after(async () => {
  if (project) await fs.rm(project, { recursive: true, force: true });
});

/** Runs `code` as an ES module in the consumer project; returns what it printed as JSON. */
async function inConsumer(code: string): Promise<unknown> {
  const file = path.join(project, `probe-${Math.random().toString(36).slice(2)}.mjs`);
  await fs.writeFile(file, code);
  try {
    const { stdout } = await run(process.execPath, [file], { cwd: project });
    return JSON.parse(stdout) as unknown;
  } finally {
    await fs.rm(file, { force: true });
  }
}

describe('package surface (imported by name from another project)', () => {
  it("'qubes-storage' gives the driver contract, the registry and the built-in drivers", async () => {
    const got = (await inConsumer(`
      import * as qs from 'qubes-storage';
      const drivers = {};
      for (const [k, name] of Object.entries(${JSON.stringify(BUILTIN_DRIVERS)})) {
        const d = qs.checkDriverShape(qs[k]);
        drivers[k] = d.name === name && d.apiVersion === qs.DRIVER_API_VERSION;
      }
      const cb = qs.makeCallbackDriver(() => { throw new Error('unused'); });
      console.log(JSON.stringify({
        names: Object.keys(qs),
        version: qs.DRIVER_API_VERSION,
        classes: [qs.Pool, qs.Volume].map((c) => typeof c === 'function' && typeof c.prototype === 'object'),
        errors: [qs.QubesValueError, qs.StoragePoolException].map((c) => new c('x') instanceof qs.QubesException),
        drivers,
        callback: qs.checkDriverShape(cb).name,
        builtin: qs.builtinDrivers(() => { throw new Error('unused'); }).map((d) => d.name),
      }));
    `)) as { names: string[]; version: number; classes: boolean[]; errors: boolean[]; drivers: Record<string, boolean>; callback: string; builtin: string[] };
    const missing = [...DRIVER_NAMES, ...LIBRARY_NAMES, ...Object.keys(BUILTIN_DRIVERS), 'makeCallbackDriver'].filter((n) => !got.names.includes(n));
    assert.deepEqual(missing, [], 'names missing from the public surface');
    assert.ok(Number.isInteger(got.version) && got.version >= 1);
    assert.deepEqual(got.classes, [true, true]);
    assert.deepEqual(got.errors, [true, true]);
    assert.deepEqual(got.drivers, Object.fromEntries(Object.keys(BUILTIN_DRIVERS).map((k) => [k, true])));
    assert.equal(got.callback, 'callback');
    assert.deepEqual(got.builtin, ['file-reflink', 'file', 'xen', 'linux-kernel', 'callback', 'rbd', 'lvm_thin']);
  });

  it("'qubes-storage/drivers/NAME' gives one built-in driver with its classes; the same Pool class as the root", async () => {
    const got = await inConsumer(`
      import { Pool, Volume } from 'qubes-storage';
      import { fileReflinkDriver, FileReflinkPool, FileReflinkVolume } from 'qubes-storage/drivers/file-reflink';
      import { linuxKernelDriver } from 'qubes-storage/drivers/linux-kernel';
      console.log(JSON.stringify([
        fileReflinkDriver.name, linuxKernelDriver.name,
        FileReflinkPool.prototype instanceof Pool, FileReflinkVolume.prototype instanceof Volume,
      ]));
    `);
    assert.deepEqual(got, ['file-reflink', 'linux-kernel', true, true]);
  });

  it('deep paths into the package are closed: only what `exports` lists can be imported', async () => {
    const got = await inConsumer(`
      const codes = [];
      for (const spec of ['qubes-storage/dist/src/storage/pool.js', 'qubes-storage/src/index.ts', 'qubes-storage/drivers/nosuch']) {
        try { await import(spec); codes.push('loaded'); } catch (e) { codes.push(e.code); }
      }
      console.log(JSON.stringify(codes));
    `);
    assert.deepEqual(got, ['ERR_PACKAGE_PATH_NOT_EXPORTED', 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'ERR_MODULE_NOT_FOUND']);
  });

  it("'qubes-storage/client' is exported", async (t) => {
    if (!(await fs.stat(path.join(ROOT, 'dist/src/client/index.js')).catch(() => null))) {
      t.skip('src/client/ is not in this tree yet');
      return;
    }
    const got = (await inConsumer(`
      import * as client from 'qubes-storage/client';
      console.log(JSON.stringify(Object.keys(client)));
    `)) as string[];
    assert.ok(got.length > 0, 'the client module exports something');
  });

  it('types: a TypeScript driver outside the repository compiles against the package (strict, NodeNext)', async () => {
    await fs.writeFile(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: ['node'], typeRoots: [path.join(ROOT, 'node_modules/@types')] },
        files: ['driver.ts'],
      }),
    );
    await fs.writeFile(
      path.join(project, 'driver.ts'),
      `
      import { COMMON_POOL_OPTIONS, DRIVER_API_VERSION, Pool, Volume, type DomainRef, type PoolOptions, type StorageDriver, type VolumeSpec } from 'qubes-storage';
      import { fileReflinkDriver } from 'qubes-storage/drivers/file-reflink';
      abstract class MyVolume extends Volume {}
      abstract class MyPool extends Pool {
        constructor(name: string, options: PoolOptions) { super(name, 'mine', options); }
        abstract override initVolume(domain: DomainRef | null, spec: VolumeSpec): MyVolume;
      }
      export const mine: StorageDriver = {
        name: 'mine',
        apiVersion: DRIVER_API_VERSION,
        description: 'x',
        options: [...COMMON_POOL_OPTIONS],
        capabilities: { ...fileReflinkDriver.capabilities },
        createPool: (name: string, options: PoolOptions): MyPool => { void name; void options; throw new Error('not made here'); },
      };
      // @ts-expect-error a driver without createPool is not a StorageDriver
      export const bad: StorageDriver = { name: 'bad', apiVersion: 1, description: '', options: [], capabilities: fileReflinkDriver.capabilities };
      `,
    );
    const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc');
    const r = await run(process.execPath, [tsc, '-p', project], { cwd: project }).then(
      () => ({ code: 0, out: '' }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    );
    assert.equal(r.code, 0, r.out);
  });
});
