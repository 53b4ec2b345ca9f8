import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import {
  checkDriverShape,
  DriverRegistry,
  driverHelp,
  formatListDrivers,
  parseClassRef,
} from '../../src/registry/drivers.js';
import { canShrink, DRIVER_API_VERSION, type StorageDriver } from '../../src/storage/driver.js';
import { QubesValueError, StoragePoolException } from '../../src/storage/errors.js';
import { driverModuleSource, installDemoPackage, installPackage, makeTmp, removeTmp } from './fixtures.js';
import { DirPool, dirDriver } from '../../examples/dir-driver/index.js';

describe('driver registry: built-in drivers', () => {
  let reg: DriverRegistry;
  before(async () => {
    reg = await DriverRegistry.open();
  });

  it('registers file-reflink, file, xen, linux-kernel and callback by name', () => {
    for (const n of ['file-reflink', 'file', 'xen', 'linux-kernel', 'callback']) assert.ok(reg.has(n), n);
    assert.ok(reg.listDrivers().every((d) => d.origin.kind === 'builtin'));
    assert.equal(reg.get('linux-kernel').name, 'linux-kernel');
  });

  it('lists drivers with their options as admin.pool.ListDrivers lines', () => {
    const text = formatListDrivers(reg.listDrivers());
    assert.match(text, /^linux-kernel dir_path\n/m);
    assert.match(text, /^callback conf_id conf_path revisions_to_keep ephemeral_volatile\n/m);
    assert.deepEqual(
      reg.listDrivers().map((d) => d.name),
      [...reg.names()],
    );
  });

  it('writes help from the same declarations', () => {
    const help = reg.helpText();
    assert.match(help, /^linux-kernel: read-only kernel volumes/m);
    assert.match(help, /^ {2}dir_path +directory with one VERSION\/ directory .*\(path, required\)$/m);
    assert.match(driverHelp(dirDriver), /revisions_to_keep +revisions kept .*\(int, default 1, can be changed later\)/);
  });

  it('refuses an unknown driver name, listing the known ones', async () => {
    await assert.rejects(
      reg.createPool('nosuch', 'p', {}),
      (e: unknown) =>
        e instanceof StoragePoolException && /pool p: unknown driver 'nosuch' \(known: .*linux-kernel/.test(e.message),
    );
  });

  it('refuses to register a second driver with a taken name', () => {
    assert.throws(() => reg.register({ ...dirDriver, name: 'linux-kernel' }), /already registered \(built in\)/);
  });
});

describe('driver registry: pool options are validated against the declaration', () => {
  let reg: DriverRegistry;
  before(async () => {
    reg = await DriverRegistry.open({ builtins: false, drivers: [dirDriver] });
  });

  const cases: { name: string; options: Record<string, string | number | boolean>; error: RegExp }[] = [
    { name: 'unknown key', options: { dir_path: '/x', colour: 'red' }, error: /pool p: unknown option 'colour'/ },
    { name: 'missing required key', options: {}, error: /pool p: missing required option 'dir_path'/ },
    { name: 'int of the wrong type', options: { dir_path: '/x', revisions_to_keep: 'many' }, error: /option revisions_to_keep: expected an integer/ },
    { name: 'int below the minimum', options: { dir_path: '/x', revisions_to_keep: -2 }, error: /option revisions_to_keep: must be at least -1/ },
    { name: 'bool of the wrong type', options: { dir_path: '/x', ephemeral_volatile: 'perhaps' }, error: /option ephemeral_volatile: expected True or False/ },
    { name: 'relative path', options: { dir_path: 'relative/dir' }, error: /option dir_path: must be an absolute path/ },
  ];
  for (const c of cases)
    it(`refuses ${c.name}`, async () => {
      await assert.rejects(reg.createPool('dir', 'p', c.options), (e: unknown) => e instanceof QubesValueError && c.error.test(e.message));
    });

  it('fills defaults and converts strings', async () => {
    const pool = await reg.createPool('dir', 'p', { dir_path: '/x', revisions_to_keep: '3' });
    assert.deepEqual(pool.config(), { name: 'p', driver: 'dir', dir_path: '/x', revisions_to_keep: 3, ephemeral_volatile: false });
    assert.equal(pool.capabilities, dirDriver.capabilities, 'the registry binds the declaration to a pool of a driver that does not pass it');
  });

  it('refuses an invalid pool name before anything else', async () => {
    await assert.rejects(reg.createPool('dir', '../evil', { dir_path: '/x' }), /invalid pool name/);
  });
});

describe('driver registry: third-party packages and class references', () => {
  let tmp: string;
  let nm: string;
  let reg: DriverRegistry;

  before(async () => {
    tmp = await makeTmp('registry');
    nm = path.join(tmp, 'node_modules');
    await installDemoPackage(nm);
    await installPackage(nm, {
      name: '@acme/qs-scoped',
      qubesStorage: { drivers: { scoped: './scoped.js#ScopedDriver' } },
      files: { 'scoped.js': driverModuleSource({ name: 'scoped', exportName: 'ScopedDriver' }) },
    });
    // Packages that have nothing to do with us, and hidden directories.
    await installPackage(nm, { name: 'left-pad', files: { 'index.js': 'export const x = 1;\n' } });
    await fs.mkdir(path.join(nm, '.bin'), { recursive: true });
    // Broken packages: each must be reported, none may stop the others.
    await installPackage(nm, {
      name: 'qs-broken-module',
      qubesStorage: { drivers: { brokenmod: './nope.js#X' } },
      files: {},
    });
    await installPackage(nm, {
      name: 'qs-steals-builtin',
      qubesStorage: { drivers: { 'linux-kernel': './k.js#K' } },
      files: { 'k.js': driverModuleSource({ name: 'linux-kernel', exportName: 'K' }) },
    });
    await installPackage(nm, {
      name: 'qs-wrong-name',
      qubesStorage: { drivers: { declared: './w.js#W' } },
      files: { 'w.js': driverModuleSource({ name: 'actual', exportName: 'W' }) },
    });
    await installPackage(nm, {
      name: 'qs-escapes',
      qubesStorage: { drivers: { escapes: './../qs-driver-demo/lib/demo.js#demoDriver' } },
      files: {},
    });
    await installPackage(nm, {
      name: 'qs-old-api',
      qubesStorage: { drivers: { oldapi: './o.js#O' } },
      files: { 'o.js': driverModuleSource({ name: 'oldapi', exportName: 'O', apiVersion: DRIVER_API_VERSION + 5 }) },
    });
    await installPackage(nm, { name: 'qs-bad-field', qubesStorage: { drivers: ['x'] }, files: {} });
    for (const who of ['qs-twin-a', 'qs-twin-b'])
      await installPackage(nm, {
        name: who,
        qubesStorage: { drivers: { twin: './t.js#T' } },
        files: { 't.js': driverModuleSource({ name: 'twin', exportName: 'T' }) },
      });
    // Driver modules next to a storage.conf, for class=./...
    await fs.writeFile(path.join(tmp, 'my-driver.js'), driverModuleSource({ name: 'btrfs-local', exportName: 'BtrfsDriver' }));
    await fs.writeFile(path.join(tmp, 'old-api.js'), driverModuleSource({ name: 'old', exportName: 'OldDriver', apiVersion: 99 }));
    await fs.writeFile(path.join(tmp, 'bad-shape.js'), 'export const notDriver = { name: "x", apiVersion: 1 };\n');
    await fs.writeFile(path.join(tmp, 'throws.js'), 'throw new Error("boom at import");\n');
    await fs.writeFile(path.join(tmp, 'package.json'), '{"type": "module"}\n');
    reg = await DriverRegistry.open({ nodeModules: [nm] });
  });
  after(() => removeTmp(tmp));

  it('finds drivers declared in package.json, scoped packages included', async () => {
    assert.ok(reg.has('demo'));
    assert.ok(reg.has('scoped'));
    const listing = reg.listDrivers().find((d) => d.name === 'demo')!;
    assert.deepEqual(listing.options, ['dir_path', 'depth']);
    assert.deepEqual(listing.origin, { kind: 'package', package: 'qs-driver-demo', module: path.join(nm, 'qs-driver-demo', 'lib', 'demo.js') });
    assert.equal(reg.listDrivers().find((d) => d.name === 'scoped')!.origin.kind, 'package');
  });

  it('makes a pool of a package driver by name, validating options', async () => {
    const pool = await reg.createPool('demo', 'p1', { dir_path: '/srv/p1' });
    assert.deepEqual(pool.config(), { name: 'p1', driver: 'demo', dir_path: '/srv/p1', depth: 2 });
    await assert.rejects(reg.createPool('demo', 'p1', { dir_path: '/srv/p1', depth: 'x' }), /pool p1: option depth: expected an integer/);
  });

  it('loads MODULE#EXPORT relative to a base directory, and class wins over driver', async () => {
    const pool = await reg.createPool({ driver: 'demo', class: './my-driver.js#BtrfsDriver' }, 'p2', { dir_path: '/x' }, { baseDir: tmp });
    assert.equal(pool.driver, 'btrfs-local');
    const abs = await reg.createPool(`${path.join(tmp, 'my-driver.js')}#BtrfsDriver`, 'p3', { dir_path: '/x' });
    assert.equal(abs.driver, 'btrfs-local');
  });

  it('loads package/subpath#EXPORT through the package exports map', async () => {
    const pool = await reg.createPool('qs-driver-demo/pool#ZDriver', 'p4', { dir_path: '/x' });
    assert.equal(pool.driver, 'zdemo');
    const bare = await reg.createPool('qs-driver-demo#demoDriver', 'p5', { dir_path: '/x' });
    assert.equal(bare.driver, 'demo');
  });

  const loadErrors: { ref: string; reason: RegExp }[] = [
    { ref: 'nonsense', reason: /expected MODULE#EXPORT/ },
    { ref: './missing.js#X', reason: /missing\.js: no such file/ },
    { ref: './my-driver.js#Nope', reason: /no export 'Nope' \(exports: BtrfsDriver\)/ },
    { ref: './my-driver.js#bad-name', reason: /'bad-name' is not an export name/ },
    { ref: './bad-shape.js#notDriver', reason: /export 'notDriver' is not a storage driver: 'description' must be a string/ },
    { ref: './old-api.js#OldDriver', reason: /written for driver API version 99; this program supports version 1/ },
    { ref: './throws.js#X', reason: /import failed: boom at import/ },
    { ref: 'not-installed/x#Y', reason: /package 'not-installed' is not installed/ },
    { ref: 'qs-driver-demo/secret#Y', reason: /package qs-driver-demo does not export '\.\/secret'/ },
    { ref: 'qs-driver-demo/../x#Y', reason: /'\.' and '\.\.' are not allowed/ },
  ];
  for (const c of loadErrors)
    it(`names the pool, module and reason when class=${c.ref} cannot load`, async () => {
      await assert.rejects(reg.createPool({ class: c.ref }, 'mypool', { dir_path: '/x' }, { baseDir: tmp }), (e: unknown) => {
        assert.ok(e instanceof StoragePoolException, String(e));
        assert.ok(e.message.startsWith(`pool mypool: cannot load driver class '${c.ref}'`), e.message);
        assert.match(e.message, c.reason);
        return true;
      });
    });

  const problems: { pkg: string; name: string | null; reason: RegExp }[] = [
    { pkg: 'qs-broken-module', name: 'brokenmod', reason: /no such file/ },
    { pkg: 'qs-steals-builtin', name: 'linux-kernel', reason: /already taken \(built in\)/ },
    { pkg: 'qs-wrong-name', name: 'declared', reason: /export is driver 'actual', but package.json declares it as 'declared'/ },
    { pkg: 'qs-escapes', name: 'escapes', reason: /leaves/ },
    { pkg: 'qs-old-api', name: 'oldapi', reason: /driver API version 6/ },
    { pkg: 'qs-bad-field', name: null, reason: /"qubes-storage" must be/ },
    { pkg: 'qs-twin-b', name: 'twin', reason: /declared by more than one package/ },
  ];
  for (const c of problems)
    it(`reports the broken package ${c.pkg} without stopping the others`, () => {
      const p = reg.problems.find((x) => x.package === c.pkg);
      assert.ok(p, `no problem recorded for ${c.pkg}: ${JSON.stringify(reg.problems)}`);
      assert.equal(p.name, c.name);
      assert.match(p.reason, c.reason);
    });

  it('gives the recorded reason when a broken driver name is used', async () => {
    await assert.rejects(reg.createPool('brokenmod', 'px', { dir_path: '/x' }), /pool px: driver 'brokenmod' cannot be used: package qs-broken-module .*no such file/);
    await assert.rejects(reg.createPool('twin', 'px', {}), /driver 'twin' cannot be used: declared by more than one package: qs-twin-a, also declared by package qs-twin-b/);
    assert.equal(reg.has('twin'), false);
    // The built-in keeps its name.
    assert.equal(reg.listDrivers().find((d) => d.name === 'linux-kernel')!.origin.kind, 'builtin');
  });

  it('does not scan node_modules it was not given', async () => {
    const plain = await DriverRegistry.open();
    assert.equal(plain.has('demo'), false);
    await assert.rejects(plain.createPool('qs-driver-demo/pool#ZDriver', 'p', { dir_path: '/x' }), /no node_modules directory is configured/);
  });
});

describe('driver registry: shape checks', () => {
  const bad: { name: string; driver: unknown; reason: RegExp }[] = [
    { name: 'not an object', driver: 42, reason: /expected an object, got number/ },
    { name: 'bad name', driver: { ...dirDriver, name: 'has space' }, reason: /'name' must be a driver name/ },
    { name: 'no apiVersion', driver: { ...dirDriver, apiVersion: undefined }, reason: /'apiVersion' must be an integer/ },
    { name: 'future apiVersion', driver: { ...dirDriver, apiVersion: DRIVER_API_VERSION + 1 }, reason: /written for driver API version 2/ },
    { name: 'no factory', driver: { ...dirDriver, createPool: 'x' }, reason: /'createPool' must be a function/ },
    { name: 'options not a list', driver: { ...dirDriver, options: {} }, reason: /'options' must be an array/ },
    { name: 'option of unknown type', driver: { ...dirDriver, options: [{ name: 'a', type: 'float', help: '' }] }, reason: /option 'a': type must be/ },
    { name: 'option twice', driver: { ...dirDriver, options: [dirDriver.options[0], dirDriver.options[0]] }, reason: /declared twice/ },
    { name: "an option called 'name'", driver: { ...dirDriver, options: [{ name: 'name', type: 'string', help: '' }] }, reason: /'name' is not an option/ },
    { name: 'unknown volume kind', driver: { ...dirDriver, capabilities: { ...dirDriver.capabilities, volumeKinds: ['weird'] } }, reason: /volumeKinds/ },
    { name: 'no capabilities', driver: { ...dirDriver, capabilities: null }, reason: /'capabilities' must be an object/ },
    { name: 'shrink not a boolean', driver: { ...dirDriver, capabilities: { ...dirDriver.capabilities, shrink: 'yes' } }, reason: /'capabilities.shrink' must be a boolean/ },
    { name: 'listing not pool or domains', driver: { ...dirDriver, capabilities: { ...dirDriver.capabilities, listing: 'disk' } }, reason: /'capabilities.listing' must be 'pool' or 'domains'/ },
  ];
  for (const c of bad)
    it(`refuses a driver with ${c.name}`, () => {
      assert.throws(() => checkDriverShape(c.driver), (e: unknown) => e instanceof StoragePoolException && c.reason.test(e.message));
    });

  it('accepts a well-formed driver', () => {
    assert.equal(checkDriverShape(dirDriver), dirDriver);
  });

  it('accepts a version 1 driver without shrink (it cannot shrink) and one declaring it', () => {
    assert.equal('shrink' in dirDriver.capabilities, false, 'the example declares no shrink');
    assert.equal(canShrink(checkDriverShape(dirDriver).capabilities), false);
    const shrinking = { ...dirDriver, capabilities: { ...dirDriver.capabilities, shrink: true } };
    assert.equal(canShrink(checkDriverShape(shrinking).capabilities), true);
    assert.match(driverHelp(dirDriver), /; cannot shrink\n/);
    assert.match(driverHelp(shrinking), /; can shrink \(the old data kept as a revision\)\n/);
  });

  it('refuses a driver whose factory returns something else than the pool asked for', async () => {
    const liar = { ...dirDriver, name: 'liar', createPool: () => ({ name: 'other' }) } as unknown as StorageDriver;
    const reg = await DriverRegistry.open({ builtins: false, drivers: [liar] });
    await assert.rejects(reg.createPool('liar', 'p', { dir_path: '/x' }), /driver liar did not return a pool named 'p'/);
  });

  it('splits class references', () => {
    assert.deepEqual(parseClassRef('./a/b.js#Drv'), { module: './a/b.js', exportName: 'Drv' });
    assert.deepEqual(parseClassRef('@s/p/x#D'), { module: '@s/p/x', exportName: 'D' });
    assert.throws(() => parseClassRef('#D'), /expected MODULE#EXPORT/);
  });
});

describe('driver registry: the example out-of-tree driver (examples/dir-driver)', () => {
  // The package as npm would install it: its own package.json, and its module
  // (compiled by this project's build into dist/examples/dir-driver/).
  const here = path.dirname(fileURLToPath(import.meta.url));
  const repo = path.resolve(here, '..', '..', '..');
  const compiled = path.resolve(here, '..', '..', 'examples', 'dir-driver', 'index.js');
  let tmp: string;
  let nm: string;
  before(async () => {
    tmp = await makeTmp('example');
    nm = path.join(tmp, 'node_modules');
    const pkg = path.join(nm, 'qubes-storage-dir-driver');
    await fs.mkdir(pkg, { recursive: true });
    await fs.copyFile(path.join(repo, 'examples', 'dir-driver', 'package.json'), path.join(pkg, 'package.json'));
    await fs.symlink(compiled, path.join(pkg, 'index.js'));
  });
  after(() => removeTmp(tmp));

  it('is found by the "qubes-storage" field of its package.json and makes pools by name', async () => {
    const reg = await DriverRegistry.open({ nodeModules: [nm] });
    assert.deepEqual(reg.problems, []);
    const listing = reg.listDrivers().find((d) => d.name === 'dir');
    assert.ok(listing, 'driver dir registered');
    assert.equal(listing.origin.kind, 'package');
    const pool = await reg.createPool('dir', 'p', { dir_path: path.join(tmp, 'pool') });
    assert.ok(pool instanceof DirPool);
    assert.deepEqual(pool.config(), { name: 'p', driver: 'dir', dir_path: path.join(tmp, 'pool'), revisions_to_keep: 1, ephemeral_volatile: false });
  });

  it('loads by class= as a package export and as a module path', async () => {
    const reg = await DriverRegistry.open({ nodeModules: [nm] });
    const byPackage = await reg.createPool({ class: 'qubes-storage-dir-driver#dirDriver' }, 'p1', { dir_path: '/x' });
    assert.equal(byPackage.driver, 'dir');
    const byPath = await reg.createPool({ class: `${compiled}#dirDriver` }, 'p2', { dir_path: '/x' });
    assert.equal(byPath.driver, 'dir');
  });
});
