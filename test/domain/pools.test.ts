// Pool lifecycle through the App: add (validate, setup), set, remove refused
// while used, usage; and R3.2 storage.conf pools living beside the state's.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { listFiles } from '../helpers/data.js';
import { builtinRegistry, newApp, openApp } from './helpers.js';
import { QubesPoolInUseError, QubesValueError } from '../../src/storage/errors.js';

describeEachFs('pool lifecycle', (tfs, ctx) => {
  it('adds a pool (validated, set up), sets its options within the driver limits, refuses removal while used', async () => {
    const dir = await ctx.tempDir('pools');
    const { app } = await newApp(tfs, dir);
    try {
      await assert.rejects(app.addPool('file-reflink', 'bad', { dir_path: 'relative' }), /dir_path: must be an absolute path/);
      await assert.rejects(app.addPool('file-reflink', 'bad', { dir_path: '/x', colour: 'red' }), /unknown option 'colour'/);
      await assert.rejects(app.addPool('no-such-driver', 'bad', {}), /unknown driver/);
      await assert.rejects(app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'x') }), QubesPoolInUseError);
      if (!tfs.reflink)
        await assert.rejects(app.addPool('file-reflink', 'strict', { dir_path: path.join(dir, 'strict') }), /does not support reflink.*setup_check=False/);
      assert.deepEqual(app.poolNames(), ['default'], 'failed adds leave nothing');

      const filePoolDir = path.join(dir, 'filepool');
      await app.addPool('file', 'fp', { dir_path: filePoolDir });
      assert.deepEqual((await fs.readdir(filePoolDir)).sort(), ['appvms', 'vm-templates'], 'setup made the class directories');
      await app.setPoolOption('fp', 'revisions_to_keep', '0');
      await assert.rejects(app.setPoolOption('fp', 'revisions_to_keep', '2'), /at most 1/);
      await assert.rejects(app.setPoolOption('fp', 'revisions_to_keep', '-2'), QubesValueError);
      await assert.rejects(app.setPoolOption('fp', 'dir_path', '/y'), /Setting option dir_path is not supported for pool fp/);
      // (True is refused where the host cannot encrypt: test/storage/ephemeral.test.ts.)
      await app.setPoolOption('fp', 'ephemeral_volatile', 'False');
      assert.equal(app.pool('fp').revisions_to_keep, 0);
      assert.equal(app.pool('fp').ephemeral_volatile, false);

      // A pool among another's volumes is refused (test/domain/pool-places.test.ts has the rule); inside its
      // directory beside its class folders it is fine, and included_in says where.
      await assert.rejects(app.addPool('file-reflink', 'vols', { dir_path: path.join(dir, 'pool', 'appvms', 'x'), setup_check: tfs.reflink }), /lies inside pool default/);
      await assert.rejects(fs.stat(path.join(dir, 'pool', 'appvms', 'x')), 'the refused pool made nothing');
      const nested = path.join(dir, 'pool', 'nested');
      await app.addPool('file-reflink', 'inner', { dir_path: nested, setup_check: tfs.reflink });
      assert.equal((await app.pool('inner').includedIn(app.pools()))?.name, 'default');
      assert.equal(await app.pool('default').includedIn(app.pools()), null);
      const details = await app.pool('fp').usageDetails();
      assert.ok(details['data_size']! > 0 && details['data_usage']! > 0);

      await app.createDomain({ klass: 'StandaloneVM', name: 'user', label: 'red', pool: 'fp' });
      await assert.rejects(app.removePool('fp'), (e: unknown) => e instanceof QubesPoolInUseError && /user:root/.test(String(e)));
      await app.removeDomain('user');
      await app.removePool('fp');
      assert.ok(!app.poolNames().includes('fp'));
      assert.ok(await fs.stat(filePoolDir), 'removing a pool keeps its directory');
      await assert.rejects(app.removePool('fp'), /no such pool/);
    } finally {
      await app.close();
    }
    const again = await openApp(dir);
    try {
      assert.deepEqual(again.app.poolNames().sort(), ['default', 'inner'], 'pool changes were saved');
      assert.equal(again.app.pool('inner').revisions_to_keep, 1);
    } finally {
      await again.app.close();
    }
  });
});

