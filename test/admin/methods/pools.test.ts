// admin.pool.* over the real socket: exact replies for a known state and
// every documented error with its class name.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { fails, failsWith, ok, raw, startRig, type Rig } from './helpers.js';

const NUM = '(0|[1-9][0-9]*)';

/** Every path under `root` with its type (directories included), sorted. */
async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      out.push(`${path.relative(root, p)} ${e.isDirectory() ? 'd' : e.isSymbolicLink() ? 'l' : 'f'}`);
      if (e.isDirectory()) await visit(p);
    }
  };
  await visit(root);
  return out.sort();
}

describeEachFs('admin.pool methods', (tfs, fsx) => {
  let rig: Rig;
  let S: string;
  before(async () => {
    rig = await startRig(tfs, await fsx.tempDir('pools'));
    S = rig.socketPath;
  });
  after(() => rig?.stop());

  test('List: one name a line', async () => {
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n');
  });

  test('ListDrivers: DRIVER OPT OPT... per driver, sorted, options besides name', async () => {
    const text = await ok(S, 'admin.pool.ListDrivers', 'dom0');
    assert.ok(text.endsWith('\n'));
    const lines = text.slice(0, -1).split('\n');
    assert.ok(lines.includes('file-reflink dir_path setup_check revisions_to_keep ephemeral_volatile'), text);
    assert.ok(lines.includes('file dir_path revisions_to_keep ephemeral_volatile'), text);
    const names = lines.map((l) => l.split(' ')[0]!);
    assert.deepEqual(names, [...names].sort());
    assert.deepEqual(names, rig.rt.registry.names());
    for (const l of lines) assert.ok(!l.split(' ').slice(1).includes('name'), l);
  });

  test('Info: sorted config with True/False, then size= and usage=', async () => {
    const text = await ok(S, 'admin.pool.Info', 'dom0', 'default');
    const m = new RegExp(
      '^dir_path=' + rig.poolDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '\n' +
        'driver=file-reflink\n' +
        'ephemeral_volatile=False\n' +
        'name=default\n' +
        'revisions_to_keep=1\n' +
        `setup_check=${tfs.reflink ? 'True' : 'False'}\n` +
        `size=${NUM}\nusage=${NUM}\n$`,
    ).exec(text);
    assert.ok(m, text);
    const st = await fs.statfs(rig.poolDir);
    assert.equal(Number(m[1]), st.blocks * st.bsize);
    assert.ok(Number(m[2]) > 0 && Number(m[2]) <= Number(m[1]));
  });

  test('UsageDetails: sorted data_size, data_usage', async () => {
    const text = await ok(S, 'admin.pool.UsageDetails', 'dom0', 'default');
    const m = new RegExp(`^data_size=${NUM}\ndata_usage=${NUM}\n$`).exec(text);
    assert.ok(m, text);
    const st = await fs.statfs(rig.poolDir);
    assert.equal(Number(m[1]), st.blocks * st.bsize);
  });

  test('Add, Info, volume.List, Set.*, Remove', async () => {
    const inner = path.join(rig.dir, 'inner');
    assert.equal(
      await ok(S, 'admin.pool.Add', 'dom0', 'file-reflink', `name=inner\ndir_path=${inner}\nsetup_check=False\nrevisions_to_keep=3\n`),
      '',
    );
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\ninner\n');
    assert.ok((await fs.stat(path.join(inner, 'appvms'))).isDirectory(), 'Add ran the driver setup');
    const info = await ok(S, 'admin.pool.Info', 'dom0', 'inner');
    assert.match(
      info,
      new RegExp(
        `^dir_path=${inner.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\ndriver=file-reflink\nephemeral_volatile=False\nname=inner\n` +
          `revisions_to_keep=3\nsetup_check=False\nsize=${NUM}\nusage=${NUM}\n$`,
      ),
    );
    // The state file has it (durable before the reply).
    assert.match(await fs.readFile(rig.rt.app.stateFile, 'utf8'), /name="inner"/);
    const addEvents = rig.events.filter((e) => e.event === 'pool-add');
    assert.deepEqual(addEvents.at(-1)?.pairs, [['pool', 'inner']]);

    assert.equal(await ok(S, 'admin.pool.Set.revisions_to_keep', 'dom0', 'inner', '-1'), '');
    assert.match(await ok(S, 'admin.pool.Info', 'dom0', 'inner'), /\nrevisions_to_keep=-1\n/);
    assert.equal(await ok(S, 'admin.pool.Set.revisions_to_keep', 'dom0', 'inner', '0'), '');
    // (True is refused where the host cannot encrypt: test/storage/ephemeral.test.ts.)
    assert.equal(await ok(S, 'admin.pool.Set.ephemeral_volatile', 'dom0', 'inner', 'False'), '');
    assert.match(await ok(S, 'admin.pool.Info', 'dom0', 'inner'), /\nephemeral_volatile=False\n[^]*\nrevisions_to_keep=0\n/);

    // A domain whose volumes live in `inner`: volume.List shows them (its volatile too, which has no
    // image while halted: Qubes lists a file pool's volumes, not its images), Remove is refused.
    await rig.rt.app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'red', pool: 'inner' });
    assert.equal(await ok(S, 'admin.pool.volume.List', 'dom0', 'inner'), 'appvms/sa/private\nappvms/sa/root\nappvms/sa/volatile\n');
    await failsWith(S, 'QubesPoolInUseError', ['admin.pool.Remove', 'dom0', 'inner'], /sa:root|sa:private/);
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\ninner\n');
    await rig.rt.app.removeDomain('sa');
    assert.equal(await ok(S, 'admin.pool.Remove', 'dom0', 'inner'), '');
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n');
    assert.doesNotMatch(await fs.readFile(rig.rt.app.stateFile, 'utf8'), /name="inner"/);
    assert.ok((await fs.stat(inner)).isDirectory(), 'removing a pool keeps its data');
  });

  test('Add errors: existing name, unknown option, missing required option, bad payload, unknown driver', async () => {
    const d = path.join(rig.dir, 'other');
    await failsWith(S, 'QubesPoolInUseError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=default\ndir_path=${d}\n`]);
    await failsWith(S, 'QubesValueError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\ndir_path=${d}\nbogus=1\n`], /'bogus'/);
    await failsWith(S, 'QubesValueError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\n`], /'dir_path'/);
    await failsWith(S, 'ProtocolError', ['admin.pool.Add', 'dom0', 'file-reflink', `dir_path=${d}\n`], /'name'/);
    await failsWith(S, 'QubesValueError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\ndir_path=${d}\nrevisions_to_keep=-2\n`], /revisions_to_keep/);
    await failsWith(S, 'ProtocolError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\nname=x2\ndir_path=${d}\n`]);
    await failsWith(S, 'ProtocolError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\njunk\n`]);
    await failsWith(S, 'ProtocolError', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x/1\ndir_path=${d}\n`]);
    await failsWith(S, 'StoragePoolException', ['admin.pool.Add', 'dom0', 'nosuchdriver', `name=x1\ndir_path=${d}\n`], /nosuchdriver/);
    if (!tfs.reflink)
      await failsWith(S, 'StoragePoolException', ['admin.pool.Add', 'dom0', 'file-reflink', `name=x1\ndir_path=${d}\n`], /reflink/);
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n', 'nothing was added');
  });

  test('Add refuses places that are, hold or lie inside another pool or the base directory, changing nothing', async () => {
    const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const add = (name: string, dir: string): [string, string, string, string] => ['admin.pool.Add', 'dom0', 'file-reflink', `name=${name}\ndir_path=${dir}\nsetup_check=False\n`];
    const alias = path.join(rig.dir, 'alias');
    await fs.symlink(rig.poolDir, alias);
    const etc = path.join(rig.dir, 'etc');
    await fs.mkdir(path.join(etc, 'appvms'), { recursive: true });
    await fs.writeFile(path.join(etc, 'appvms', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
    try {
      const before = await listTree(rig.dir);
      await failsWith(S, 'QubesValueError', add('twin', alias), new RegExp(`^pool twin: dir_path ${esc(alias)} \\(real path ${esc(rig.poolDir)}\\) is pool default \\(dir_path ${esc(rig.poolDir)}\\)$`));
      await failsWith(S, 'QubesValueError', add('inside', path.join(rig.poolDir, 'appvms', 'sub')), /^pool inside: dir_path .*\/pool\/appvms\/sub lies inside pool default/);
      await failsWith(S, 'QubesValueError', add('up', path.dirname(rig.dir)), /^pool up: dir_path .* holds the directory of the state file/);
      await failsWith(S, 'QubesValueError', add('etc', etc), /^pool etc: dir_path .*\/etc\/appvms already holds 'passwd', which are not a pool's/);
      assert.deepEqual(await listTree(rig.dir), before, 'refused adds made nothing');
      assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n');
    } finally {
      await fs.rm(alias);
      await fs.rm(etc, { recursive: true });
    }
  });

  test("Add varlibqubes at the base directory (Qubes' own layout): accepted beside the state and BASE/pool; BASE/appvms then refused", async () => {
    const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const add = (name: string, dir: string): [string, string, string, string] => ['admin.pool.Add', 'dom0', 'file-reflink', `name=${name}\ndir_path=${dir}\nsetup_check=${tfs.reflink ? 'True' : 'False'}\n`];
    const state = await fs.readFile(path.join(rig.dir, 'qubes.xml'), 'utf8');
    assert.equal(await ok(S, ...add('varlibqubes', rig.dir)), '');
    try {
      assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\nvarlibqubes\n');
      assert.match(await ok(S, 'admin.pool.Info', 'dom0', 'varlibqubes'), new RegExp(`^dir_path=${esc(rig.dir)}\ndriver=file-reflink\n`));
      assert.ok((await fs.readdir(rig.dir)).includes('appvms'));
      await failsWith(S, 'QubesValueError', add('vols', path.join(rig.dir, 'appvms')), new RegExp(`^pool vols: dir_path ${esc(rig.dir)}/appvms lies inside pool varlibqubes \\(dir_path ${esc(rig.dir)}\\): `));
      await failsWith(S, 'QubesValueError', add('up', path.dirname(rig.dir)), /^pool up: dir_path .* holds the directory of the state file/);
    } finally {
      assert.equal(await ok(S, 'admin.pool.Remove', 'dom0', 'varlibqubes'), '');
    }
    assert.equal(await ok(S, 'admin.pool.List', 'dom0'), 'default\n');
    assert.equal(await fs.readFile(path.join(rig.dir, 'qubes.xml'), 'utf8'), state, 'the state is as before the add and remove');
    await fs.rmdir(path.join(rig.dir, 'appvms'));
    await fs.rmdir(path.join(rig.dir, 'vm-templates'));
  });

  test('argument and destination errors', async () => {
    for (const m of ['admin.pool.Info', 'admin.pool.UsageDetails', 'admin.pool.Remove', 'admin.pool.volume.List'])
      await failsWith(S, 'PermissionDenied', [m, 'dom0', 'nosuch'], /nosuch/);
    await failsWith(S, 'PermissionDenied', ['admin.pool.Set.revisions_to_keep', 'dom0', 'nosuch', '1']);
    await failsWith(S, 'ProtocolError', ['admin.pool.List', 'dom0', 'x']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Info', 'dom0']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Info', 'dom0', 'bad@name']);
    await failsWith(S, 'ProtocolError', ['admin.pool.List', 'somevm']);
    await failsWith(S, 'ProtocolError', ['admin.pool.List', 'dom0', '', 'x']);
  });

  test('Set errors: numbers and booleans per the validation rules', async () => {
    await failsWith(S, 'QubesValueError', ['admin.pool.Set.revisions_to_keep', 'dom0', 'default', '-2']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Set.revisions_to_keep', 'dom0', 'default', '01']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Set.revisions_to_keep', 'dom0', 'default', '1x']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Set.revisions_to_keep', 'dom0', 'default', '']);
    await failsWith(S, 'ProtocolError', ['admin.pool.Set.ephemeral_volatile', 'dom0', 'default', 'true']);
    assert.match(await ok(S, 'admin.pool.Info', 'dom0', 'default'), /\nephemeral_volatile=False\n[^]*\nrevisions_to_keep=1\n/);
  });

  test('an unknown method under admin.pool is PermissionDenied', async () => {
    const r = await raw(S, 'admin.pool.Set.dir_path', 'dom0', 'default', '/x');
    assert.equal(r.subarray(0, 20).toString('latin1'), '2\0PermissionDenied\0\0');
    assert.equal((await fails(S, 'admin.pool.Frobnicate', 'dom0')).name, 'PermissionDenied');
  });
});
