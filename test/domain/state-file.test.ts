// The state file: a Qubes-shaped qubes.xml loads (unavailable drivers
// included), saves back byte for byte, changes only what changed, keeps
// what it does not know; bounded reads and errors naming file and line.
import { it, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { openApp, filesUnder } from './helpers.js';
import { qubesXml, KERNEL, FIXTURE_ROOT, type FixtureDirs } from './fixture.js';
import { StateFileError } from '../../src/domain/xml.js';
import { UnavailablePool } from '../../src/domain/unavailable.js';
import { StoragePoolException } from '../../src/storage/errors.js';

describeEachFs('qubes.xml round trip', (tfs, ctx) => {
  let dir: string;
  let dirs: FixtureDirs;
  let original: string;
  const stateFile = () => path.join(dir, 'qubes.xml');

  before(async () => {
    dir = await ctx.tempDir('state');
    dirs = {
      fileDir: path.join(dir, 'varlibqubes'),
      reflinkDir: path.join(dir, 'reflink'),
      reflinkCheck: tfs.reflink,
      kernelDir: path.join(dir, 'vm-kernels'),
    };
    original = qubesXml(dirs);
    await fs.mkdir(path.join(dirs.kernelDir, KERNEL), { recursive: true });
    await fs.writeFile(path.join(dirs.kernelDir, KERNEL, 'vmlinuz'), 'kernel');
    await fs.writeFile(path.join(dirs.kernelDir, KERNEL, 'initramfs'), 'initramfs');
  });

  const fresh = async (text = original): Promise<void> => {
    await fs.writeFile(stateFile(), text);
  };

  it('loads pools, domains, properties, features, tags and volumes', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      assert.deepEqual(app.poolNames(), ['varlibqubes', 'reflink', 'lvm', 'linux-kernel']);
      assert.deepEqual(
        app.domainList().map((d) => `${d.name}:${d.klass}:${d.qid}`),
        ['disp4711:DispVM:4', 'dom0:AdminVM:0', 'fedora-40:TemplateVM:1', 'fedora-40-dvm:AppVM:3', 'sys-net:StandaloneVM:5', 'work:AppVM:2'],
      );
      const work = app.domain('work');
      assert.equal(work.label, 'blue');
      assert.equal(work.templateName, 'fedora-40');
      assert.deepEqual(work.readProperty('memory'), { value: 800, isDefault: false, type: 'int' });
      assert.deepEqual(work.readProperty('vcpus'), { value: 2, isDefault: true, type: 'int' });
      assert.equal(work.prop('netvm'), 'sys-net');
      assert.equal(work.prop('kernel'), KERNEL, 'kernel follows the template, which follows default_kernel');
      assert.deepEqual([...work.features], [['service.cups', '1']]);
      assert.deepEqual([...work.tags], ['created-by-dom0']);
      assert.equal(app.domain('uuid:0b7d4e8c-3f21-4c6a-8e55-91d2a7f3c604'), work);
      assert.equal(app.globals.prop('default_template'), 'fedora-40');
      assert.equal(app.globals.prop('default_pool_root'), 'reflink', 'follows default_pool');
      assert.equal(app.domain('dom0').prop('label'), 'black');
      // volumes: sources resolved through the template chain
      const root = work.storage.get('root');
      assert.equal(root.vid, 'appvms/work/root');
      assert.equal(root.source?.vid, 'vm-templates/fedora-40/root');
      assert.equal(work.storage.get('private').pool.name, 'varlibqubes');
      const disp = app.domain('disp4711');
      assert.equal(disp.storage.get('root').source?.vid, 'vm-templates/fedora-40/root');
      assert.equal(disp.storage.get('private').source?.vid, 'appvms/fedora-40-dvm/private');
      assert.equal(disp.storage.get('volatile').size, FIXTURE_ROOT + 4 * 1024 * 1024);
      assert.equal(work.storage.get('kernel').vid, KERNEL);
    } finally {
      await app.close();
    }
  });

  it('loads a pool whose driver is missing as unavailable, keeping its config and volumes', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      assert.equal(app.isPoolAvailable('lvm'), false);
      assert.equal(app.isPoolAvailable('reflink'), true);
      const lvm = app.pool('lvm');
      assert.ok(lvm instanceof UnavailablePool);
      assert.match(lvm.reason, /lvm_thin/);
      assert.deepEqual(lvm.config(), {
        name: 'lvm',
        driver: 'lvm_thin',
        revisions_to_keep: '2',
        thin_pool: 'pool00',
        volume_group: 'qubes_dom0',
      });
      const sysnet = app.domain('sys-net');
      assert.equal(sysnet.storage.get('root').vid, 'qubes_dom0/vm-sys-net-root');
      await assert.rejects(app.start('sys-net'), (e: unknown) => {
        assert.ok(e instanceof StoragePoolException);
        assert.match((e as Error).message, /pool lvm \(driver lvm_thin\) is unavailable/);
        return true;
      });
      assert.equal(sysnet.powerState, 'Halted');
      // A shrink reaches the volume like every change, refused as unavailable (not as a driver that cannot shrink).
      const priv = sysnet.storage.get('private');
      assert.ok(priv.size > 1 && priv.rw);
      await assert.rejects(priv.resize(1, { force: true }), /pool lvm \(driver lvm_thin\) is unavailable: .*; cannot resize volume/);
    } finally {
      await app.close();
    }
  });

  it('writes an unchanged file back byte for byte', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      await app.save();
      assert.equal(await fs.readFile(stateFile(), 'utf8'), original);
    } finally {
      await app.close();
    }
  });

  it('changes only the line of a changed property', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      await app.setProperty(app.domain('work'), 'label', 'green');
      const after = (await fs.readFile(stateFile(), 'utf8')).split('\n');
      const before = original.split('\n');
      assert.equal(after.length, before.length);
      const diff = before.map((l, i) => (l === after[i] ? null : [l, after[i]])).filter((x) => x !== null);
      assert.deepEqual(diff, [['        <property name="label">blue</property>', '        <property name="label">green</property>']]);
    } finally {
      await app.close();
    }
  });

  it('keeps a kernel volume without size as it is: Qubes writes size only when non-zero', async () => {
    const qubesShaped = original.replaceAll(' size="0"', '');
    assert.notEqual(qubesShaped, original, 'the fixture has kernel volumes of size 0');
    await fresh(qubesShaped);
    const { app } = await openApp(dir);
    try {
      await app.setProperty(app.domain('work'), 'label', 'green');
      const text = await fs.readFile(stateFile(), 'utf8');
      assert.equal(text, qubesShaped.replace('<property name="label">blue</property>', '<property name="label">green</property>'));
      assert.doesNotMatch(text, /size="0"/);
    } finally {
      await app.close();
    }
  });

  it('adds and removes property lines in Qubes order and indentation', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      await app.setProperty(app.domain('work'), 'vcpus', 4);
      await app.resetProperty(app.domain('work'), 'memory');
      const text = await fs.readFile(stateFile(), 'utf8');
      const expected = original
        .replace('        <property name="memory">800</property>\n', '')
        .replace(
          '        <property name="uuid">0b7d4e8c-3f21-4c6a-8e55-91d2a7f3c604</property>\n',
          '        <property name="uuid">0b7d4e8c-3f21-4c6a-8e55-91d2a7f3c604</property>\n        <property name="vcpus">4</property>\n',
        );
      assert.equal(text, expected);
      await app.resetProperty(app.domain('work'), 'vcpus');
      await app.setProperty(app.domain('work'), 'memory', 800);
      assert.equal(await fs.readFile(stateFile(), 'utf8'), original, 'back to the same bytes');
    } finally {
      await app.close();
    }
  });

  it('keeps elements, attributes and comments it does not know, through changes', async () => {
    const extra = original
      .replace('<qubes version="3.0">\n', '<qubes version="3.0">\n  <!-- managed by test -->\n')
      .replace(
        '      <features>\n        <feature name="service.cups">1</feature>',
        '      <x-vendor mode="strict">\n        <knob level="3"/>\n      </x-vendor>\n      <features>\n        <feature name="service.cups">1</feature>',
      )
      .replace('vid="appvms/work/volatile"/>', 'vid="appvms/work/volatile" x-encrypt="aes"/>')
      .replace('name="lvm" revisions_to_keep="2"', "name='lvm' revisions_to_keep=\"2\"");
    await fresh(extra);
    const { app } = await openApp(dir);
    try {
      await app.save();
      assert.equal(await fs.readFile(stateFile(), 'utf8'), extra, 'unchanged save keeps everything, quote style included');
      await app.setProperty(app.domain('work'), 'label', 'green');
      await app.addTag(app.domain('work'), 'backup');
      await app.setFeature(app.domain('work'), 'service.cups', '');
      const text = await fs.readFile(stateFile(), 'utf8');
      assert.match(text, /<!-- managed by test -->/);
      assert.match(text, /<x-vendor mode="strict">\n {8}<knob level="3"\/>\n {6}<\/x-vendor>/);
      assert.match(text, /vid="appvms\/work\/volatile" x-encrypt="aes"\/>/);
      assert.match(text, /name='lvm'/);
      assert.match(text, /<property name="clockvm">sys-net<\/property>/, 'unknown global property kept');
      assert.match(text, /<device backend-domain="dom0" id="00_14.3">\n {10}<option name="no-strict-reset">True<\/option>/, 'devices kept');
      assert.match(text, / {8}<tag name="created-by-dom0"\/>\n {8}<tag name="backup"\/>\n/);
      assert.match(text, /<feature name="service.cups"><\/feature>/);
    } finally {
      await app.close();
    }
  });

  it('creates a domain in a loaded state: defaults from the file, volumes on disk and in the file', async () => {
    await fresh();
    const { app } = await openApp(dir);
    try {
      await fs.mkdir(dirs.reflinkDir, { recursive: true });
      await app.pool('reflink').setup();
      // The template's images are not part of the fixture: make them.
      await app.domain('fedora-40').storage.create();
      const d = await app.createDomain({ klass: 'AppVM', name: 'mail', label: 'purple' });
      assert.equal(d.templateName, 'fedora-40');
      assert.equal(d.qid, 6);
      assert.deepEqual([...d.storage.volumes.keys()], ['root', 'private', 'volatile', 'kernel']);
      assert.equal(d.storage.get('kernel').vid, KERNEL);
      assert.equal(d.storage.get('private').pool.name, 'reflink');
      assert.ok((await filesUnder(dirs.reflinkDir)).includes('appvms/mail/private.img'));
      await app.start('mail');
      assert.equal(app.domain('mail').powerState, 'Running');
      await app.shutdown('mail');
      const text = await fs.readFile(stateFile(), 'utf8');
      assert.ok(text.startsWith(original.slice(0, original.indexOf('  </domains>'))), 'everything before the new domain is unchanged');
      assert.match(
        text,
        /    <domain id="domain-6" class="AppVM">\n      <properties>\n        <property name="label">purple<\/property>\n        <property name="name">mail<\/property>\n        <property name="qid">6<\/property>\n        <property name="template">fedora-40<\/property>\n        <property name="uuid">[0-9a-f-]{36}<\/property>\n      <\/properties>\n      <features\/>\n      <devices class="pci"\/>\n      <devices class="block"\/>\n      <devices class="usb"\/>\n      <tags\/>\n      <volume-config>\n        <volume name="root" pool="reflink" rw="True" size="8388608" snap_on_start="True" source="vm-templates\/fedora-40\/root" vid="appvms\/mail\/root"\/>\n        <volume name="private" pool="reflink" rw="True" save_on_stop="True" size="4194304" vid="appvms\/mail\/private"\/>\n/,
      );
    } finally {
      await app.close();
    }
    // and it loads again
    const again = await openApp(dir);
    try {
      assert.equal(again.app.domain('mail').storage.get('root').source?.vid, 'vm-templates/fedora-40/root');
    } finally {
      await again.app.close();
    }
  });

  it('names file and line of malformed XML', async () => {
    const broken = original.replace('<property name="memory">800</property>', '<property name="memory">800</propert>');
    await fresh(broken);
    const line = broken.split('\n').findIndex((l) => l.includes('</propert>')) + 1;
    await assert.rejects(openApp(dir), (e: unknown) => {
      assert.ok(e instanceof StateFileError);
      assert.ok((e as Error).message.startsWith(`${stateFile()}:${line}:`), (e as Error).message);
      assert.match((e as Error).message, /does not match <property>/);
      return true;
    });
    // the failed open released the lock
    await fresh();
    const { app } = await openApp(dir);
    await app.close();
  });

  it('names file and line of a bad value and of a reference to a missing domain', async () => {
    const badInt = original.replace('<property name="memory">800</property>', '<property name="memory">lots</property>');
    await fresh(badInt);
    const line1 = badInt.split('\n').findIndex((l) => l.includes('>lots<')) + 1;
    await assert.rejects(openApp(dir), new RegExp(`^StateFileError: ${escape(stateFile())}:${line1}: .*memory`));
    const badRef = original.replace('<property name="netvm">sys-net</property>', '<property name="netvm">sys-nope</property>');
    await fresh(badRef);
    const line2 = badRef.split('\n').findIndex((l) => l.includes('sys-nope')) + 1;
    await assert.rejects(openApp(dir), new RegExp(`${escape(stateFile())}:${line2}: .*no domain 'sys-nope'`));
    await assert.rejects(
      (async () => {
        await fresh(original.replace('<!DOCTYPE', '').replace("<?xml version='1.0' encoding='UTF-8'?>\n", "<?xml version='1.0'?>\n<!DOCTYPE qubes [<!ENTITY a 'b'>]>\n"));
        await openApp(dir);
      })(),
      /:2:1: malformed XML: DOCTYPE with an internal subset/,
    );
  });

  it('refuses a state file larger than the limit without reading it', async () => {
    await fs.writeFile(stateFile(), '');
    await fs.truncate(stateFile(), 64 * 1024 * 1024 + 1);
    await assert.rejects(openApp(dir), /more than the limit of 67108864/);
    await fresh();
    await assert.rejects(openApp(dir, { maxStateBytes: 1000 }), (e: unknown) => e instanceof StateFileError);
  });

  it('makes a new state file with dom0 and the eight labels', async () => {
    const sub = await ctx.tempDir('new');
    const { app } = await openApp(sub);
    try {
      assert.deepEqual(app.domainList().map((d) => d.name), ['dom0']);
      assert.deepEqual(
        app.labels.list().map((l) => `${l.index}:${l.name}:${l.color}`),
        ['1:red:0xcc0000', '2:orange:0xf57900', '3:yellow:0xedd400', '4:green:0x73d216', '5:gray:0x555753', '6:blue:0x3465a4', '7:purple:0x75507b', '8:black:0x000000'],
      );
      const text = await fs.readFile(path.join(sub, 'qubes.xml'), 'utf8');
      assert.ok(text.startsWith(`<?xml version='1.0' encoding='UTF-8'?>\n<qubes version="3.0">\n  <labels>\n    <label color="0xcc0000" id="label-1">red</label>\n`), text);
      assert.match(text, /  <domains>\n    <domain id="domain-0" class="AdminVM">\n      <properties\/>\n      <features\/>\n      <tags\/>\n    <\/domain>\n  <\/domains>\n<\/qubes>\n$/);
    } finally {
      await app.close();
    }
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
