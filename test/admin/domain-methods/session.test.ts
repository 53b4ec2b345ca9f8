// What the stock clients do, call by call, over the socket: qvm-create,
// qvm-prefs, qvm-start, qvm-shutdown --wait (admin.Events), qvm-remove; and
// property Set/Get round trips for every wire type, kept across a restart.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles } from '../../helpers/data.js';
import { showEvent, startDaemon, type Daemon } from './harness.js';

/** qubesadmin's reading of a property.Get reply: `default=X type=T VALUE`. */
function deserialize(reply: string): { isDefault: boolean; type: string; value: string } {
  const m = /^default=(True|False) type=(str|int|bool|vm|label) ([\s\S]*)$/.exec(reply);
  assert.ok(m, `not a property reply: ${JSON.stringify(reply)}`);
  return { isDefault: m[1] === 'True', type: m[2]!, value: m[3]! };
}

/** qubesadmin's reading of GetAll: unescape, then NAME and a Get reply per line. */
function parseGetAll(text: string): Map<string, ReturnType<typeof deserialize>> {
  const out = new Map<string, ReturnType<typeof deserialize>>();
  for (const line of text.split('\n').filter((l) => l !== '')) {
    const unescaped = line.replace(/\\(n|\\)/g, (_m, c: string) => (c === 'n' ? '\n' : '\\'));
    const sp = unescaped.indexOf(' ');
    out.set(unescaped.slice(0, sp), deserialize(unescaped.slice(sp + 1)));
  }
  return out;
}

/** qubesadmin's reading of admin.vm.List. */
function parseVmList(text: string): Map<string, Record<string, string>> {
  const out = new Map<string, Record<string, string>>();
  for (const line of text.split('\n').filter((l) => l !== '')) {
    const [name, ...kv] = line.split(' ');
    out.set(name!, Object.fromEntries(kv.map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)])));
  }
  return out;
}

const powerState = (reply: string): string => /power_state=(\w+)/.exec(reply)?.[1] ?? '?';

