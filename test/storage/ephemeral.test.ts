// ephemeral=True where the host cannot encrypt volumes (this machine's
// kernel has no device-mapper), over the real admin socket: refused where
// it is asked for, a volume's property or a pool's ephemeral_volatile, with
// an error naming the volume or pool and the reason, and nothing changed;
// a volume that is ephemeral all the same (a Qubes qubes.xml says so) does
// not start, and its domain is left halted with nothing made. Where the
// host has device-mapper the refusal cannot be seen here: the test VM
// (test/devmapper/ephemeral-vm.test.ts) shows what happens there.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { AdminServer, type AdminEvent } from '../../src/admin/index.js';
import { openRuntime, type Runtime } from '../../src/daemon/runtime.js';
import { failsWith, ok } from '../admin/methods/helpers.js';
import { collectingLog } from '../admin/helpers.js';
import { MiB } from '../helpers/data.js';

// Read here, not through the code under test: the kernel's list of misc devices.
const hostHasDeviceMapper = /^\s*\d+\s+device-mapper$/m.test(readFileSync('/proc/misc', 'utf8'));
const REASON = 'this host cannot encrypt volumes with dm-crypt \\(the kernel has no device-mapper\\)';

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listTree(p)));
    else out.push(p);
  }
  return out.sort();
}

describe('ephemeral=True on a host without device-mapper', {
  skip: hostHasDeviceMapper ? 'this host has device-mapper: the refusal shows only where it has none' : false,
}, () => {
  let dir = '';
  let sockDir = '';
  let S = '';
  let rt: Runtime;
  let server: AdminServer;
  const events: AdminEvent[] = [];
  let stop = (): void => {};

  async function open(): Promise<void> {
    rt = await openRuntime({ baseDir: dir, storageConf: null, nodeModules: [], sizes: { root: 8 * MiB, private: 4 * MiB } });
    server = new AdminServer({ socketPath: S, methods: rt.methods, log: collectingLog(), lingerMs: 100 });
    await server.listen();
    stop = rt.bus.subscribe((e) => events.push(e));
  }
  async function close(): Promise<void> {
    stop();
    await server.close({ timeoutMs: 5000 });
    await rt.close();
  }

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-ephemeral-'));
    sockDir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-e-'));
    S = path.join(sockDir, 's');
    await open();
    await rt.app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: false });
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
  });
  after(async () => {
    await close().catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(sockDir, { recursive: true, force: true });
  });

  test('admin.vm.volume.Set.ephemeral True: QubesValueError naming the volume and the reason; nothing recorded', async () => {
    const xml = await fs.readFile(rt.app.stateFile, 'utf8');
    const seen = events.length;
    await failsWith(
      S,
      'QubesValueError',
      ['admin.vm.volume.Set.ephemeral', 'work', 'volatile', 'True'],
      new RegExp(`^volume appvms/work/volatile of pool default: cannot make it ephemeral: ${REASON}$`),
    );
    assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'volatile'), /\nephemeral=False\n/);
    assert.equal(await fs.readFile(rt.app.stateFile, 'utf8'), xml, 'the state file is unchanged');
    assert.deepEqual(events.slice(seen).filter((e) => e.event.startsWith('volume-set')), []);
    // The property rules still come first, and False is always accepted.
    await failsWith(S, 'QubesValueError', ['admin.vm.volume.Set.ephemeral', 'work', 'private', 'True'], /only allowed for rw volumes/);
    assert.equal(await ok(S, 'admin.vm.volume.Set.ephemeral', 'work', 'volatile', 'False'), '');
  });

  test('admin.pool.Set.ephemeral_volatile True and admin.pool.Add with it: refused, naming the pool; nothing changed', async () => {
    const xml = await fs.readFile(rt.app.stateFile, 'utf8');
    await failsWith(
      S,
      'QubesValueError',
      ['admin.pool.Set.ephemeral_volatile', 'dom0', 'default', 'True'],
      new RegExp(`^pool default: cannot set ephemeral_volatile=True: ${REASON}$`),
    );
    assert.match(await ok(S, 'admin.pool.Info', 'dom0', 'default'), /\nephemeral_volatile=False\n/);
    const extra = path.join(dir, 'extra');
    await failsWith(
      S,
      'QubesValueError',
      ['admin.pool.Add', 'dom0', 'file-reflink', `name=extra\ndir_path=${extra}\nsetup_check=False\nephemeral_volatile=True`],
      new RegExp(`^pool extra: cannot add it with ephemeral_volatile=True: ${REASON}$`),
    );
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n');
    await assert.rejects(fs.stat(extra), { code: 'ENOENT' }, 'the refused pool made nothing');
    assert.equal(await fs.readFile(rt.app.stateFile, 'utf8'), xml, 'the state file is unchanged');
    assert.equal(await ok(S, 'admin.pool.Set.ephemeral_volatile', 'dom0', 'default', 'False'), '');
  });

  test('a volume ephemeral in qubes.xml is reported, and its domain does not start: StoragePoolException, nothing made', async () => {
    await close();
    const xml = await fs.readFile(rt.app.stateFile, 'utf8');
    // As a Qubes system's qubes.xml may have it: ephemeral="True" on the volume.
    const edited = xml
      .split('\n')
      .map((l) => (!l.includes('vid="appvms/work/volatile"') ? l : l.includes('ephemeral=') ? l.replace(/ephemeral="\w+"/, 'ephemeral="True"') : l.replace('<volume ', '<volume ephemeral="True" ')))
      .join('\n');
    assert.notEqual(edited, xml);
    await fs.writeFile(rt.app.stateFile, edited);
    await open();
    assert.match(await ok(S, 'admin.vm.volume.Info', 'work', 'volatile'), /\nephemeral=True\n/);
    const files = await listTree(path.join(dir, 'pool'));
    await failsWith(
      S,
      'StoragePoolException',
      ['admin.vm.Start', 'work'],
      new RegExp(`^volume appvms/work/volatile of pool default: cannot start an ephemeral volume: ${REASON}; set its ephemeral to False to run it unencrypted$`),
    );
    assert.equal((await ok(S, 'admin.vm.CurrentState', 'work')).includes('power_state=Halted'), true);
    assert.deepEqual(await listTree(path.join(dir, 'pool')), files, 'no working copy, no volatile image left');
    // As the message says: unencrypted, it starts.
    assert.equal(await ok(S, 'admin.vm.volume.Set.ephemeral', 'work', 'volatile', 'False'), '');
    assert.equal(await ok(S, 'admin.vm.Start', 'work'), '');
    assert.equal(await ok(S, 'admin.vm.Shutdown', 'work'), '');
  });
});
