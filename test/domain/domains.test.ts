// Domains on real filesystems: volume sets per class, create / clone /
// remove all-or-nothing, the template chain's storage semantics through
// start and shutdown, properties, events, the runner seam, pools, and
// concurrent creates.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { readAt, writeAt } from '../helpers/data.js';
import { newApp, openApp, filesUnder, failingWriter, ROOT_SIZE, PRIVATE_SIZE, type TestApp } from './helpers.js';
import type { QubesApp } from '../../src/domain/app.js';
import type { Domain } from '../../src/domain/domain.js';
import type { DomainRunner } from '../../src/domain/runner.js';
import type { BlockDevice, Volume } from '../../src/storage/volume.js';
import {
  QubesLabelNotFoundError,
  QubesPoolInUseError,
  QubesPropertyValueError,
  QubesValueError,
  QubesVMAlreadyExistsError,
  QubesVMInUseError,
  QubesVMNotHaltedError,
  QubesVMNotStartedError,
} from '../../src/storage/errors.js';

const text = async (v: Volume, n = 16): Promise<string> => (await readAt(await v.path(), 0, n)).toString('latin1').replace(/\0+$/, '');
const write = async (v: Volume, s: string): Promise<void> => writeAt(await v.path(), 0, s);
const stateText = (t: TestApp): Promise<string> => fs.readFile(t.stateFile, 'utf8');

