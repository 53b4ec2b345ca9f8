/**
 * admin.vm.List and admin.vm.ListDetails over a real qubesd socket: the
 * reply's lines, and the policy. admin.vm.List, as Qubes filters it: a
 * caller other than dom0 gets only the domains on which the policy grants
 * it admin.vm.List; dom0 gets every domain. ListDetails: of those, only
 * the domains on which the policy grants every other call the reply stands
 * for (admin.vm.property.GetAll, admin.vm.volume.List, admin.vm.volume.Info
 * of each volume), and nothing without a rule for the call itself.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AdminClient } from '../../src/admin/client.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { PermissionDenied, ProtocolError } from '../../src/storage/errors.js';
import { daemonScope, startQubesd, type DaemonProc } from '../daemon/helpers.js';

const MiB = 1024 * 1024;

/** Names of the domains in a ListDetails reply (its `vm` lines). */
function listed(reply: string): string[] {
  return reply
    .split('\n')
    .filter((l) => l.startsWith('vm '))
    .map((l) => l.split(' ')[1]!);
}

describe('admin.vm.ListDetails', () => {
  const scope = daemonScope();
  let base = '';
  let daemon: DaemonProc;
  let sock = '';
  const as = (source: string) => new AdminClient({ socketPath: sock, source });

  before(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-list-details-'));
    const rt = await openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
    try {
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      for (const name of ['open', 'nolist', 'noprops', 'noinfo', 'mgmt']) await rt.app.createDomain({ klass: 'AppVM', name, label: 'red', template: 'tpl' });
    } finally {
      await rt.close();
    }
    // mgmt may call ListDetails; on `open` it has every call the reply stands
    // for, on each of the others one is missing (on noinfo: Info of private).
    // dom0 has admin.vm.List on dom0 only, and still lists every domain (as in Qubes).
    const policy = [
      'dom0 admin.vm.List dom0',
      'dom0 admin.vm.ListDetails *',
      'dom0 admin.vm.property.GetAll *',
      'dom0 admin.vm.volume.* *',
      'mgmt admin.vm.ListDetails dom0',
      'mgmt admin.vm.ListDetails noinfo',
      'mgmt admin.vm.List *',
      'mgmt admin.vm.property.GetAll open',
      'mgmt admin.vm.property.GetAll nolist',
      'mgmt admin.vm.property.GetAll noinfo',
      'mgmt admin.vm.volume.* open',
      'mgmt admin.vm.volume.* nolist',
      'mgmt admin.vm.volume.* noprops',
      'mgmt admin.vm.volume.List noinfo',
      'mgmt admin.vm.volume.Info+root noinfo',
      'mgmt admin.vm.volume.Info+volatile noinfo',
      'mgmt admin.vm.volume.Info+kernel noinfo',
      // lister: everything but admin.vm.List, which it has on open only.
      'lister admin.vm.ListDetails dom0',
      'lister admin.vm.List open',
      'lister admin.vm.property.GetAll *',
      'lister admin.vm.volume.* *',
      // viewer: admin.vm.List on dom0 (the whole list), open and tpl.
      'viewer admin.vm.List dom0',
      'viewer admin.vm.List open',
      'viewer admin.vm.List tpl',
    ].join('\n');
    await fs.writeFile(path.join(base, 'policy'), `${policy}\n`);
    sock = await scope.sock();
    daemon = await startQubesd(base, sock, ['--policy', path.join(base, 'policy')]);
    scope.running.push(daemon);
  });
  after(async () => {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    await fs.rm(base, { recursive: true, force: true });
  });

  it('dom0: every domain, each with its vm line, its properties and a pool per volume', async () => {
    const reply = (await as('dom0').call('admin.vm.ListDetails', 'dom0')).toString();
    assert.deepEqual(listed(reply), ['dom0', 'mgmt', 'noinfo', 'nolist', 'noprops', 'open', 'tpl']);
    const open = reply.split('\n').filter((l) => l.split(' ')[1] === 'open');
    assert.match(open[0]!, /^vm open class=AppVM state=Halted uuid=[0-9a-f-]{36}$/);
    assert.ok(open.includes('property open label default=False type=label red'), open.join('\n'));
    assert.ok(open.includes('property open template default=False type=vm tpl'), open.join('\n'));
    assert.deepEqual(
      open.filter((l) => l.startsWith('volume ')),
      ['volume open root pool=default', 'volume open private pool=default', 'volume open volatile pool=default', 'volume open kernel pool=linux-kernel'],
    );
  });

  it('an argument naming properties: only their lines, the vm and volume lines unchanged', async () => {
    const reply = (await as('dom0').call('admin.vm.ListDetails', 'dom0', 'label+template+no_such_property')).toString();
    assert.deepEqual(listed(reply), ['dom0', 'mgmt', 'noinfo', 'nolist', 'noprops', 'open', 'tpl']);
    const props = reply.split('\n').filter((l) => l.startsWith('property '));
    // The template has no `template` property: only its label; each AppVM both.
    assert.deepEqual(
      props.filter((l) => /^property (open|tpl) /.test(l)),
      ['property open label default=False type=label red', 'property open template default=False type=vm tpl', 'property tpl label default=False type=label black'],
    );
    assert.ok(props.every((l) => / (label|template) /.test(l)), props.join('\n'));
    assert.equal(reply.split('\n').filter((l) => l.startsWith('volume open ')).length, 4);
  });

  it('an argument that is not property names joined by +: a protocol error, nothing listed', async () => {
    for (const arg of ['label+', '+label', 'label++netvm', 'la/bel', '1label', Array.from({ length: 65 }, (_, i) => `p${i}`).join('+')])
      await assert.rejects(as('dom0').call('admin.vm.ListDetails', 'dom0', arg), ProtocolError, arg);
  });

  it('a DEST other than dom0: only that domain', async () => {
    assert.deepEqual(listed((await as('dom0').call('admin.vm.ListDetails', 'open')).toString()), ['open']);
  });

  it('another caller: only the domains on which it may make every call the reply stands for', async () => {
    // dom0, tpl, mgmt, noprops: no GetAll rule; noinfo: no Info of private.
    assert.deepEqual(listed((await as('mgmt').call('admin.vm.ListDetails', 'dom0')).toString()), ['nolist', 'open']);
    // lister may not list (admin.vm.List) any domain but open.
    assert.deepEqual(listed((await as('lister').call('admin.vm.ListDetails', 'dom0')).toString()), ['open']);
  });

  it('a domain the caller may not read, named as DEST: an empty reply, not its data', async () => {
    assert.equal((await as('mgmt').call('admin.vm.ListDetails', 'noinfo')).toString(), '');
  });

  it('without a rule for the call itself: PermissionDenied', async () => {
    await assert.rejects(as('other').call('admin.vm.ListDetails', 'dom0'), PermissionDenied);
  });

  /** Names of the domains in an admin.vm.List reply. */
  const names = async (source: string, dest: string) =>
    (await as(source).call('admin.vm.List', dest))
      .toString()
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => l.split(' ')[0]!);

  it('admin.vm.List, dom0 as the caller: every domain, though the policy grants it admin.vm.List on dom0 alone', async () => {
    assert.deepEqual(await names('dom0', 'dom0'), ['dom0', 'mgmt', 'noinfo', 'nolist', 'noprops', 'open', 'tpl']);
  });

  it('admin.vm.List, another caller: only the domains the policy lets it call admin.vm.List on', async () => {
    assert.deepEqual(await names('viewer', 'dom0'), ['dom0', 'open', 'tpl']);
    assert.deepEqual(await names('mgmt', 'dom0'), ['dom0', 'mgmt', 'noinfo', 'nolist', 'noprops', 'open', 'tpl']);
    // Named as DEST: that domain, when the policy grants the call on it at all.
    assert.deepEqual(await names('viewer', 'open'), ['open']);
    await assert.rejects(as('viewer').call('admin.vm.List', 'nolist'), PermissionDenied);
    // lister has admin.vm.List on open only, not the call to dom0 (the whole list).
    await assert.rejects(as('lister').call('admin.vm.List', 'dom0'), PermissionDenied);
  });
});