describeEachFs('admin domain methods: client sessions', (tfs, fsctx) => {
  let d: Daemon;

  before(async () => {
    d = await startDaemon(tfs, await fsctx.tempDir('session'));
    await d.ok('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
  });
  after(async () => {
    await d?.stop();
  });

  it('qvm-create, qvm-prefs, qvm-start, qvm-shutdown --wait, qvm-remove', async () => {
    const watch = await d.events('dom0');

    // qvm-create -t tpl -l red w2
    assert.ok(parseVmList(await d.ok('admin.vm.List', 'dom0')).has('tpl'));
    assert.ok((await d.ok('admin.label.List', 'dom0')).split('\n').includes('red'));
    assert.equal(await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=w2 label=red'), '');
    const listed = parseVmList(await d.ok('admin.vm.List', 'dom0')).get('w2');
    assert.deepEqual(listed, { class: 'AppVM', state: 'Halted', uuid: d.app.domain('w2').uuid });

    // qvm-prefs w2 memory 800 ; qvm-prefs w2 memory ; qvm-prefs w2
    await d.ok('admin.vm.property.Set', 'w2', 'memory', '800');
    assert.deepEqual(deserialize(await d.ok('admin.vm.property.Get', 'w2', 'memory')), { isDefault: false, type: 'int', value: '800' });
    const names = (await d.ok('admin.vm.property.List', 'w2')).split('\n').filter((l) => l !== '');
    const all = parseGetAll(await d.ok('admin.vm.property.GetAll', 'w2'));
    assert.deepEqual([...all.keys()], names);
    assert.deepEqual(all.get('template'), { isDefault: false, type: 'vm', value: 'tpl' });
    assert.deepEqual(all.get('label'), { isDefault: false, type: 'label', value: 'red' });
    for (const n of names) assert.deepEqual(all.get(n), deserialize(await d.ok('admin.vm.property.Get', 'w2', n)), n);

    // qvm-start w2
    assert.equal(powerState(await d.ok('admin.vm.CurrentState', 'w2')), 'Halted');
    await d.ok('admin.vm.Start', 'w2');
    assert.equal(powerState(await d.ok('admin.vm.CurrentState', 'w2')), 'Running');

    // qvm-shutdown --wait w2: Shutdown, subscribe, check the state on
    // connection-established, else wait for domain-shutdown.
    await d.ok('admin.vm.Shutdown', 'w2');
    const waiter = await d.events('dom0');
    if (powerState(await d.ok('admin.vm.CurrentState', 'w2')) !== 'Halted')
      await waiter.waitFor((e) => e.subject === 'w2' && e.event === 'domain-shutdown');
    await waiter.close();
    assert.equal(powerState(await d.ok('admin.vm.CurrentState', 'w2')), 'Halted');

    // The same with the shutdown still to come when the waiter subscribes.
    await d.ok('admin.vm.Start', 'w2');
    const waiter2 = await d.events('w2');
    assert.equal(powerState(await d.ok('admin.vm.CurrentState', 'w2')), 'Running');
    const shutdownSeen = waiter2.waitFor((e) => e.event === 'domain-shutdown');
    await d.ok('admin.vm.Shutdown', 'w2', 'wait');
    assert.equal((await shutdownSeen).subject, 'w2');
    assert.ok(waiter2.events.every((e) => e.subject === 'w2' || e.event === 'connection-established'), 'only w2 on a w2 stream');
    await waiter2.close();

    // qvm-remove -f w2
    await d.ok('admin.vm.Remove', 'w2');
    assert.ok(!parseVmList(await d.ok('admin.vm.List', 'dom0')).has('w2'));
    assert.equal((await d.fail('admin.vm.CurrentState', 'w2')).name, 'QubesVMNotFoundError');
    assert.deepEqual((await listFiles(d.poolDir)).filter((f) => f.includes('w2')), []);

    await watch.waitFor((e) => e.event === 'domain-delete');
    const wanted = new Set(['domain-add', 'domain-delete', 'property-set:memory', 'domain-pre-start', 'domain-start', 'domain-pre-shutdown', 'domain-shutdown']);
    assert.deepEqual(
      watch.events.filter((e) => wanted.has(e.event) || e.event === 'connection-established').map(showEvent),
      [
        ' connection-established',
        ' domain-add vm=w2',
        'w2 property-set:memory name=memory newvalue=800 oldvalue=400',
        'w2 domain-pre-start',
        'w2 domain-start',
        'w2 domain-pre-shutdown',
        'w2 domain-shutdown',
        'w2 domain-pre-start',
        'w2 domain-start',
        'w2 domain-pre-shutdown',
        'w2 domain-shutdown',
        ' domain-delete vm=w2',
      ],
    );
    await watch.close();

    await d.restart();
    assert.ok(!parseVmList(await d.ok('admin.vm.List', 'dom0')).has('w2'), 'gone after a reload');
    assert.doesNotMatch(await fs.readFile(d.stateFile, 'utf8'), /w2/);
  });

  it("serves the metadata calls of qvm-clone (qubesadmin's clone_vm, volumes aside)", async () => {
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=cnet label=red');
    await d.ok('admin.vm.property.Set', 'cnet', 'provides_network', 'True');
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=src label=green');
    for (const [p, v] of [['memory', '700'], ['autostart', 'True'], ['netvm', 'cnet'], ['kernelopts', 'quiet'], ['virt_mode', 'hvm']])
      await d.ok('admin.vm.property.Set', 'src', p!, v!);
    await d.ok('admin.vm.tag.Set', 'src', 'alpha');
    await d.ok('admin.vm.feature.Set', 'src', 'f1', 'v1');
    await d.ok('admin.vm.feature.Set', 'src', 'f2', '');

    // clone_vm: label and template of the source, create, then copy.
    const label = deserialize(await d.ok('admin.vm.property.Get', 'src', 'label')).value;
    const template = deserialize(await d.ok('admin.vm.property.Get', 'src', 'template')).value;
    await d.ok('admin.vm.Create.AppVM', 'dom0', template, `name=dst label=${label}`);
    for (const prop of (await d.ok('admin.vm.property.List', 'src')).split('\n').filter((l) => l !== '')) {
      if (['name', 'qid', 'template', 'label', 'uuid', 'installed_by_rpm'].includes(prop)) continue;
      const r = deserialize(await d.ok('admin.vm.property.Get', 'src', prop));
      if (r.isDefault) continue;
      await d.ok('admin.vm.property.Set', 'dst', prop, r.value);
    }
    for (const tag of (await d.ok('admin.vm.tag.List', 'src')).split('\n').filter((l) => l !== '' && !l.startsWith('created-by-')))
      await d.ok('admin.vm.tag.Set', 'dst', tag);
    for (const f of (await d.ok('admin.vm.feature.List', 'src')).split('\n').filter((l) => l !== ''))
      await d.ok('admin.vm.feature.Set', 'dst', f, await d.ok('admin.vm.feature.Get', 'src', f));
    await d.ok('admin.vm.firewall.Set', 'dst', '', await d.ok('admin.vm.firewall.Get', 'src'));
    assert.equal(await d.ok('admin.vm.notes.Get', 'src'), '');
    assert.equal(await d.ok('admin.deviceclass.List', 'dom0'), '');

    const props = async (n: string): Promise<string[]> =>
      (await d.ok('admin.vm.property.GetAll', n)).split('\n').filter((l) => l !== '' && !/^(name|qid|uuid) /.test(l));
    assert.deepEqual(await props('dst'), await props('src'));
    assert.ok((await props('dst')).includes('netvm default=False type=vm cnet'));
    assert.equal(await d.ok('admin.vm.tag.List', 'dst'), 'alpha\ncreated-by-dom0\n');
    assert.equal(await d.ok('admin.vm.feature.List', 'dst'), 'f1\nf2\n');
    assert.equal(await d.ok('admin.vm.feature.Get', 'dst', 'f2'), '');
    for (const n of ['dst', 'src', 'cnet']) await d.ok('admin.vm.Remove', n);
  });

  it('round-trips every property type through Set and Get, across a restart', async () => {
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=net label=red');
    await d.ok('admin.vm.property.Set', 'net', 'provides_network', 'True');
    await d.ok('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=work label=blue');

    // [property, payload sent, value read back]
    const rounds: Array<[string, string, string]> = [
      ['description', 'hello world', 'default=False type=str hello world'],
      ['description', '', 'default=False type=str '],
      ['kernelopts', 'a=b\tc', 'default=False type=str a=b\tc'],
      ['memory', '1000', 'default=False type=int 1000'],
      ['memory', ' 1200 ', 'default=False type=int 1200'],
      ['vcpus', '+4', 'default=False type=int 4'],
      ['autostart', 'true', 'default=False type=bool True'],
      ['autostart', 'OFF', 'default=False type=bool False'],
      ['debug', 'yes', 'default=False type=bool True'],
      ['debug', '0', 'default=False type=bool False'],
      ['include_in_backups', 'False', 'default=False type=bool False'],
      ['netvm', 'net', 'default=False type=vm net'],
      ['netvm', '', 'default=False type=vm '],
      ['netvm', 'net', 'default=False type=vm net'],
      ['label', 'green', 'default=False type=label green'],
      ['label', 'label-3', 'default=False type=label yellow'],
      ['label', '7', 'default=False type=label purple'],
    ];
    for (const [prop, payload, want] of rounds) {
      await d.ok('admin.vm.property.Set', 'work', prop, payload);
      assert.equal(await d.ok('admin.vm.property.Get', 'work', prop), want, `${prop} <- ${JSON.stringify(payload)}`);
    }
    const globals: Array<[string, string, string]> = [
      ['default_pool', 'default', 'default=False type=str default'],
      ['default_kernel', '6.6.1', 'default=False type=str 6.6.1'],
      ['default_template', 'tpl', 'default=False type=vm tpl'],
    ];
    for (const [prop, payload, want] of globals) {
      await d.ok('admin.property.Set', 'dom0', prop, payload);
      assert.equal(await d.ok('admin.property.Get', 'dom0', prop), want, prop);
    }
    await d.ok('admin.vm.feature.Set', 'net', 'net.fake-ip', '10.0.0.1');
    assert.equal(await d.ok('admin.vm.feature.CheckWithNetvm', 'work', 'net.fake-ip'), '10.0.0.1');

    const before = await d.ok('admin.vm.property.GetAll', 'work');
    const globalsBefore = await d.ok('admin.property.GetAll', 'dom0');
    await d.restart();
    assert.equal(await d.ok('admin.vm.property.GetAll', 'work'), before, 'domain properties kept');
    assert.equal(await d.ok('admin.property.GetAll', 'dom0'), globalsBefore, 'global properties kept');
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'memory'), 'default=False type=int 1200');

    for (const prop of ['memory', 'netvm', 'label', 'autostart', 'description']) {
      if (prop === 'label') continue; // label has no default: Reset is refused below
      await d.ok('admin.vm.property.Reset', 'work', prop);
    }
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'memory'), 'default=True type=int 400');
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'netvm'), 'default=True type=vm ');
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'autostart'), 'default=True type=bool False');
    assert.equal((await d.fail('admin.vm.property.Reset', 'work', 'label')).name, 'QubesPropertyValueError');
    await d.ok('admin.property.Reset', 'dom0', 'default_template');
    await d.restart();
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'memory'), 'default=True type=int 400');
    assert.equal(await d.ok('admin.property.Get', 'dom0', 'default_template'), 'default=True type=vm ');
    assert.equal(await d.ok('admin.vm.property.Get', 'work', 'label'), 'default=False type=label purple');
    const xml = await fs.readFile(d.stateFile, 'utf8');
    assert.match(xml, /<property name="debug">False<\/property>/);
    assert.doesNotMatch(xml, /<property name="memory">/);
    for (const n of ['work', 'net']) await d.ok('admin.vm.Remove', n);
    assert.deepEqual((await listFiles(path.join(d.poolDir, 'appvms'))), []);
  });
});
