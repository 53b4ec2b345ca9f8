// Hostile names and paths thrown at the daemon over its socket: every one is
// refused with a documented error (or neutralized), nothing is written
// outside the pool directory (checked by a walk of the filesystem), and each
// refusal is in the log with its reason.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { listFiles } from '../helpers/data.js';
import { startRig, fails, ok, raw, type Rig } from '../admin/methods/helpers.js';

const DOCUMENTED = new Set(['QubesValueError', 'ProtocolError', 'PermissionDenied', 'QubesVMNotFoundError', 'StoragePoolException', 'QubesVolumeRevisionNotFoundError', 'QubesPoolInUseError', 'QubesVMInvalidUUIDError']);

describeEachFs('hostile names and paths', (tfs, ctx) => {
  let rig: Rig | undefined;
  after(async () => rig?.stop());

  it('are refused or neutralized, write nothing outside the pool, and are logged', async () => {
    const top = await ctx.tempDir('hostile');
    const dir = path.join(top, 'base');
    const outside = path.join(top, 'outside');
    await fs.mkdir(dir);
    await fs.mkdir(outside);
    await fs.writeFile(path.join(outside, 'secret'), 'do not touch');
    rig = await startRig(tfs, dir);
    const s = rig.socketPath;
    await ok(s, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await ok(s, 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=work label=red');
    const refusals: string[] = [];
    const refuse = async (what: string, method: string, dest: string, arg = '', payload = '') => {
      const e = await fails(s, method, dest, arg, payload);
      assert.ok(DOCUMENTED.has(e.name), `${what}: ${e.name}: ${e.message}`);
      refusals.push(`${what}: ${e.name}`);
    };

    // Domain names: path separators, dots, control bytes, length, look-alikes, reserved names.
    const badNames = ['../evil', 'a/b', '..', '.hidden', '-x', 'x'.repeat(32), 'ԝork', 'wоrk', 'Domain-0', 'none', 'default', 'sys-dm', 'a\tb', 'é'];
    for (const n of badNames) await refuse(`domain name ${JSON.stringify(n)}`, 'admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${n} label=red`);
    // A destination that is not a name is a framing error: the connection is dropped, as the spec says.
    for (const d of ['../work', 'work/..', 'a\nb', 'x'.repeat(300)]) {
      const r = await raw(s, 'admin.vm.volume.Info', d, 'private');
      assert.ok(r.length === 0 || r.subarray(0, 2).toString('latin1') === '2\0', `destination ${JSON.stringify(d)}: ${r.toString('latin1')}`);
      refusals.push(`destination ${JSON.stringify(d)}: ${r.length ? 'error' : 'dropped'}`);
    }
    // Volume names as arguments (in the header: a malformed one drops the connection).
    for (const v of ['../root', 'private/../../x', '..', 'private\n', 'root\0']) {
      const r = await raw(s, 'admin.vm.volume.Info', 'work', v);
      if (r.length === 0) {
        refusals.push(`volume ${JSON.stringify(v)}: dropped`);
        continue;
      }
      const text = r.toString('utf8');
      assert.ok(text.startsWith('2\0') && DOCUMENTED.has(text.slice(2).split('\0')[0]!), `volume ${JSON.stringify(v)}: ${text}`);
      refusals.push(`volume ${JSON.stringify(v)}: ${text.slice(2).split('\0')[0]}`);
    }
    // Pool names and directories.
    for (const p of ['../p', 'a/b', 'p q', 'x'.repeat(100), '', '..', '.'])
      await refuse(`pool name ${JSON.stringify(p)}`, 'admin.pool.Add', 'dom0', 'file-reflink', `name=${p}\ndir_path=${outside}/p\nsetup_check=False\n`);
    await refuse('relative dir_path', 'admin.pool.Add', 'dom0', 'file-reflink', 'name=rel\ndir_path=../../outside\nsetup_check=False\n');
    await refuse('dir_path among the volumes of another pool', 'admin.pool.Add', 'dom0', 'file-reflink', `name=nested\ndir_path=${rig.poolDir}/appvms/x\nsetup_check=False\n`);
    await refuse('dir_path of another pool', 'admin.pool.Add', 'dom0', 'file-reflink', `name=twin\ndir_path=${rig.poolDir}\nsetup_check=False\n`);
    await fs.symlink(outside, path.join(dir, 'link'));
    await refuse('dir_path at a symlink', 'admin.pool.Add', 'dom0', 'file-reflink', `name=linked\ndir_path=${dir}/link\nsetup_check=False\n`);
    // Revisions.
    for (const r of ['../../../etc/passwd', '1/../2', '1\n2', '-1', '99'])
      await refuse(`revision ${JSON.stringify(r)}`, 'admin.vm.volume.Revert', 'work', 'private', r);
    // Symlinks planted inside the pool, pointing outside it.
    await fs.symlink(path.join(outside, 'secret'), path.join(rig.poolDir, 'appvms/work/private.img.7@2026-01-01T00:00:00Z'));
    await refuse('planted revision symlink', 'admin.vm.volume.Revert', 'work', 'private', '7');
    await refuse('planted revision symlink (start)', 'admin.vm.Start', 'work');
    await fs.unlink(path.join(rig.poolDir, 'appvms/work/private.img.7@2026-01-01T00:00:00Z'));
    await fs.symlink(outside, path.join(rig.poolDir, 'appvms', 'victim'));
    await refuse('planted domain directory symlink', 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=victim label=red');
    await fs.rename(path.join(rig.poolDir, 'vm-templates/tpl/root.img'), path.join(rig.poolDir, 'vm-templates/tpl/root.real'));
    await fs.symlink(path.join(outside, 'secret'), path.join(rig.poolDir, 'vm-templates/tpl/root.img'));
    await refuse('planted source symlink (snapshot start)', 'admin.vm.Start', 'work');
    await fs.unlink(path.join(rig.poolDir, 'vm-templates/tpl/root.img'));
    await fs.rename(path.join(rig.poolDir, 'vm-templates/tpl/root.real'), path.join(rig.poolDir, 'vm-templates/tpl/root.img'));

    // A '%' in a name reaches the message doubled on the wire (Qubes clients %-format messages).
    const pct = await raw(s, 'admin.vm.feature.Get', 'work', 'a%s');
    assert.match(pct.toString('utf8'), /a%%s/);

    // The daemon still works, and nothing was written outside the pool.
    await ok(s, 'admin.vm.Start', 'work');
    await ok(s, 'admin.vm.Shutdown', 'work');
    assert.deepEqual(await listFiles(outside), ['secret']);
    assert.equal(await fs.readFile(path.join(outside, 'secret'), 'utf8'), 'do not touch');
    const stray = (await listFiles(top)).filter((f) => !f.startsWith('base/') && !f.startsWith('outside/'));
    assert.deepEqual(stray, [], 'nothing beside the base directory');
    // Audited: one warning line with the reason per refusal, control bytes escaped.
    const warnings = rig.log.lines.filter((l) => l.startsWith('warn call ') && / reason="/.test(l));
    assert.ok(warnings.length >= refusals.filter((r) => !r.endsWith('dropped')).length, `${warnings.length} logged refusals for ${refusals.length}`);
    assert.ok(rig.log.lines.every((l) => !l.includes('\n')), 'no raw newline reaches the log');
  });
});
