// Every documented error of the domain methods, by the class name that goes
// on the wire, and the guarantee that a refused call changes nothing (state
// file, pool files, domain list).
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles } from '../../helpers/data.js';
import { startDaemon, type Daemon } from './harness.js';

interface Case {
  /** METHOD[+ARG] DEST, then the payload. */
  readonly call: string;
  readonly payload?: string | Buffer;
  readonly error: string;
  readonly message?: RegExp;
}

const UNKNOWN_UUID = 'uuid:12345678-1234-1234-1234-123456789abc';

const CASES: readonly Case[] = [
  // unknown destinations and domains named in arguments or values
  { call: 'admin.vm.List nosuch', error: 'QubesVMNotFoundError', message: /nosuch/ },
  { call: 'admin.vm.property.Get+memory nosuch', error: 'QubesVMNotFoundError' },
  { call: `admin.vm.Start ${UNKNOWN_UUID}`, error: 'QubesVMNotFoundError' },
  { call: 'admin.vm.Remove nosuch', error: 'QubesVMNotFoundError' },
  { call: 'admin.vmclass.List nosuch', error: 'QubesVMNotFoundError' },
  { call: 'admin.vm.Create.AppVM+nosuch dom0', payload: 'name=x1 label=red', error: 'QubesVMNotFoundError', message: /nosuch/ },
  { call: 'admin.vm.property.Set+netvm work', payload: 'ghost', error: 'QubesPropertyValueError', message: /ghost/ },
  // bad names and values
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=1bad label=red', error: 'QubesValueError', message: /1bad/ },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=Domain-0 label=red', error: 'QubesValueError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=none label=red', error: 'QubesValueError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=sys-dm label=red', error: 'QubesValueError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: `name=${'a'.repeat(32)} label=red`, error: 'QubesValueError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=work label=red', error: 'QubesVMAlreadyExistsError', message: /already exists/ },
  { call: 'admin.vm.List uuid:1234', error: 'QubesVMInvalidUUIDError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x2 label=pink', error: 'QubesLabelNotFoundError', message: /pink/ },
  { call: 'admin.vm.Create.StandaloneVM+tpl dom0', payload: 'name=x3 label=red', error: 'QubesValueError', message: /template/ },
  { call: 'admin.vm.Create.TemplateVM+tpl dom0', payload: 'name=x3 label=red', error: 'QubesValueError' },
  { call: 'admin.vm.CreateInPool.AppVM+tpl dom0', payload: 'name=x4 label=red pool=nopool', error: 'QubesValueError', message: /nopool/ },
  { call: 'admin.vm.property.Set+autostart work', payload: 'maybe', error: 'QubesValueError' },
  { call: 'admin.vm.property.Set+memory work', payload: 'lots', error: 'QubesValueError' },
  { call: 'admin.vm.property.Set+memory work', payload: '12345678901234567890123', error: 'QubesValueError' },
  { call: 'admin.vm.property.Set+description work', payload: 'bell\x07', error: 'QubesValueError' },
  { call: 'admin.vm.property.Set+description work', payload: Buffer.from('caf\u00e9', 'utf8'), error: 'QubesValueError' },
  { call: 'admin.vm.property.Set+netvm work', payload: 'bad name', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.tag.Set+bad.tag work', error: 'QubesValueError' },
  { call: 'admin.vm.tag.Get+bad.tag work', error: 'QubesValueError' },
  { call: 'admin.vm.feature.Set+bad/feature work', payload: 'x', error: 'QubesValueError' },
  { call: 'admin.label.Get+pink dom0', error: 'QubesValueError' },
  { call: 'admin.label.Index+99 dom0', error: 'QubesValueError' },
  // values the property refuses in context
  { call: 'admin.vm.property.Set+template work', payload: 'work', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Set+memory work', payload: '-5', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Set+name work', payload: 'other', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Set+qid work', payload: '9', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Set+netvm work', payload: 'tpl', error: 'QubesPropertyValueError', message: /network/ },
  { call: 'admin.vm.property.Set+virt_mode work', payload: 'kvm', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Reset+name work', error: 'QubesPropertyValueError' },
  { call: 'admin.vm.property.Reset+label work', error: 'QubesPropertyValueError', message: /no default/ },
  { call: 'admin.property.Set+default_pool dom0', payload: 'nopool', error: 'QubesPropertyValueError', message: /nopool/ },
  { call: 'admin.property.Set+default_template dom0', payload: 'work', error: 'QubesPropertyValueError' },
  // power state
  { call: 'admin.vm.Remove run', error: 'QubesVMNotHaltedError' },
  { call: 'admin.vm.Start dom0', error: 'QubesVMNotHaltedError' },
  { call: 'admin.vm.property.Set+template run', payload: 'tpl', error: 'QubesVMNotHaltedError' },
  { call: 'admin.vm.Shutdown work', error: 'QubesVMNotStartedError' },
  { call: 'admin.vm.Kill work', error: 'QubesVMNotStartedError' },
  { call: 'admin.vm.Shutdown dom0', error: 'QubesVMError' },
  { call: 'admin.vm.Kill dom0', error: 'QubesVMError' },
  // in use
  { call: 'admin.vm.Remove tpl', error: 'QubesVMInUseError', message: /work \(template\)/ },
  { call: 'admin.vm.Remove dom0', error: 'QubesVMInUseError', message: /dom0/ },
  { call: 'admin.vm.Remove rpm', error: 'QubesVMInUseError', message: /package manager/ },
  // not found: properties, labels, features, tags
  { call: 'admin.vm.property.Get+nosuch work', error: 'QubesNoSuchPropertyError', message: /nosuch/ },
  { call: 'admin.vm.property.Get work', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.vm.property.Set+nosuch work', payload: '1', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.vm.property.Help+nosuch work', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.vm.property.Reset+nosuch work', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.vm.property.GetDefault+template dom0', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.property.Get+memory dom0', error: 'QubesNoSuchPropertyError' },
  { call: 'admin.vm.property.Set+label work', payload: 'pink', error: 'QubesLabelNotFoundError', message: /pink/ },
  { call: 'admin.vm.property.Set+label work', payload: 'label-99', error: 'QubesLabelNotFoundError' },
  { call: 'admin.vm.feature.Get+nope work', error: 'QubesFeatureNotFoundError', message: /nope/ },
  { call: 'admin.vm.feature.Remove+nope work', error: 'QubesFeatureNotFoundError' },
  { call: 'admin.vm.feature.CheckWithTemplate+nope work', error: 'QubesFeatureNotFoundError' },
  { call: 'admin.vm.feature.CheckWithAdminVM+nope work', error: 'QubesFeatureNotFoundError' },
  { call: 'admin.vm.feature.CheckWithNetvm+nope work', error: 'QubesFeatureNotFoundError' },
  { call: 'admin.vm.tag.Remove+nope work', error: 'QubesTagNotFoundError', message: /nope/ },
  // not kept by this daemon
  { call: 'admin.vm.firewall.Set work', payload: 'action=drop\n', error: 'QubesNotImplementedError' },
  { call: 'admin.vm.firewall.Set work', payload: '', error: 'QubesNotImplementedError' },
  { call: 'admin.vm.notes.Set work', payload: 'hello', error: 'QubesNotImplementedError' },
  // arguments and destinations a method does not accept: ProtocolError, as
  // Qubes (a method not served, and dom0's notes, stay PermissionDenied)
  { call: 'admin.vm.List+x dom0', error: 'ProtocolError' },
  { call: 'admin.vm.Start+x work', error: 'ProtocolError' },
  { call: 'admin.vm.Shutdown+now work', error: 'ProtocolError' },
  { call: 'admin.vm.Shutdown+force+later work', error: 'ProtocolError' },
  { call: 'admin.vm.CurrentState+x work', error: 'ProtocolError' },
  { call: 'admin.vm.tag.List+x work', error: 'ProtocolError' },
  { call: 'admin.vm.feature.Get work', error: 'ProtocolError' },
  { call: 'admin.vmclass.List work', error: 'ProtocolError' },
  { call: 'admin.label.List work', error: 'ProtocolError' },
  { call: 'admin.label.Get+red work', error: 'ProtocolError' },
  { call: 'admin.property.Get+default_pool work', error: 'ProtocolError' },
  { call: 'admin.deviceclass.List work', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl work', payload: 'name=x5 label=red', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AdminVM dom0', payload: 'name=x5 label=red', error: 'PermissionDenied' },
  { call: 'admin.vm.CreateInPool.AppVM+tpl dom0', payload: 'name=x5 label=red pool:bogus=default', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x6 label=1', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x7 label=re@d', error: 'ProtocolError' },
  { call: 'admin.vm.notes.Get dom0', error: 'PermissionDenied' },
  // malformed payloads
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x8 label=red color=blue', error: 'ProtocolError', message: /color/ },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x9 name=x10 label=red', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x11', error: 'ProtocolError', message: /name or label/ },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: '', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x12 label=red pool=default', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: 'name=x14 label=red novalue', error: 'ProtocolError' },
  { call: 'admin.vm.Create.AppVM+tpl dom0', payload: Buffer.from('name=x15 label=r\u00e9d', 'utf8'), error: 'ProtocolError' },
  {
    call: 'admin.vm.CreateInPool.AppVM+tpl dom0',
    payload: 'name=x13 label=red pool=default pool:private=default',
    error: 'ProtocolError',
    message: /Only one/,
  },
  { call: 'admin.vm.CreateInPool.AppVM+tpl dom0', payload: 'name=x16 label=red pool=bad/pool', error: 'ProtocolError' },
  { call: 'admin.vm.CreateInPool.AppVM+tpl dom0', payload: 'name=x17 label=red pool:root=a pool:root=b', error: 'ProtocolError' },
  { call: 'admin.vm.List dom0', payload: 'x', error: 'ProtocolError' },
  { call: 'admin.vm.property.Get+memory work', payload: 'x', error: 'ProtocolError' },
  { call: 'admin.vm.Remove work', payload: 'x', error: 'ProtocolError' },
  { call: 'admin.vm.tag.Set+t work', payload: 'x', error: 'ProtocolError' },
  { call: 'admin.vm.feature.Set+f work', payload: Buffer.from([0xff]), error: 'ProtocolError' },
];

function parse(c: Case): { method: string; arg: string; dest: string } {
  const [methodArg, dest] = c.call.split(' ') as [string, string];
  const plus = methodArg.indexOf('+');
  return plus < 0 ? { method: methodArg, arg: '', dest } : { method: methodArg.slice(0, plus), arg: methodArg.slice(plus + 1), dest };
}

describeEachFs('admin domain methods: errors', (tfs, fsctx) => {
  let d: Daemon;

  before(async () => {
    d = await startDaemon(tfs, await fsctx.tempDir('errors'));
    await d.ok('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=work label=blue');
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=run label=green');
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=rpm label=red');
    await d.ok('admin.vm.property.Set', 'rpm', 'installed_by_rpm', 'True');
    await d.ok('admin.vm.Start', 'run');
  });
  after(async () => {
    await d?.stop();
  });

  it('sends the exact error frame: class, empty traceback, message', async () => {
    assert.equal(
      (await d.raw('admin.vm.List', 'nosuch')).toString('latin1'),
      "2\0QubesVMNotFoundError\0\0no such domain: 'nosuch'\0",
    );
  });

  it('answers each refused call with its error class and changes nothing', async () => {
    const stateBefore = await fs.readFile(d.stateFile, 'utf8');
    const filesBefore = await listFiles(d.poolDir);
    const listBefore = await d.ok('admin.vm.List', 'dom0');
    const wrong: string[] = [];
    for (const c of CASES) {
      const { method, arg, dest } = parse(c);
      const e = await d.fail(method, dest, arg, c.payload ?? '');
      if (e.name !== c.error) wrong.push(`${c.call}: expected ${c.error}, got ${e.name}: ${e.message}`);
      else if (c.message && !c.message.test(e.message)) wrong.push(`${c.call}: message '${e.message}' does not match ${c.message}`);
    }
    assert.deepEqual(wrong, []);
    assert.equal(await fs.readFile(d.stateFile, 'utf8'), stateBefore, 'state file unchanged');
    assert.deepEqual(await listFiles(d.poolDir), filesBefore, 'pool files unchanged');
    assert.equal(await d.ok('admin.vm.List', 'dom0'), listBefore);
  });

  it('lets remove through once the users are gone', async () => {
    await d.ok('admin.vm.property.Set', 'rpm', 'installed_by_rpm', 'False');
    await d.ok('admin.vm.Remove', 'rpm');
    await d.ok('admin.vm.Shutdown', 'run');
    await d.ok('admin.vm.Remove', 'run');
    assert.equal((await d.fail('admin.vm.Remove', 'tpl')).name, 'QubesVMInUseError');
    await d.ok('admin.vm.Remove', 'work');
    await d.ok('admin.vm.Remove', 'tpl');
    assert.equal(await d.ok('admin.vm.List', 'dom0'), 'dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000\n');
    assert.deepEqual(await listFiles(d.poolDir), []);
  });
});