describeEachFs('a state written before the driver limits were enforced', (tfs, ctx) => {
  it('loads a file volume keeping more revisions than its driver keeps, lowered to the limit with a notice, and saves it so', async () => {
    const dir = await ctx.tempDir('oldstate');
    const { app } = await newApp(tfs, dir);
    try {
      await app.addPool('file', 'fp', { dir_path: path.join(dir, 'filepool') });
      await app.createDomain({ klass: 'StandaloneVM', name: 'old', label: 'red', pool: 'fp' });
    } finally {
      await app.close();
    }
    const stateFile = path.join(dir, 'qubes.xml');
    const xml = await fs.readFile(stateFile, 'utf8');
    const edited = xml.replace(/(<volume name="private" pool="fp"[^>]*?)\/>/, '$1 revisions_to_keep="3"/>');
    assert.notEqual(edited, xml, 'the state has the private volume to edit');
    await fs.writeFile(stateFile, edited);

    const notices: string[] = [];
    const again = await openApp(dir, { notice: (l) => notices.push(l) });
    try {
      const priv = again.app.domain('old').storage.get('private');
      assert.equal(priv.revisions_to_keep, 1);
      assert.equal(notices.length, 1);
      assert.match(notices[0]!, /qubes\.xml:\d+: note: domain old: volume private: revisions_to_keep 3 is more than driver file keeps; using 1/);
      await again.app.setProperty(again.app.domain('old'), 'label', 'blue');
    } finally {
      await again.app.close();
    }
    assert.match(await fs.readFile(stateFile, 'utf8'), /<volume name="private" pool="fp"[^>]*revisions_to_keep="1"/, 'the next save writes the limit');
  });
});

describeEachFs('storage.conf pools', (tfs, ctx) => {
  it('loads R3.2 pools beside the state file, keeps them in storage.conf, and removes them there', async () => {
    const dir = await ctx.tempDir('conf');
    const conf = path.join(dir, 'storage.conf');
    const optDir = path.join(dir, 'opt/qubes-vm');
    const text = [
      '# pools of this host',
      '[default]',
      'driver=xen',
      '',
      '; the R3.2 example',
      '[foo]',
      'driver=xen',
      `dir_path=${optDir}`,
      '',
    ].join('\n');
    await fs.writeFile(conf, text);
    const registry = await builtinRegistry();
    const storageConf = { file: conf, context: { registry, baseDir: path.join(dir, 'base') } };
    const { app } = await openApp(dir, { storageConf });
    try {
      assert.deepEqual(app.poolNames().sort(), ['default', 'foo']);
      assert.equal(app.poolOrigin('foo'), 'storage.conf');
      assert.equal(app.pool('default').config()['dir_path'], path.join(dir, 'base'), 'the default pool gets the base directory');
      await app.pool('foo').setup();
      await app.addPool('file-reflink', 'later', { dir_path: path.join(dir, 'later'), setup_check: tfs.reflink });
      const state = await fs.readFile(path.join(dir, 'qubes.xml'), 'utf8');
      assert.match(state, /<pool [^>]*name="later"/);
      assert.doesNotMatch(state, /name="foo"/, 'storage.conf pools stay out of qubes.xml');
      await app.createDomain({ klass: 'TemplateVM', name: 'fedora', label: 'black', pool: 'foo' });
      await app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'fedora', pool: 'foo' });
      assert.deepEqual(await listFiles(optDir), ['appvms/work/private.img', 'vm-templates/fedora/private.img', 'vm-templates/fedora/root.img']);
      await assert.rejects(app.setPoolOption('foo', 'revisions_to_keep', '0'), /defined in .*storage.conf; change it there/);
    } finally {
      await app.close();
    }
    // Reopened: the domains whose volumes live in storage.conf's pools load with them.
    const again = await openApp(dir, { storageConf });
    try {
      const app = again.app;
      assert.equal(app.domain('work').storage.get('private').pool.name, 'foo');
      await app.start('work');
      await app.shutdown('work');
      await app.removeDomain('work');
      await app.removeDomain('fedora');
      await app.removePool('foo');
      assert.equal(await fs.readFile(conf, 'utf8'), '# pools of this host\n[default]\ndriver=xen\n', 'storage.conf without [foo] and its comment, the rest kept');
    } finally {
      await app.close();
    }
  });

  it('refuses a pool defined both in storage.conf and in the state file', async () => {
    const dir = await ctx.tempDir('clash');
    const { app } = await newApp(tfs, dir); // state pool 'default'
    await app.close();
    const conf = path.join(dir, 'storage.conf');
    await fs.writeFile(conf, `[default]\ndriver=xen\ndir_path=${dir}/x\n`);
    const storageConf = { file: conf, context: { registry: await builtinRegistry(), baseDir: dir } };
    await assert.rejects(openApp(dir, { storageConf }), /storage\.conf:1: pool default is also defined in .*qubes\.xml/);
  });
});
