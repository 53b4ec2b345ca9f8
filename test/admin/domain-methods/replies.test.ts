// The exact reply bytes of every domain method for a known state, over a
// real Unix socket: tpl (TemplateVM) and work (AppVM on tpl) made through
// admin.vm.Create, with a property, tags and features set through the API.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { describeEachFs } from '../../helpers/filesystems.js';
import { startDaemon, type Daemon } from './harness.js';

const OK = (text = ''): Buffer => Buffer.from(`0\0${text}`, 'utf8');
const DOM0_UUID = '00000000-0000-0000-0000-000000000000';

describeEachFs('admin domain methods: reply bytes', (tfs, fsctx) => {
  let d: Daemon;
  let tplUuid: string;
  let workUuid: string;

  /** Asserts the reply bytes of one call. */
  const expect = async (method: string, dest: string, arg: string, payload: string, want: Buffer | string): Promise<void> => {
    const got = await d.raw(method, dest, arg, payload);
    const w = typeof want === 'string' ? OK(want) : want;
    assert.equal(JSON.stringify(got.toString('latin1')), JSON.stringify(w.toString('latin1')), `${method}+${arg} ${dest}`);
  };

  before(async () => {
    d = await startDaemon(tfs, await fsctx.tempDir('replies'));
    // Creation replies are empty successes.
    await expect('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black', OK());
    await expect('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=work label=blue', OK());
    await expect('admin.vm.property.Set', 'work', 'memory', '800', OK());
    await expect('admin.vm.tag.Set', 'work', 'alpha', '', OK());
    await expect('admin.vm.feature.Set', 'work', 'service.x', '1', OK());
    await expect('admin.vm.feature.Set', 'work', 'gui', '', OK());
    await expect('admin.vm.feature.Set', 'tpl', 'os', 'Linux', OK());
    await expect('admin.vm.feature.Set', 'dom0', 'menu', 'yes', OK());
    tplUuid = d.app.domain('tpl').uuid;
    workUuid = d.app.domain('work').uuid;
  });
  after(async () => {
    await d?.stop();
  });

  it('admin.vm.List: every domain for dom0, only itself for a domain, by name or uuid', async () => {
    const all =
      `dom0 class=AdminVM state=Running uuid=${DOM0_UUID}\n` +
      `tpl class=TemplateVM state=Halted uuid=${tplUuid}\n` +
      `work class=AppVM state=Halted uuid=${workUuid}\n`;
    await expect('admin.vm.List', 'dom0', '', '', all);
    await expect('admin.vm.List', 'work', '', '', `work class=AppVM state=Halted uuid=${workUuid}\n`);
    await expect('admin.vm.List', `uuid:${tplUuid}`, '', '', `tpl class=TemplateVM state=Halted uuid=${tplUuid}\n`);
  });

  it('admin.vmclass.List, admin.label.*, deviceclass, firewall and notes', async () => {
    await expect('admin.vmclass.List', 'dom0', '', '', 'AdminVM\nAppVM\nDispVM\nStandaloneVM\nTemplateVM\n');
    await expect('admin.label.List', 'dom0', '', '', 'red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n');
    await expect('admin.label.Get', 'dom0', 'red', '', '0xcc0000');
    await expect('admin.label.Get', 'dom0', '3', '', '0xedd400');
    await expect('admin.label.Index', 'dom0', 'purple', '', '7');
    await expect('admin.label.Index', 'dom0', 'black', '', '8');
    await expect('admin.deviceclass.List', 'dom0', '', '', '');
    await expect('admin.vm.firewall.Get', 'work', '', '', 'action=accept\n');
    await expect('admin.vm.firewall.Set', 'work', '', 'action=accept\n', '');
    await expect('admin.vm.firewall.Reload', 'work', '', '', '');
    await expect('admin.vm.notes.Get', 'work', '', '', '');
    await expect('admin.vm.notes.Set', 'work', '', '', '');
  });

  it('admin.vm.property.List, Get, GetDefault, Help of a domain', async () => {
    await expect(
      'admin.vm.property.List',
      'work',
      '',
      '',
      'autostart\ndebug\ndefault_dispvm\ndescription\ninclude_in_backups\ninstalled_by_rpm\nkernel\nkernelopts\nklass\nlabel\n' +
        'maxmem\nmemory\nname\nnetvm\nprovides_network\nqid\nqrexec_timeout\nshutdown_timeout\ntemplate\ntemplate_for_dispvms\n' +
        'uuid\nvcpus\nvirt_mode\n',
    );
    await expect('admin.vm.property.Get', 'work', 'memory', '', 'default=False type=int 800');
    await expect('admin.vm.property.Get', 'work', 'maxmem', '', 'default=True type=int 4000');
    await expect('admin.vm.property.Get', 'work', 'label', '', 'default=False type=label blue');
    await expect('admin.vm.property.Get', 'work', 'template', '', 'default=False type=vm tpl');
    await expect('admin.vm.property.Get', 'work', 'netvm', '', 'default=True type=vm ');
    await expect('admin.vm.property.Get', 'work', 'autostart', '', 'default=True type=bool False');
    await expect('admin.vm.property.Get', 'work', 'include_in_backups', '', 'default=True type=bool True');
    await expect('admin.vm.property.Get', 'work', 'klass', '', 'default=True type=str AppVM');
    await expect('admin.vm.property.Get', 'dom0', 'label', '', 'default=True type=label black');
    await expect('admin.vm.property.Get', 'dom0', 'qid', '', 'default=True type=int 0');
    await expect('admin.vm.property.GetDefault', 'work', 'memory', '', 'type=int 400');
    await expect('admin.vm.property.GetDefault', 'work', 'template', '', 'type=vm ');
    await expect('admin.vm.property.GetDefault', 'work', 'name', '', '');
    await expect('admin.vm.property.GetDefault', 'work', 'label', '', '');
    await expect('admin.vm.property.GetDefault', 'dom0', 'label', '', 'type=label black');
    await expect('admin.vm.property.Help', 'work', 'memory', '', 'Initial memory in MiB.');
    await expect('admin.vm.property.List', 'dom0', '', '', 'description\nklass\nlabel\nname\nqid\nuuid\n');
  });

  it('admin.vm.property.GetAll: one escaped line per property, sorted', async () => {
    const lines = [
      'autostart default=True type=bool False',
      'debug default=True type=bool False',
      'default_dispvm default=True type=vm ',
      'description default=True type=str ',
      'include_in_backups default=True type=bool True',
      'installed_by_rpm default=True type=bool False',
      'kernel default=True type=str ',
      'kernelopts default=True type=str ',
      'klass default=True type=str AppVM',
      'label default=False type=label blue',
      'maxmem default=True type=int 4000',
      'memory default=False type=int 800',
      'name default=False type=str work',
      'netvm default=True type=vm ',
      'provides_network default=True type=bool False',
      'qid default=False type=int 2',
      'qrexec_timeout default=True type=int 60',
      'shutdown_timeout default=True type=int 60',
      'template default=False type=vm tpl',
      'template_for_dispvms default=True type=bool False',
      `uuid default=False type=str ${workUuid}`,
      'vcpus default=True type=int 2',
      'virt_mode default=True type=str pvh',
    ];
    await expect('admin.vm.property.GetAll', 'work', '', '', lines.map((l) => `${l}\n`).join(''));
    // A value with a newline and a backslash is escaped in GetAll, raw in Get.
    await expect('admin.vm.property.Set', 'work', 'description', 'two\nlines \\ here', OK());
    await expect('admin.vm.property.Get', 'work', 'description', '', 'default=False type=str two\nlines \\ here');
    const all = (await d.raw('admin.vm.property.GetAll', 'work')).toString('utf8');
    assert.ok(all.includes('\ndescription default=False type=str two\\nlines \\\\ here\n'), all);
    await expect('admin.vm.property.Reset', 'work', 'description', '', OK());
    await expect('admin.vm.property.Get', 'work', 'description', '', 'default=True type=str ');
  });

  it('admin.property.* on the global settings', async () => {
    await expect(
      'admin.property.List',
      'dom0',
      '',
      '',
      'default_dispvm\ndefault_kernel\ndefault_pool\ndefault_pool_kernel\ndefault_pool_private\ndefault_pool_root\ndefault_pool_volatile\ndefault_template\n',
    );
    await expect('admin.property.Get', 'dom0', 'default_pool', '', 'default=True type=str default');
    await expect('admin.property.Get', 'dom0', 'default_template', '', 'default=True type=vm ');
    await expect('admin.property.GetDefault', 'dom0', 'default_pool_root', '', 'type=str default');
    await expect('admin.property.Help', 'dom0', 'default_pool', '', 'Pool for new volumes when no per-volume default is set.');
    await expect('admin.property.Set', 'dom0', 'default_template', 'tpl', OK());
    await expect(
      'admin.property.GetAll',
      'dom0',
      '',
      '',
      'default_dispvm default=True type=vm \n' +
        'default_kernel default=True type=str \n' +
        'default_pool default=True type=str default\n' +
        'default_pool_kernel default=True type=str \n' +
        'default_pool_private default=True type=str default\n' +
        'default_pool_root default=True type=str default\n' +
        'default_pool_volatile default=True type=str default\n' +
        'default_template default=False type=vm tpl\n',
    );
    await expect('admin.property.Reset', 'dom0', 'default_template', '', OK());
    await expect('admin.property.Get', 'dom0', 'default_template', '', 'default=True type=vm ');
  });

  it('admin.vm.tag.* and admin.vm.feature.*', async () => {
    await expect('admin.vm.tag.List', 'work', '', '', 'alpha\ncreated-by-dom0\n');
    await expect('admin.vm.tag.Get', 'work', 'alpha', '', '1');
    await expect('admin.vm.tag.Get', 'work', 'beta', '', '0');
    await expect('admin.vm.tag.Set', 'work', 'alpha', '', OK());
    await expect('admin.vm.tag.Set', 'work', 'beta', '', OK());
    await expect('admin.vm.tag.List', 'work', '', '', 'alpha\nbeta\ncreated-by-dom0\n');
    await expect('admin.vm.tag.Remove', 'work', 'beta', '', OK());
    await expect('admin.vm.tag.List', 'dom0', '', '', '');

    await expect('admin.vm.feature.List', 'work', '', '', 'service.x\ngui\n');
    await expect('admin.vm.feature.Get', 'work', 'service.x', '', '1');
    await expect('admin.vm.feature.Get', 'work', 'gui', '', '');
    await expect('admin.vm.feature.Set', 'work', 'service.x', '0', OK());
    await expect('admin.vm.feature.List', 'work', '', '', 'service.x\ngui\n');
    await expect('admin.vm.feature.CheckWithTemplate', 'work', 'os', '', 'Linux');
    await expect('admin.vm.feature.CheckWithTemplate', 'work', 'gui', '', '');
    await expect('admin.vm.feature.CheckWithAdminVM', 'work', 'menu', '', 'yes');
    await expect('admin.vm.feature.CheckWithTemplateAndAdminVM', 'work', 'os', '', 'Linux');
    await expect('admin.vm.feature.CheckWithTemplateAndAdminVM', 'work', 'menu', '', 'yes');
    await expect('admin.vm.feature.Remove', 'work', 'gui', '', OK());
    await expect('admin.vm.feature.List', 'work', '', '', 'service.x\n');
    await expect('admin.vm.feature.List', 'tpl', '', '', 'os\n');
  });

  it('admin.vm.CurrentState, Start, Shutdown, Kill, then Remove', async () => {
    await expect('admin.vm.CurrentState', 'work', '', '', 'mem=0 mem_static_max=0 cputime=0 power_state=Halted');
    await expect('admin.vm.CurrentState', 'dom0', '', '', 'mem=0 mem_static_max=0 cputime=0 power_state=Running');
    await expect('admin.vm.Start', 'work', '', '', OK());
    await expect('admin.vm.Start', 'work', '', '', OK()); // already running: nothing to do
    await expect('admin.vm.CurrentState', 'work', '', '', 'mem=0 mem_static_max=0 cputime=0 power_state=Running');
    await expect('admin.vm.List', 'work', '', '', `work class=AppVM state=Running uuid=${workUuid}\n`);
    await expect('admin.vm.Shutdown', 'work', 'force+wait', '', OK());
    await expect('admin.vm.CurrentState', 'work', '', '', 'mem=0 mem_static_max=0 cputime=0 power_state=Halted');
    await expect('admin.vm.Start', 'work', '', '', OK());
    await expect('admin.vm.Kill', 'work', '', '', OK());
    await expect('admin.vm.CurrentState', 'work', '', '', 'mem=0 mem_static_max=0 cputime=0 power_state=Halted');
    await expect('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl', 'name=other label=green pool=default', OK());
    await expect('admin.vm.CreateInPool.StandaloneVM', 'dom0', '', 'name=sa label=red pool:root=default pool:private=default', OK());
    await expect('admin.vm.property.Get', 'other', 'template', '', 'default=False type=vm tpl');
    await expect('admin.vm.Remove', 'sa', '', '', OK());
    await expect('admin.vm.Remove', 'other', '', '', OK());
    await expect('admin.vm.Remove', 'work', '', '', OK());
    await expect('admin.vm.List', 'dom0', '', '', `dom0 class=AdminVM state=Running uuid=${DOM0_UUID}\ntpl class=TemplateVM state=Halted uuid=${tplUuid}\n`);
  });
});