/** tpl (TemplateVM) -> work (AppVM) ; dvm (AppVM, template_for_dispvms) -> disp (DispVM). */
async function chain(app: QubesApp): Promise<Record<'tpl' | 'work' | 'dvm' | 'disp', Domain>> {
  const tpl = await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
  const work = await app.createDomain({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl' });
  const dvm = await app.createDomain({ klass: 'AppVM', name: 'dvm', label: 'red', template: 'tpl', properties: { template_for_dispvms: true } });
  const disp = await app.createDomain({ klass: 'DispVM', name: 'disp', label: 'red', template: 'dvm' });
  return { tpl, work, dvm, disp };
}

describeEachFs('domains', (tfs, ctx) => {
  let t: TestApp;

  before(async () => {
    t = await newApp(tfs, await ctx.tempDir('domains'));
  });
  after(async () => {
    await t?.app.close();
  });

  it('gives each class its volume set, vids and sources', async () => {
    const { tpl, work, dvm, disp } = await chain(t.app);
    const sa = await t.app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'green' });
    const shape = (d: Domain) =>
      [...d.storage.volumes.values()].map((v) => `${v.name} ${v.kind} ${v.vid} ${v.size} ${v.source?.vid ?? '-'}`);
    const R = ROOT_SIZE;
    const P = PRIVATE_SIZE;
    assert.deepEqual(shape(tpl), [
      `root origin vm-templates/tpl/root ${R} -`,
      `private origin vm-templates/tpl/private ${P} -`,
      `volatile volatile vm-templates/tpl/volatile ${R} -`,
    ]);
    assert.deepEqual(shape(sa), [`root origin appvms/sa/root ${R} -`, `private origin appvms/sa/private ${P} -`, `volatile volatile appvms/sa/volatile ${R} -`]);
    assert.deepEqual(shape(work), [
      `root snapshot appvms/work/root ${R} vm-templates/tpl/root`,
      `private origin appvms/work/private ${P} -`,
      `volatile volatile appvms/work/volatile ${R} -`,
    ]);
    assert.deepEqual(shape(disp), [
      `root snapshot appvms/disp/root ${R} vm-templates/tpl/root`,
      `private snapshot appvms/disp/private ${P} appvms/dvm/private`,
      `volatile volatile appvms/disp/volatile ${R + P} -`,
    ]);
    assert.equal(dvm.prop('template_for_dispvms'), true);
    assert.equal(t.app.domain('dom0').storage.volumes.size, 0);
    const files = await filesUnder(t.poolDir);
    for (const f of ['vm-templates/tpl/root.img', 'vm-templates/tpl/private.img', 'appvms/work/private.img', 'appvms/sa/root.img', 'appvms/dvm/private.img'])
      assert.ok(files.includes(f), `${f} in ${files.join(' ')}`);
    assert.ok(!files.some((f) => f.startsWith('appvms/disp/')), 'a DispVM has no images of its own until it starts');
    assert.equal(work.qid, 2);
    const xml = await stateText(t);
    assert.match(xml, /<volume name="root" pool="default" rw="True" size="\d+" snap_on_start="True" source="vm-templates\/tpl\/root" vid="appvms\/work\/root"\/>/);
    for (const d of ['sa', 'disp', 'dvm', 'work', 'tpl']) await t.app.removeDomain(d);
  });

  it('shows a template change to its AppVM and DispVM only after the template commits and they restart', async () => {
    const { tpl, work, dvm, disp } = await chain(t.app);
    await t.app.start('tpl');
    await write(tpl.storage.get('root'), 'root v1');
    await write(tpl.storage.get('private'), 'tpl private');
    await t.app.shutdown('tpl');

    await t.app.start('dvm');
    await write(dvm.storage.get('private'), 'dvm private');
    await t.app.shutdown('dvm');

    await t.app.start('work');
    assert.equal(await text(work.storage.get('root')), 'root v1');
    assert.equal(await text(work.storage.get('private')), '', 'an AppVM has its own private');
    await write(work.storage.get('root'), 'scribble');
    await write(work.storage.get('private'), 'work data');

    // The template runs and changes its root while work runs.
    await t.app.start('tpl');
    await write(tpl.storage.get('root'), 'root v2');
    assert.equal(await text(work.storage.get('root')), 'scribble', 'a running snapshot is not touched');
    await t.app.shutdown('tpl');
    assert.equal(await text(work.storage.get('root')), 'scribble');
    assert.equal(await work.storage.get('root').isOutdated(), true);

    await t.app.shutdown('work');
    await t.app.start('work');
    assert.equal(await text(work.storage.get('root')), 'root v2', 'restarted AppVM sees the committed template root');
    assert.equal(await text(work.storage.get('private')), 'work data', 'private kept');
    await t.app.shutdown('work');

    await t.app.start('disp');
    assert.equal(await text(disp.storage.get('root')), 'root v2', 'DispVM root comes from the TemplateVM');
    assert.equal(await text(disp.storage.get('private')), 'dvm private', 'DispVM private comes from its AppVM');
    await write(disp.storage.get('private'), 'gone');
    await t.app.shutdown('disp');
    await t.app.start('disp');
    assert.equal(await text(disp.storage.get('private')), 'dvm private', 'DispVM writes are discarded');
    await t.app.kill('disp');
    assert.equal(disp.powerState, 'Halted');
    await assert.rejects(t.app.shutdown('disp'), QubesVMNotStartedError);
    for (const d of ['disp', 'dvm', 'work', 'tpl']) await t.app.removeDomain(d);
  });

  it('refuses to remove a running domain or one used as template, naming the users', async () => {
    await chain(t.app);
    await t.app.start('work');
    await assert.rejects(t.app.removeDomain('work'), QubesVMNotHaltedError);
    await t.app.shutdown('work');
    await assert.rejects(t.app.removeDomain('tpl'), (e: unknown) => {
      assert.ok(e instanceof QubesVMInUseError);
      assert.match((e as Error).message, /work \(template\)/);
      assert.match((e as Error).message, /dvm \(template\)/);
      return true;
    });
    await t.app.setProperty(t.app.globals, 'default_dispvm', 'dvm');
    await t.app.removeDomain('disp');
    await assert.rejects(t.app.removeDomain('dvm'), /global property default_dispvm/);
    await t.app.resetProperty(t.app.globals, 'default_dispvm');
    await t.app.removeDomain('dvm');
    await t.app.removeDomain('work');
    await t.app.removeDomain('tpl');
    assert.deepEqual(await filesUnder(t.poolDir), []);
    assert.doesNotMatch(await stateText(t), /name="(tpl|work|dvm|disp)"|>tpl<|>work</);
    assert.deepEqual(
      t.events.filter((e) => e.event === 'domain-delete').slice(-4).map((e) => `${e.subject} ${e.pairs['vm']}`),
      [' disp', ' dvm', ' work', ' tpl'],
    );
  });

  it('creates nothing when a volume cannot be made (planted file in the pool)', async () => {
    const before = await stateText(t);
    // A TemplateVM whose private image path is taken: root is made, then removed again.
    await fs.mkdir(path.join(t.poolDir, 'vm-templates', 'badt'), { recursive: true });
    await fs.writeFile(path.join(t.poolDir, 'vm-templates', 'badt', 'private.img'), 'not ours');
    await assert.rejects(t.app.createDomain({ klass: 'TemplateVM', name: 'badt', label: 'red' }));
    assert.deepEqual(await filesUnder(path.join(t.poolDir, 'vm-templates', 'badt')), ['private.img'], 'root removed, the planted file untouched');
    assert.equal(await fs.readFile(path.join(t.poolDir, 'vm-templates', 'badt', 'private.img'), 'utf8'), 'not ours');
    // An AppVM whose domain directory is a file.
    await fs.writeFile(path.join(t.poolDir, 'appvms', 'bada'), 'in the way');
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl2', label: 'black' });
    await assert.rejects(t.app.createDomain({ klass: 'AppVM', name: 'bada', label: 'red', template: 'tpl2' }));
    assert.equal(t.app.findDomain('badt'), undefined);
    assert.equal(t.app.findDomain('bada'), undefined);
    const xml = await stateText(t);
    assert.doesNotMatch(xml, /badt|bada/);
    assert.notEqual(xml, before, 'tpl2 was saved');
    await t.app.removeDomain('tpl2');
    assert.equal(await stateText(t), before);
    await fs.rm(path.join(t.poolDir, 'vm-templates', 'badt'), { recursive: true });
    await fs.rm(path.join(t.poolDir, 'appvms', 'bada'));
    // the names are free again
    await t.app.createDomain({ klass: 'TemplateVM', name: 'badt', label: 'red' });
    await t.app.removeDomain('badt');
  });

  it('removes the volumes again when saving a new domain fails, and keeps a domain whose removal cannot be saved', async () => {
    const dir = await ctx.tempDir('savefail');
    const flag = { fail: false };
    const s = await newApp(tfs, dir, { writeFile: failingWriter(flag) });
    try {
      await s.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      const before = await stateText(s);
      const filesBefore = await filesUnder(s.poolDir);
      flag.fail = true;
      await assert.rejects(s.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' }), /cannot save .*no space/);
      await assert.rejects(s.app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'red', template: 'tpl' }), /no space/);
      await assert.rejects(s.app.cloneDomain('tpl', 'tpl-copy'), /no space/);
      assert.deepEqual(await filesUnder(s.poolDir), filesBefore, 'no images left behind');
      assert.equal(s.app.findDomain('work'), undefined);
      assert.equal(s.app.findDomain('tpl-copy'), undefined);
      await assert.rejects(s.app.removeDomain('tpl'), /no space/);
      assert.ok(s.app.findDomain('tpl'), 'removal undone');
      await assert.rejects(s.app.setProperty(s.app.domain('tpl'), 'label', 'green'), /no space/);
      assert.equal(s.app.domain('tpl').label, 'black', 'property change undone');
      assert.deepEqual(await filesUnder(s.poolDir), filesBefore, 'volumes kept');
      flag.fail = false;
      assert.equal(await stateText(s), before);
      await s.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
      await s.app.save();
      const after = await stateText(s);
      assert.match(after, /<property name="name">tpl<\/property>/);
      assert.match(after, /<property name="label">black<\/property>/);
      assert.equal(after.match(/<domain /g)?.length, 3, 'dom0, tpl, work');
    } finally {
      await s.app.close();
    }
  });

  it('clones a domain with its properties, tags, features and data, into another pool too', async () => {
    const other = path.join(await ctx.tempDir('other'), 'pool2');
    await t.app.addPool('file-reflink', 'second', { dir_path: other, setup_check: tfs.reflink });
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    const src = await t.app.createDomain({ klass: 'AppVM', name: 'src', label: 'orange', template: 'tpl', properties: { memory: 1234 } });
    await t.app.addTag(src, 'backup');
    await t.app.setFeature(src, 'service.cups', '1');
    await t.app.start('src');
    await write(src.storage.get('private'), 'precious');
    await t.app.shutdown('src');
    await src.storage.get('private').resize(2 * PRIVATE_SIZE);
    await t.app.save();

    const c = await t.app.cloneDomain('src', 'copy');
    assert.equal(c.klass, 'AppVM');
    assert.notEqual(c.uuid, src.uuid);
    assert.notEqual(c.qid, src.qid);
    assert.equal(c.label, 'orange');
    assert.equal(c.prop('memory'), 1234);
    assert.equal(c.templateName, 'tpl');
    assert.deepEqual([...c.tags], ['backup']);
    assert.deepEqual([...c.features], [['service.cups', '1']]);
    assert.equal(c.storage.get('private').size, 2 * PRIVATE_SIZE);
    assert.equal(c.storage.get('private').vid, 'appvms/copy/private');
    await t.app.start('copy');
    assert.equal(await text(c.storage.get('private')), 'precious');
    await t.app.shutdown('copy');

    const c2 = await t.app.cloneDomain('src', 'copy2', { pool: 'second' });
    assert.equal(c2.storage.get('private').pool.name, 'second');
    assert.equal(c2.storage.get('root').pool.name, 'default', 'a snapshot stays with its source');
    assert.ok((await filesUnder(other)).includes('appvms/copy2/private.img'));
    await assert.rejects(t.app.cloneDomain('src', 'copy3', { pool: 'second', pools: { private: 'default' } }), QubesValueError);
    await assert.rejects(t.app.cloneDomain('src', 'copy'), (e: unknown) => e instanceof QubesVMAlreadyExistsError && /already exists/.test(e.message));

    // a clone whose destination is blocked leaves nothing
    await fs.writeFile(path.join(other, 'appvms', 'copy4'), 'in the way');
    await assert.rejects(t.app.cloneDomain('src', 'copy4', { pools: { private: 'second' } }));
    assert.equal(t.app.findDomain('copy4'), undefined);
    assert.ok(!(await filesUnder(t.poolDir)).some((f) => f.includes('copy4')));
    assert.doesNotMatch(await stateText(t), /copy4/);
    await fs.rm(path.join(other, 'appvms', 'copy4'));

    await assert.rejects(t.app.removePool('second'), (e: unknown) => {
      assert.ok(e instanceof QubesPoolInUseError);
      assert.match((e as Error).message, /copy2:private/);
      return true;
    });
    for (const d of ['copy2', 'copy', 'src', 'tpl']) await t.app.removeDomain(d);
    await t.app.removePool('second');
    assert.doesNotMatch(await stateText(t), /name="second"/);
  });

  it('chooses pools: pool= for all, pool:VOLUME= per volume, not both; defaults per volume', async () => {
    const p2 = path.join(await ctx.tempDir('pools'), 'p2');
    await t.app.addPool('file-reflink', 'p2', { dir_path: p2, setup_check: tfs.reflink });
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    const a = await t.app.createDomain({ klass: 'AppVM', name: 'a', label: 'red', template: 'tpl', pool: 'p2' });
    assert.deepEqual([...a.storage.volumes.values()].map((v) => `${v.name}=${v.pool.name}`), ['root=default', 'private=p2', 'volatile=p2']);
    const b = await t.app.createDomain({ klass: 'StandaloneVM', name: 'b', label: 'red', pools: { private: 'p2' } });
    assert.deepEqual([...b.storage.volumes.values()].map((v) => `${v.name}=${v.pool.name}`), ['root=default', 'private=p2', 'volatile=default']);
    await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: 'c', label: 'red', pool: 'p2', pools: { root: 'p2' } }), /cannot be given together/);
    await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: 'c', label: 'red', pools: { swap: 'p2' } }), /no volume swap/);
    await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: 'c', label: 'red', pool: 'nope' }), /no such pool 'nope'/);
    await assert.rejects(t.app.createDomain({ klass: 'AppVM', name: 'c', label: 'red', template: 'tpl', pools: { root: 'p2' } }), /source .* is in pool default, not p2/);
    await t.app.setProperty(t.app.globals, 'default_pool_private', 'p2');
    const d = await t.app.createDomain({ klass: 'TemplateVM', name: 'd', label: 'red' });
    assert.deepEqual([...d.storage.volumes.values()].map((v) => `${v.name}=${v.pool.name}`), ['root=default', 'private=p2', 'volatile=default']);
    await assert.rejects(t.app.removePool('p2'), /global property default_pool_private/);
    await t.app.resetProperty(t.app.globals, 'default_pool_private');
    assert.equal(t.app.findDomain('c'), undefined);
    for (const n of ['d', 'b', 'a', 'tpl']) await t.app.removeDomain(n);
    await t.app.removePool('p2');
    await assert.rejects(t.app.addPool('file-reflink', 'default', { dir_path: p2 }), QubesPoolInUseError);
  });

  it('validates domain names, classes, labels and templates', async () => {
    for (const bad of ['', '1abc', 'a b', 'x'.repeat(32), 'none', 'default', 'Domain-0', 'sys-net-dm', 'a/b', '-x']) {
      await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: bad, label: 'red' }), QubesValueError, `name '${bad}'`);
    }
    // A valid name that is taken: not a value error, as in Qubes.
    await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: 'dom0', label: 'red' }), QubesVMAlreadyExistsError);
    await assert.rejects(t.app.createDomain({ klass: 'StandaloneVM', name: 'x', label: 'pink' }), QubesLabelNotFoundError);
    await assert.rejects(t.app.createDomain({ klass: 'AdminVM', name: 'x', label: 'red' }), QubesValueError);
    await assert.rejects(t.app.createDomain({ klass: 'AppVM', name: 'x', label: 'red' }), /: an AppVM needs a template and no default/);
    const sa = await t.app.createDomain({ klass: 'StandaloneVM', name: 'sa', label: 'red' });
    await assert.rejects(t.app.createDomain({ klass: 'AppVM', name: 'x', label: 'red', template: 'sa' }), /sa is a StandaloneVM, not a TemplateVM/);
    await assert.rejects(t.app.createDomain({ klass: 'DispVM', name: 'x', label: 'red', template: 'sa' }), /not a template for disposables/);
    await assert.rejects(t.app.createDomain({ klass: 'AppVM', name: 'x', label: 'red', template: 'nope' }), /no such domain/);
    assert.equal(t.app.findDomain('x'), undefined);
    const ok = await t.app.createDomain({ klass: 'StandaloneVM', name: 'a.b_c-31'.padEnd(31, 'x'), label: 'red' });
    await t.app.removeDomain(ok.name);
    await t.app.removeDomain(sa.name);
  });

  it('answers properties generically: list, get, default, set, reset, help', async () => {
    const tpl = await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    const tpl2 = await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl2', label: 'black' });
    const w = await t.app.createDomain({ klass: 'AppVM', name: 'w', label: 'red', template: 'tpl' });
    const names = w.propertyNames();
    for (const n of ['name', 'qid', 'uuid', 'klass', 'label', 'template', 'template_for_dispvms', 'netvm', 'memory', 'kernel', 'default_dispvm'])
      assert.ok(names.includes(n), n);
    assert.ok(!tpl.propertyNames().includes('template'), 'a TemplateVM has no template');
    assert.deepEqual(w.readProperty('klass'), { value: 'AppVM', isDefault: true, type: 'str' });
    assert.deepEqual(w.readProperty('label'), { value: 'red', isDefault: false, type: 'label' });
    assert.deepEqual(w.readProperty('template'), { value: 'tpl', isDefault: false, type: 'vm' });
    assert.deepEqual(w.readProperty('netvm'), { value: null, isDefault: true, type: 'vm' });
    assert.equal(w.propertyDefault('memory'), 400);
    assert.ok(w.propertyDef('template').help.length > 10);
    await t.app.setPropertyFromText(w, 'memory', '800');
    await t.app.setPropertyFromText(w, 'include_in_backups', 'False');
    assert.deepEqual(w.readProperty('memory'), { value: 800, isDefault: false, type: 'int' });
    assert.equal(w.prop('include_in_backups'), false);
    await assert.rejects(t.app.setPropertyFromText(w, 'memory', '08'), QubesPropertyValueError);
    await assert.rejects(t.app.setProperty(w, 'vcpus', 0), /at least 1/);
    await assert.rejects(t.app.setProperty(w, 'name', 'other'), /cannot be changed/);
    await assert.rejects(t.app.setProperty(w, 'klass', 'TemplateVM'), /cannot be changed/);
    await assert.rejects(t.app.setPropertyFromText(w, 'label', 'pink'), QubesLabelNotFoundError);
    await assert.rejects(t.app.setProperty(w, 'template', 'w'), /not a TemplateVM/);
    await assert.rejects(t.app.setProperty(w, 'nosuch', 1), /has no property 'nosuch'/);
    await t.app.resetProperty(w, 'memory');
    assert.deepEqual(w.readProperty('memory'), { value: 400, isDefault: true, type: 'int' });
    const ev = t.events.filter((e) => e.subject === 'w' && e.event.startsWith('property-'));
    assert.deepEqual(ev.map((e) => [e.event, e.pairs]), [
      ['property-set:memory', { name: 'memory', newvalue: '800', oldvalue: '400' }],
      ['property-set:include_in_backups', { name: 'include_in_backups', newvalue: 'False', oldvalue: 'True' }],
      ['property-reset:memory', { name: 'memory', oldvalue: '800' }],
    ]);
    // globals
    assert.equal(t.app.globals.prop('default_pool'), 'default', 'the pool named default');
    await assert.rejects(t.app.setProperty(t.app.globals, 'default_pool', 'nope'), /no pool 'nope'/);
    await assert.rejects(t.app.setProperty(t.app.globals, 'default_template', 'w'), /not a TemplateVM/);
    await t.app.setProperty(t.app.globals, 'default_template', 'tpl2');
    const w2 = await t.app.createDomain({ klass: 'AppVM', name: 'w2', label: 'red' });
    assert.equal(w2.templateName, 'tpl2');

    // Changing the template re-sources the root; refused while running.
    await t.app.start('tpl2');
    await write(tpl2.storage.get('root'), 'tpl2 root');
    await t.app.shutdown('tpl2');
    await t.app.start('w');
    await assert.rejects(t.app.setProperty(w, 'template', 'tpl2'), QubesVMNotHaltedError);
    await t.app.shutdown('w');
    await t.app.setProperty(w, 'template', 'tpl2');
    assert.equal(w.storage.get('root').source?.vid, 'vm-templates/tpl2/root');
    await t.app.start('w');
    assert.equal(await text(w.storage.get('root')), 'tpl2 root');
    await t.app.shutdown('w');
    assert.match(await stateText(t), /<property name="template">tpl2<\/property>/);
    await t.app.resetProperty(t.app.globals, 'default_template');
    for (const n of ['w2', 'w', 'tpl2', 'tpl']) await t.app.removeDomain(n);
  });

  it('emits start and shutdown events, lets domain-pre-start refuse, and gives the runner the block devices', async () => {
    const dir = await ctx.tempDir('runner');
    const calls: string[] = [];
    let failStart = false;
    const runner: DomainRunner = {
      async start(d, disks: ReadonlyMap<string, BlockDevice>) {
        calls.push(`start ${d.name} ${[...disks.values()].map((b) => `${b.name}:${b.rw ? 'rw' : 'ro'}:${path.basename(b.path)}`).join(' ')}`);
        if (failStart) throw new Error('hypervisor says no');
      },
      async shutdown(d) {
        calls.push(`shutdown ${d.name}`);
      },
      async kill(d) {
        calls.push(`kill ${d.name}`);
      },
    };
    const s = await newApp(tfs, dir, { runner });
    try {
      const tpl = await s.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await s.app.start('tpl');
      await s.app.start('tpl'); // already running: nothing happens
      await s.app.shutdown('tpl');
      assert.deepEqual(calls, ['start tpl root:rw:root-dirty.img private:rw:private-dirty.img volatile:rw:volatile-dirty.img', 'shutdown tpl']);
      assert.deepEqual(
        s.events.filter((e) => e.subject === 'tpl').map((e) => e.event),
        ['domain-volume-created', 'domain-volume-created', 'domain-volume-created', 'domain-pre-start', 'domain-start', 'domain-pre-shutdown', 'domain-volume-committed', 'domain-volume-committed', 'domain-shutdown'],
      );
      assert.deepEqual(s.events.find((e) => e.event === 'domain-add'), { subject: '', event: 'domain-add', pairs: { vm: 'tpl' } });

      failStart = true;
      await assert.rejects(s.app.start('tpl'), /hypervisor says no/);
      assert.equal(tpl.powerState, 'Halted');
      assert.equal(await tpl.storage.get('private').isDirty(), false, 'storage stopped again');
      failStart = false;

      const off = s.app.events.on('domain-pre-start', (e) => {
        if (e.subject === 'tpl') throw new Error('not now');
      });
      const n = calls.length;
      await assert.rejects(s.app.start('tpl'), /not now/);
      assert.equal(calls.length, n, 'runner not called');
      assert.equal(await tpl.storage.get('private').isDirty(), false);
      off();
      await s.app.start('tpl');
      assert.equal(s.app.domain('tpl').powerState, 'Running');
      await s.app.kill('tpl');
      assert.equal(calls[calls.length - 1], 'kill tpl');
      assert.ok(!s.events.slice(-4).some((e) => e.event === 'domain-pre-shutdown'), 'kill has no pre-shutdown');
    } finally {
      await s.app.close();
    }
  });

  it('removes an auto_cleanup DispVM at shutdown', async () => {
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await t.app.createDomain({ klass: 'AppVM', name: 'dvm', label: 'red', template: 'tpl', properties: { template_for_dispvms: true } });
    await t.app.setProperty(t.app.globals, 'default_dispvm', 'dvm');
    const d = await t.app.createDomain({ klass: 'DispVM', name: 'disp9', label: 'red', properties: { auto_cleanup: true } });
    assert.equal(d.templateName, 'dvm', 'default_dispvm');
    await assert.rejects(t.app.setProperty(t.app.domain('dvm'), 'template_for_dispvms', false), /disposables are based on it: disp9/);
    await t.app.start('disp9');
    await t.app.shutdown('disp9');
    assert.equal(t.app.findDomain('disp9'), undefined);
    assert.ok(!(await filesUnder(t.poolDir)).some((f) => f.includes('disp9')));
    await t.app.resetProperty(t.app.globals, 'default_dispvm');
    await t.app.removeDomain('dvm');
    await t.app.removeDomain('tpl');
  });

  it('creates 50 domains in parallel and saves every one of them', async () => {
    const dir = await ctx.tempDir('parallel');
    const s = await newApp(tfs, dir);
    await s.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    const names = Array.from({ length: 50 }, (_, i) => `vm${i}`);
    const made = await Promise.all(
      names.map((name, i) => s.app.createDomain({ klass: i % 2 ? 'AppVM' : 'StandaloneVM', name, label: 'green', template: i % 2 ? 'tpl' : null })),
    );
    // and property changes on all of them at once
    await Promise.all(made.map((d, i) => s.app.setProperty(d, 'memory', 1000 + i)));
    assert.equal(new Set(made.map((d) => d.qid)).size, 50);
    await s.app.close();
    const { app } = await openApp(dir);
    try {
      assert.deepEqual(app.domainList().map((d) => d.name).filter((n) => n.startsWith('vm')).sort(), [...names].sort());
      for (const [i, n] of names.entries()) {
        assert.equal(app.domain(n).prop('memory'), 1000 + i);
        assert.ok((await filesUnder(s.poolDir)).includes(`appvms/${n}/private.img`));
      }
      // a duplicate name in parallel: exactly one wins
      const results = await Promise.allSettled([1, 2, 3].map(() => app.createDomain({ klass: 'StandaloneVM', name: 'dup', label: 'red' })));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      // removing a template while a domain is being created on it: never both
      for (const [i, removeFirst] of [[1, true], [2, false]] as const) {
        await app.createDomain({ klass: 'TemplateVM', name: `t${i}`, label: 'black' });
        const remove = () => app.removeDomain(`t${i}`);
        const create = () => app.createDomain({ klass: 'AppVM', name: `late${i}`, label: 'red', template: `t${i}` });
        const [r, c] = removeFirst
          ? await Promise.allSettled([remove(), create()])
          : (await Promise.allSettled([create(), remove()])).reverse();
        assert.ok(r!.status === 'rejected' || c!.status === 'rejected', 'not both');
        if (c!.status === 'fulfilled') assert.ok(app.findDomain(`t${i}`), 'the template of a created domain exists');
        if (r!.status === 'rejected') assert.match(String((r as PromiseRejectedResult).reason), new RegExp(`late${i}`));
      }
    } finally {
      await app.close();
    }
  });
});
