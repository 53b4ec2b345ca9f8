// The state is never silently replaced: a new state only in an empty
// directory (or with init), a missing or unreadable qubes.xml refused with
// the way back, backups of the last good states (bounded, 0600, crash-safe),
// temporaries of the state swept at open, and state saves on a really full
// filesystem answering a Qubes-named error while the old state stays.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { openApp, newApp } from './helpers.js';
import { StateFileError } from '../../src/domain/xml.js';
import { exists } from '../../src/files/files.js';
import { StoragePoolException } from '../../src/storage/errors.js';
import { readStateText, StateDocument } from '../../src/domain/state-file.js';
import { describeEachSmallFs, fillFilesystem, unfill } from '../helpers/small-fs.js';

async function backupsIn(dir: string): Promise<string[]> {
  return (await fs.readdir(path.join(dir, 'backup')).catch(() => [] as string[])).filter((n) => /^qubes-.*Z\.xml$/.test(n)).sort();
}

/** Every entry under `dir` with its type and mode, for "nothing changed". */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      const st = await fs.lstat(path.join(dir, r));
      out.push(`${r} ${e.isDirectory() ? 'dir' : st.size} ${(st.mode & 0o777).toString(8)}`);
      if (e.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out.sort();
}

/** Runs the restore commands an error message gives (`...running: CMDS  (older backups...`) with /bin/sh. */
function runRestoreCommands(message: string): string {
  const m = /with no qubesd or tool running: (.*?) {2}\(older backups/.exec(message);
  assert.ok(m, `the message gives the commands: ${message}`);
  execFileSync('/bin/sh', ['-c', m[1]!], { stdio: 'pipe' });
  return m[1]!;
}

describeEachFs('state safety', (tfs, ctx) => {
  test('an empty directory gets a new state (0600); a close and an open keep a backup of a state not backed up yet', async () => {
    const dir = await ctx.tempDir('fresh');
    const t = await newApp(tfs, dir, { backups: 2 });
    assert.deepEqual(await backupsIn(dir), [], 'a new state is not backed up at open');
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await t.app.close();
    assert.equal((await fs.stat(t.stateFile)).mode & 0o777, 0o600, 'qubes.xml is 0600');
    const first = await backupsIn(dir);
    assert.equal(first.length, 1, 'the state left at close is backed up');

    const reopen = async () => (await openApp(dir, { backups: 2 })).app;
    // Changed behind the App's back (a hand edit): the next open backs the new bytes up.
    await fs.appendFile(t.stateFile, '<!-- edited -->\n');
    let app = await reopen();
    assert.equal((await backupsIn(dir)).length, 2, 'the state loaded is backed up when it differs from the newest backup');
    await app.close();
    await fs.writeFile(t.stateFile, (await fs.readFile(t.stateFile, 'utf8')).replace('<!-- edited -->\n', ''));
    app = await reopen();
    await app.close();
    const edits = await backupsIn(dir);
    assert.equal(edits.length, 2, 'bounded to 2');
    assert.equal((await fs.stat(path.join(dir, 'backup'))).mode & 0o777, 0o700);
    assert.equal((await fs.stat(path.join(dir, 'backup', edits[1]!))).mode & 0o777, 0o600);
    assert.deepEqual(await fs.readFile(path.join(dir, 'backup', edits[1]!)), await fs.readFile(t.stateFile));
    app = await reopen();
    await app.close();
    assert.deepEqual(await backupsIn(dir), edits, 'an unchanged state is not backed up twice');
    app = await reopen();
    for (const label of ['red', 'blue', 'green']) {
      await app.setPropertyFromText(app.domain('tpl'), 'label', label);
      await app.close();
      const newest = (await backupsIn(dir)).at(-1)!;
      assert.deepEqual(await fs.readFile(path.join(dir, 'backup', newest)), await fs.readFile(t.stateFile), 'a close after a change leaves its state backed up');
      app = await reopen();
    }
    const kept = await backupsIn(dir);
    assert.equal(kept.length, 2, `bounded to 2: ${kept.join(' ')}`);
    assert.match(await fs.readFile(path.join(dir, 'backup', kept[1]!), 'utf8'), /name="label">green</, 'the newest holds the last state');
    assert.match(await fs.readFile(path.join(dir, 'backup', kept[0]!), 'utf8'), /name="label">blue</);
    await app.close();
  });

  test('qubes.xml missing while pools and volumes exist: refused, nothing written; the backup the message names brings the domains back', async () => {
    const dir = await ctx.tempDir('missing');
    const t = await newApp(tfs, dir);
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await t.app.close();
    await (await openApp(dir)).app.close(); // a later start: one backup
    await fs.unlink(t.stateFile);
    const before = await tree(dir);
    let message = '';
    await assert.rejects(openApp(dir), (e: Error) => {
      assert.ok(e instanceof StateFileError, String(e));
      message = e.message;
      assert.match(e.message, new RegExp(`${t.stateFile} is missing, but ${dir} holds backup/, pool/: a state was there before`));
      assert.match(e.message, /--init/);
      return true;
    });
    assert.deepEqual(await tree(dir), before, 'a refused open changes nothing (no state, no lock left)');
    runRestoreCommands(message);
    const { app } = await openApp(dir);
    try {
      assert.deepEqual(app.domainList().map((d) => d.name).sort(), ['dom0', 'tpl']);
    } finally {
      await app.close();
    }
  });

  for (const [what, damage] of [
    ['truncated', async (f: string) => fs.truncate(f, Math.floor((await fs.stat(f)).size / 2))],
    ['empty', async (f: string) => fs.truncate(f, 0)],
    ['not XML', async (f: string) => fs.writeFile(f, '\x00\x01garbage')],
    ['a directory', async (f: string) => (await fs.unlink(f), await fs.mkdir(f))],
  ] as const) {
    test(`qubes.xml ${what}: refused naming the problem and the backup; restoring it per the message works`, async () => {
      const dir = await ctx.tempDir(`corrupt-${what}`);
      const t = await newApp(tfs, dir, { journalFromBytes: 0 });
      await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await t.app.close();
      await (await openApp(dir)).app.close();
      await damage(t.stateFile);
      // A journal left by a crash too (it must go aside with the broken file).
      await fs.writeFile(`${t.stateFile}.journal`, 'qubes-storage state journal 1\n');
      const before = await tree(dir);
      let message = '';
      await assert.rejects(openApp(dir, { init: true }), (e: Error) => {
        assert.ok(e instanceof StateFileError, String(e));
        message = e.message;
        assert.ok(e.message.startsWith(`${t.stateFile}`), e.message);
        assert.match(e.message, /Not starting\. To go back to the newest readable backup, \S+backup\/qubes-[0-9T:.-]+Z\.xml/);
        return true;
      });
      assert.deepEqual(await tree(dir), before, 'a refused open changes nothing, init or not');
      const cmds = runRestoreCommands(message);
      assert.match(cmds, /\.journal\.broken/, 'the journal goes aside too');
      const { app } = await openApp(dir);
      try {
        assert.deepEqual(app.domainList().map((d) => d.name).sort(), ['dom0', 'tpl']);
      } finally {
        await app.close();
      }
    });
  }

  test('the restore commands quote a path with spaces and quotes', async () => {
    const dir = path.join(await ctx.tempDir('quoted'), `it's a "dir"`);
    await fs.mkdir(dir);
    const t = await newApp(tfs, dir);
    await t.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await t.app.close();
    await (await openApp(dir)).app.close();
    await fs.writeFile(t.stateFile, '<qubes>');
    let message = '';
    await assert.rejects(openApp(dir), (e: Error) => ((message = e.message), true));
    runRestoreCommands(message);
    const { app } = await openApp(dir);
    assert.deepEqual(app.domainList().map((d) => d.name).sort(), ['dom0', 'tpl']);
    await app.close();
  });

  test('unreadable and no backup: refused, saying there is none', async () => {
    const dir = await ctx.tempDir('nobackup');
    await fs.writeFile(path.join(dir, 'qubes.xml'), '<qubes><domains>');
    await assert.rejects(openApp(dir), (e: Error) => {
      assert.ok(e instanceof StateFileError);
      assert.match(e.message, /No readable backup in \S+\/backup: put back \S+qubes\.xml from a copy of your own/);
      return true;
    });
  });

  test('init makes a new state beside traces of an old one, touching none of them; never replaces a state file', async () => {
    const dir = await ctx.tempDir('init');
    await fs.mkdir(path.join(dir, 'pool', 'appvms', 'old'), { recursive: true });
    await fs.writeFile(path.join(dir, 'pool', 'appvms', 'old', 'private.img'), 'data');
    await fs.writeFile(path.join(dir, 'running-domains'), 'boot x\n');
    await assert.rejects(openApp(dir), /holds pool\/, running-domains: a state was there before/);
    const before = await tree(dir);
    let { app } = await openApp(dir, { init: true });
    assert.deepEqual(app.domainList().map((d) => d.name), ['dom0']);
    await app.close();
    const after = (await tree(dir)).filter((l) => !/^(qubes\.xml|backup)/.test(l));
    assert.deepEqual(after, before, 'the old files are untouched');
    // init with a state file present opens it as usual.
    ({ app } = await openApp(dir));
    await app.addPool('file-reflink', 'p', { dir_path: path.join(dir, 'p'), setup_check: tfs.reflink });
    await app.close();
    ({ app } = await openApp(dir, { init: true }));
    assert.deepEqual(app.poolNames(), ['p']);
    await app.close();
  });

  test('what a fresh start makes is not a trace: a lock, a socket, storage.conf and the configuration named, empty directories', async () => {
    const dir = await ctx.tempDir('notrace');
    await fs.mkdir(path.join(dir, 'pools'));
    await fs.writeFile(path.join(dir, 'policy'), 'dom0 admin.pool.List\n');
    await fs.writeFile(path.join(dir, '.qubes.xml.tmp-0123456789ab'), 'half');
    // A socket a killed daemon left.
    execFileSync(process.execPath, ['-e', `const s=require('net').createServer().listen(${JSON.stringify(path.join(dir, 'qubesd.sock'))},()=>process.exit(0))`]);
    await assert.rejects(openApp(dir), /holds policy: a state was there/);
    const { app } = await openApp(dir, { configFiles: [path.join(dir, 'policy')] });
    assert.deepEqual(app.domainList().map((d) => d.name), ['dom0']);
    await app.close();
  });

  test('temporaries of the state (and of its backups) a crash left are swept at open; other names are left alone', async () => {
    const dir = await ctx.tempDir('sweep');
    const t = await newApp(tfs, dir);
    await t.app.close();
    await (await openApp(dir)).app.close();
    const debris = ['.qubes.xml.tmp-0123456789ab', '.qubes.xml.tmp-ffffffffffff', 'backup/.qubes-backup.tmp-abcdefabcdef'];
    const others = ['.qubes.xml.tmp-short', 'qubes.xml.tmp-0123456789ab', '.other.xml.tmp-0123456789ab', 'backup/notes'];
    for (const f of [...debris, ...others]) await fs.writeFile(path.join(dir, f), 'x');
    const { app } = await openApp(dir);
    try {
      for (const f of debris) assert.ok(!(await exists(path.join(dir, f))), `${f} swept`);
      for (const f of others) assert.ok(await exists(path.join(dir, f)), `${f} kept`);
    } finally {
      await app.close();
    }
  });
});

test('state save errors name what failed: EROFS for real (a tmpfs remounted read-only), EDQUOT and EIO injected', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('mounting a tmpfs needs root');
  const mnt = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rofs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'tmpfs', mnt]);
  try {
    const { app } = await openApp(mnt, { backups: 0 });
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    await assert.rejects(app.addTag(app.domain('dom0'), 'x'), (e: Error) => {
      assert.ok(e instanceof StoragePoolException, String(e));
      assert.equal(e.message, `cannot save the state to ${mnt}/qubes.xml: the filesystem of ${mnt} is read-only (EROFS)`);
      return true;
    });
    execFileSync('mount', ['-o', 'remount,rw', mnt]);
    await app.close();
  } finally {
    execFileSync('umount', [mnt]);
    await fs.rmdir(mnt);
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-errs-'));
  try {
    const state = { code: '' };
    const { app } = await openApp(dir, {
      backups: 0,
      writeFile: async (file, data) => {
        if (state.code) throw Object.assign(new Error(`injected ${state.code}`), { code: state.code });
        await fs.writeFile(file, data, { mode: 0o600 });
      },
    });
    for (const [code, why] of [
      ['EDQUOT', `the disk quota for ${dir} is used up (EDQUOT)`],
      ['EIO', `an I/O error on the device of ${dir} (EIO): the disk may be failing`],
    ]) {
      state.code = code!;
      await assert.rejects(app.addTag(app.domain('dom0'), 'x'), (e: Error) => {
        assert.ok(e instanceof StoragePoolException, String(e));
        assert.equal(e.message, `cannot save the state to ${dir}/qubes.xml: ${why}`);
        return true;
      });
    }
    state.code = '';
    await app.close();
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

describeEachSmallFs('state saves on a full filesystem', (small) => {
  test('a save that does not fit answers a StoragePoolException naming the place and ENOSPC; the old state stays loadable', async () => {
    const dir = await fs.mkdtemp(path.join(small.root, 'state-full-'));
    const fillers: string[] = [];
    try {
      const { app } = await openApp(dir, { backups: 0 });
      await app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: false });
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      const before = await fs.readFile(path.join(dir, 'qubes.xml'));
      await fillFilesystem(dir, fillers);
      for (const change of [
        () => app.setFeature(app.domain('tpl'), 'big', 'x'.repeat(4000)),
        () => app.createDomain({ klass: 'TemplateVM', name: 'tpl2', label: 'red' }),
      ]) {
        await assert.rejects(change(), (e: Error) => {
          assert.ok(e instanceof StoragePoolException, `${e.name}: ${e.message}`);
          assert.match(e.message, new RegExp(`^cannot save the state to ${dir}/qubes\\.xml: no space left on the filesystem of ${dir} \\(ENOSPC\\)$`));
          return true;
        });
      }
      // Still full: the file on disk is the old state, whole, and it parses.
      assert.deepEqual(await fs.readFile(path.join(dir, 'qubes.xml')), before);
      StateDocument.parse((await readStateText(path.join(dir, 'qubes.xml')))!, 'qubes.xml');
      assert.deepEqual((await fs.readdir(dir)).filter((n) => n.includes('.tmp-')), [], 'no temporary left');
      assert.ok(!app.domain('tpl').features.has('big'), 'the failed change was undone in memory');
      await unfill(fillers);
      await app.close();
      const { app: again } = await openApp(dir, { backups: 0 });
      try {
        assert.deepEqual(again.domainList().map((d) => d.name).sort(), ['dom0', 'tpl']);
      } finally {
        await again.close();
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test('a save that fits once backups are gone removes backups (oldest first) instead of failing', async () => {
    const dir = await fs.mkdtemp(path.join(small.root, 'state-room-'));
    const fillers: string[] = [];
    try {
      let { app } = await openApp(dir, { backups: 3 });
      // A state of some size, so that each backup holds real blocks.
      await app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: false });
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      for (let i = 0; i < 3; i++) {
        for (let f = 0; f < 20; f++) await app.setFeature(app.domain('tpl'), `f${f}`, `${i}`.repeat(4000));
        await app.close();
        ({ app } = await openApp(dir, { backups: 3 }));
      }
      assert.equal((await backupsIn(dir)).length, 3);
      const notes: string[] = [];
      await app.close();
      ({ app } = await openApp(dir, { backups: 3, notice: (l) => notes.push(l) }));
      await fillFilesystem(dir, fillers);
      await app.setFeature(app.domain('tpl'), 'f0', 'changed'.repeat(500));
      assert.ok(notes.some((l) => /removed the oldest backup/.test(l)), notes.join('\n'));
      assert.ok((await backupsIn(dir)).length < 3, 'backups gave their room');
      await unfill(fillers);
      await app.close();
      ({ app } = await openApp(dir, { backups: 3 }));
      assert.equal(app.domain('tpl').features.get('f0'), 'changed'.repeat(500));
      await app.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
