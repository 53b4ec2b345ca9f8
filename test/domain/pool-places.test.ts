// Pool places compared as the kernel sees them (storage/places.ts): a pool
// is refused when its extent (a file pool's class folders) is, holds or lies
// inside another pool's, or when it holds the base directory or the state
// file's directory, is one without being confined, or reaches what they keep;
// through symlinks and bind mounts too; and a refused add changes nothing on disk.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describeEachFs } from '../helpers/filesystems.js';
import { builtinRegistry, failingWriter, newApp, openApp } from './helpers.js';
import { QubesValueError, StoragePoolException } from '../../src/storage/errors.js';
import { UnavailablePool } from '../../src/domain/unavailable.js';
import { checkPlacesAgainst, resolvePlaces } from '../../src/storage/places.js';

const run = promisify(execFile);

/** Every entry under `root` (not following symlinks): path, type, mode, size; sorted. */
async function walk(root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (dir: string): Promise<void> => {
    for (const name of await fs.readdir(dir)) {
      const p = path.join(dir, name);
      const st = await fs.lstat(p);
      const type = st.isDirectory() ? 'd' : st.isSymbolicLink() ? `l->${await fs.readlink(p)}` : 'f';
      out.push(`${path.relative(root, p)} ${type} ${(st.mode & 0o7777).toString(8)} ${st.isDirectory() ? '' : st.size}`);
      if (st.isDirectory()) await visit(p);
    }
  };
  await visit(root);
  return out.sort();
}

/** Asserts `add` is refused with a QubesValueError matching `re`, and that nothing under `root` changed. */
async function refusedUnchanged(root: string, add: () => Promise<unknown>, re: RegExp): Promise<void> {
  const before = await walk(root);
  await assert.rejects(add(), (e: unknown) => {
    assert.ok(e instanceof QubesValueError, `a QubesValueError, got ${String(e)}`);
    assert.match((e as Error).message, re);
    return true;
  });
  assert.deepEqual(await walk(root), before, 'a refused add changes nothing on disk');
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describeEachFs('pool places', (tfs, ctx) => {
  it('refuses a dir_path that reaches another pool through a symlink, names both and the real path', async () => {
    const dir = await ctx.tempDir('symlink');
    const t = await newApp(tfs, dir);
    try {
      await fs.symlink(t.poolDir, path.join(dir, 'alias'));
      await refusedUnchanged(
        dir,
        () => t.app.addPool('file-reflink', 'twin', { dir_path: path.join(dir, 'alias'), setup_check: false }),
        new RegExp(`^pool twin: dir_path ${esc(dir)}/alias \\(real path ${esc(t.poolDir)}\\) is pool default \\(dir_path ${esc(t.poolDir)}\\)$`),
      );
      // A symlink higher up, the pool's directory below it.
      await fs.symlink(dir, path.join(dir, 'up'));
      await refusedUnchanged(
        dir,
        () => t.app.addPool('file-reflink', 'twin', { dir_path: path.join(dir, 'up', 'pool', 'appvms', 'x'), setup_check: false }),
        /lies inside pool default/,
      );
      // A symlink to nothing on the way is refused, not guessed.
      await fs.symlink(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
      await assert.rejects(
        t.app.addPool('file-reflink', 'dang', { dir_path: path.join(dir, 'dangling', 'p'), setup_check: false }),
        (e: unknown) => e instanceof StoragePoolException && /passes through .*dangling, a symlink to nothing/.test(String(e)),
      );
      await assert.rejects(fs.lstat(path.join(dir, 'nowhere')));
      // A file where the directory, or one on its way, should be.
      await fs.writeFile(path.join(dir, 'afile'), 'x');
      await assert.rejects(t.app.addPool('file', 'f', { dir_path: path.join(dir, 'afile') }), /^StoragePoolException: pool f: dir_path .*\/afile is not a directory$/);
      await assert.rejects(t.app.addPool('file', 'f', { dir_path: path.join(dir, 'afile', 'p') }), /^StoragePoolException: pool f: dir_path .*\/afile\/p cannot be resolved \(ENOTDIR at /);
      assert.deepEqual(t.app.poolNames(), ['default']);
    } finally {
      await t.app.close();
    }
  });

  it("refuses a pool among another's volumes (or holding another among its own) and at the same place; accepts one beside the class folders", async () => {
    const dir = await ctx.tempDir('nest');
    const t = await newApp(tfs, dir);
    try {
      const deep = path.join(dir, 'a', 'b');
      await t.app.addPool('file', 'deep', { dir_path: deep });
      await refusedUnchanged(dir, () => t.app.addPool('file', 'inner', { dir_path: path.join(deep, 'appvms', 'x') }), /^pool inner: dir_path .*\/a\/b\/appvms\/x lies inside pool deep \(dir_path .*\/a\/b\): .*\/a\/b\/appvms\/x\/appvms lies inside .*\/a\/b\/appvms$/);
      await refusedUnchanged(dir, () => t.app.addPool('file', 'vols', { dir_path: path.join(t.poolDir, 'appvms') }), /lies inside pool default/);
      await refusedUnchanged(dir, () => t.app.addPool('file', 'same', { dir_path: deep + '/./' }), /^pool same: dir_path .* is pool deep/);
      // A pool whose class folder another pool is in.
      const low = path.join(dir, 'h', 'vm-templates', 'low');
      await t.app.addPool('file', 'low', { dir_path: low });
      await refusedUnchanged(dir, () => t.app.addPool('xen', 'hold', { dir_path: path.join(dir, 'h') }), new RegExp(`^pool hold: dir_path ${esc(dir)}/h holds pool low \\(dir_path ${esc(low)}\\): `));
      const sibling = path.join(dir, 'a', 'c');
      await t.app.addPool('file', 'sibling', { dir_path: sibling });
      assert.deepEqual((await fs.readdir(sibling)).sort(), ['appvms', 'vm-templates'], 'a pool beside another is accepted and set up');
      // A pool's folders are its class folders: a pool around it, or inside it beside them, meets none of them.
      await t.app.addPool('file', 'parent', { dir_path: path.join(dir, 'a') });
      await t.app.addPool('file', 'beside', { dir_path: path.join(deep, 'sub', 'x') });
      assert.deepEqual(t.app.poolNames(), ['default', 'deep', 'low', 'sibling', 'parent', 'beside']);
    } finally {
      await t.app.close();
    }
  });

  it("a file pool may be at the state file's directory or the base directory, or inside them; not around them, nor in what they keep", async () => {
    const dir = await ctx.tempDir('base');
    const base = path.join(dir, 'base');
    const stateDir = path.join(dir, 'state');
    await fs.mkdir(base);
    await fs.mkdir(stateDir);
    const { app } = await openApp(stateDir, { baseDir: base, baseKeeps: ['qubesd.sock', 'running-domains'] });
    try {
      // (Until deliverable 6 was corrected, both directories themselves were refused too.)
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: dir }), /^pool p: dir_path .* holds the directory of the state file/);
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: '/' }), /^pool p: dir_path \/ holds the directory of the state file/);
      // A place not confined to class folders may not be at them.
      await refusedUnchanged(dir, () => app.addPool('linux-kernel', 'k', { dir_path: base }), new RegExp(`^pool k: dir_path ${esc(base)} is the base directory \\(${esc(base)}\\)$`));
      // What they keep: the state's backups, its journal, the run state.
      await fs.mkdir(path.join(stateDir, 'backup'));
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: path.join(stateDir, 'backup', 'x') }), new RegExp(`^pool p: dir_path ${esc(stateDir)}/backup/x lies inside ${esc(stateDir)}/backup, which the directory of the state file ${esc(stateDir)}/qubes.xml \\(${esc(stateDir)}\\) keeps$`));
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: path.join(stateDir, 'qubes.xml.journal') }), /^pool p: dir_path .*\/state\/qubes.xml.journal is .*\/state\/qubes.xml.journal, which the directory of the state file .* keeps$/);
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: path.join(base, 'running-domains', 'x') }), /^pool p: dir_path .*\/base\/running-domains\/x lies inside .*\/base\/running-domains, which the base directory \(.*\) keeps$/);
      await app.addPool('file', 'atstate', { dir_path: stateDir });
      await app.addPool('file-reflink', 'atbase', { dir_path: base, setup_check: false });
      await fs.symlink(base, path.join(dir, 'b'));
      await refusedUnchanged(dir, () => app.addPool('xen', 'p', { dir_path: path.join(dir, 'b') }), new RegExp(`^pool p: dir_path ${esc(dir)}/b \\(real path ${esc(base)}\\) is pool atbase \\(dir_path ${esc(base)}\\)$`));
      await refusedUnchanged(dir, () => app.addPool('file', 'vols', { dir_path: path.join(base, 'appvms') }), new RegExp(`^pool vols: dir_path ${esc(base)}/appvms lies inside pool atbase \\(dir_path ${esc(base)}\\): ${esc(base)}/appvms/appvms lies inside ${esc(base)}/appvms$`));
      await app.addPool('file', 'inbase', { dir_path: path.join(base, 'pools', 'x') });
      await app.addPool('file', 'instate', { dir_path: path.join(stateDir, 'pool') });
      assert.deepEqual(app.poolNames(), ['atstate', 'atbase', 'inbase', 'instate']);
      assert.deepEqual((await fs.readdir(base)).sort(), ['appvms', 'pools', 'vm-templates']);
    } finally {
      await app.close();
    }
  });

  it('refuses a bind mount of a pool directory (and of a folder of it) under another path', async () => {
    const dir = await ctx.tempDir('bind');
    const t = await newApp(tfs, dir);
    const alias = path.join(dir, 'alias');
    const sub = path.join(dir, 'sub');
    await fs.mkdir(alias);
    await fs.mkdir(sub);
    const mounted: string[] = [];
    try {
      await run('mount', ['--bind', t.poolDir, alias]);
      mounted.push(alias);
      await run('mount', ['--bind', path.join(t.poolDir, 'appvms'), sub]);
      mounted.push(sub);
      await refusedUnchanged(t.poolDir, () => t.app.addPool('file-reflink', 'twin', { dir_path: alias, setup_check: false }), /^pool twin: dir_path .*\/alias is pool default .*through a mount/);
      await refusedUnchanged(t.poolDir, () => t.app.addPool('file-reflink', 'twin', { dir_path: path.join(alias, 'appvms', 'new') }), /lies inside pool default .*through a mount/);
      await refusedUnchanged(t.poolDir, () => t.app.addPool('file-reflink', 'twin', { dir_path: sub, setup_check: false }), /^pool twin: dir_path .*\/sub lies inside pool default .*through a mount/);
      // Without /proc (no mount table), device and inode still see the alias and what lies inside it.
      const at = (p: string) => resolvePlaces([{ kind: 'directory', path: p, access: 'own', option: 'dir_path' }], 'test', null);
      const other = { pool: 'default', what: 'pool default', places: await at(t.poolDir) };
      const sameByInode = await at(alias);
      assert.throws(() => checkPlacesAgainst({ pool: 'twin', places: sameByInode }, other), /^QubesValueError: pool twin: dir_path .*\/alias is pool default \(dir_path .*\/pool\) \(the same device and inode\)$/);
      const insideByInode = await at(path.join(alias, 'appvms', 'new'));
      assert.throws(() => checkPlacesAgainst({ pool: 'twin', places: insideByInode }, other), /lies inside pool default .*\(by device and inode\)$/);
    } finally {
      for (const m of mounted.reverse()) await run('umount', [m]);
      await t.app.close();
    }
  });

  it("refuses a class folder that holds what is not a domain's directory, leaving it exactly as it was; the top of the directory is not the pool's business", async () => {
    const dir = await ctx.tempDir('etc');
    const t = await newApp(tfs, dir);
    try {
      // (Until deliverable 6 was corrected, any entry at the top but class folders was refused: that refused /var/lib/qubes.)
      const etc = path.join(dir, 'etc');
      await fs.mkdir(path.join(etc, 'appvms', 'work'), { recursive: true });
      await fs.writeFile(path.join(etc, 'appvms', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
      await fs.mkdir(path.join(etc, 'ssh'), { recursive: true });
      await fs.writeFile(path.join(etc, 'ssh', 'sshd_config'), 'Port 22\n');
      const st = await fs.stat(path.join(etc, 'appvms'));
      for (const driver of ['file-reflink', 'file', 'xen'])
        await refusedUnchanged(dir, () => t.app.addPool(driver, 'etc', { dir_path: etc, ...(driver === 'file-reflink' ? { setup_check: false } : {}) }), /^pool etc: dir_path .*\/etc\/appvms already holds 'passwd', which are not a pool's/);
      const after = await fs.stat(path.join(etc, 'appvms'));
      assert.equal(after.mtimeMs, st.mtimeMs);
      assert.equal(after.ctimeMs, st.ctimeMs);
      // A symlink for a class folder, or a domain directory that is a symlink, is refused too.
      await fs.rm(path.join(etc, 'appvms', 'passwd'));
      await fs.symlink(path.join(dir, 'ssh'), path.join(etc, 'appvms', 'other'));
      await refusedUnchanged(dir, () => t.app.addPool('file', 'etc', { dir_path: etc }), /^pool etc: dir_path .*\/etc\/appvms already holds 'other'/);
      await fs.rm(path.join(etc, 'appvms', 'other'));
      await fs.symlink(path.join(etc, 'ssh'), path.join(etc, 'vm-templates'));
      await refusedUnchanged(dir, () => t.app.addPool('file', 'etc', { dir_path: etc }), /^pool etc: dir_path .*\/etc\/vm-templates is a symlink/);
      await fs.rm(path.join(etc, 'vm-templates'));
      // What a pool leaves (domain directories, an ext* lost+found) is fine; what lies beside the class folders is left alone.
      await fs.mkdir(path.join(etc, 'servicevms', 'lost+found'), { recursive: true });
      const beside = await walk(path.join(etc, 'ssh'));
      await t.app.addPool('xen', 'etc', { dir_path: etc });
      assert.deepEqual((await fs.readdir(etc)).sort(), ['appvms', 'servicevms', 'ssh', 'vm-templates']);
      assert.deepEqual(await walk(path.join(etc, 'ssh')), beside);
    } finally {
      await t.app.close();
    }
  });

  it('a setup that fails, or a save that fails, leaves no directory behind', async () => {
    const dir = await ctx.tempDir('undo');
    const writer = { fail: false };
    const t = await newApp(tfs, dir, { writeFile: failingWriter(writer) });
    try {
      if (!tfs.reflink) {
        const before = await walk(dir);
        await assert.rejects(t.app.addPool('file-reflink', 'strict', { dir_path: path.join(dir, 'new', 'strict') }), /does not support reflink/);
        assert.deepEqual(await walk(dir), before, 'the failed setup removed the directories it made');
      }
      const before = await walk(dir);
      writer.fail = true;
      await assert.rejects(t.app.addPool('file', 'unsaved', { dir_path: path.join(dir, 'x', 'unsaved') }), /no space left/);
      writer.fail = false;
      assert.deepEqual(await walk(dir), before, 'an add whose save failed removed the directories its setup made');
      assert.deepEqual(t.app.poolNames(), ['default']);
    } finally {
      await t.app.close();
    }
  });

  it('a callback pool is checked by the places of the pool it wraps', async () => {
    const dir = await ctx.tempDir('callback');
    const t = await newApp(tfs, dir);
    try {
      const conf = path.join(dir, 'callback.json');
      await fs.symlink(t.poolDir, path.join(dir, 'alias'));
      const backend = (p: string) => ({ backend: { driver: 'file-reflink', options: { dir_path: p, setup_check: 'False' } } });
      await fs.writeFile(conf, JSON.stringify({ over: backend(path.join(dir, 'alias')), own: backend(path.join(dir, 'cbdata')) }));
      await refusedUnchanged(dir, () => t.app.addPool('callback', 'cb', { conf_id: 'over', conf_path: conf }), /^pool cb: dir_path .*\/alias \(real path .*\/pool\) is pool default/);
      await t.app.addPool('callback', 'cb', { conf_id: 'own', conf_path: conf });
      // ...and other pools by the callback pool's places.
      await refusedUnchanged(dir, () => t.app.addPool('file', 'under', { dir_path: path.join(dir, 'cbdata', 'appvms', 'x') }), /lies inside pool cb \(dir_path .*\/cbdata\)/);
    } finally {
      await t.app.close();
    }
  });

  it('kernel directories: shared between kernel pools, kept apart from pools that write', async () => {
    const dir = await ctx.tempDir('kernels');
    const t = await newApp(tfs, dir);
    try {
      const kdir = path.join(dir, 'kernels');
      await fs.mkdir(path.join(kdir, '6.1.0'), { recursive: true });
      await t.app.addPool('linux-kernel', 'k1', { dir_path: kdir });
      await t.app.addPool('linux-kernel', 'k2', { dir_path: kdir });
      await t.app.addPool('linux-kernel', 'k3', { dir_path: path.join(kdir, '6.1.0') });
      await refusedUnchanged(dir, () => t.app.addPool('linux-kernel', 'kin', { dir_path: path.join(t.poolDir, 'appvms') }), /^pool kin: dir_path .*\/pool\/appvms lies inside pool default/);
      await refusedUnchanged(dir, () => t.app.addPool('file', 'fk', { dir_path: path.join(kdir, 'store') }), /^pool fk: dir_path .*\/kernels\/store lies inside pool k1 \(dir_path .*\/kernels\)/);
    } finally {
      await t.app.close();
    }
  });

  it('two adds of one place at once: the second waits for the first, then is refused', async () => {
    const dir = await ctx.tempDir('race');
    const t = await newApp(tfs, dir);
    try {
      const target = path.join(dir, 'target');
      await fs.mkdir(target);
      await fs.symlink(target, path.join(dir, 'alias'));
      // `one` sits in its setup (a pre_setup command) until `two` has settled, or 2 s at most: an
      // add that did not wait for it would be accepted meanwhile, and both would own the directory.
      const release = path.join(dir, 'release');
      const conf = path.join(dir, 'callback.json');
      const wait = `i=0; while [ ! -e '${release}' ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done`;
      await fs.writeFile(conf, JSON.stringify({ slow: { backend: { driver: 'file', options: { dir_path: target } }, shell: true, hooks: { pre_setup: wait } } }));
      const one = t.app.addPool('callback', 'one', { conf_id: 'slow', conf_path: conf });
      const two = t.app.addPool('file', 'two', { dir_path: path.join(dir, 'alias') });
      void two.catch(() => undefined).finally(() => fs.writeFile(release, ''));
      const results = await Promise.allSettled([one, two]);
      assert.equal(results[0].status, 'fulfilled', String((results[0] as PromiseRejectedResult).reason));
      assert.equal(results[1].status, 'rejected');
      assert.match(String((results[1] as PromiseRejectedResult).reason), /^QubesValueError: pool two: dir_path .*\/alias \(real path .*\/target\) is pool one/);
      assert.deepEqual(t.app.poolNames(), ['default', 'one']);
    } finally {
      await t.app.close();
    }
  });

  it('a pool loaded from the state keeps its place: a new pool cannot move in while it is unavailable', async () => {
    const dir = await ctx.tempDir('loaded');
    const t = await newApp(tfs, dir);
    await t.app.close();
    const stateFile = path.join(dir, 'qubes.xml');
    const lost = path.join(dir, 'lost');
    const nested = path.join(t.poolDir, 'nested');
    const text = await fs.readFile(stateFile, 'utf8');
    await fs.writeFile(
      stateFile,
      text.replace(
        '</pools>',
        `  <pool dir_path="${lost}" driver="no-such-driver" name="lost"/>\n` +
          `  <pool dir_path="${nested}" driver="file-reflink" name="nested" setup_check="False"/>\n` +
          `  <pool ceph_pool="rbd" image_prefix="qubes-" driver="rbd" name="ceph"/>\n  </pools>`,
      ),
    );
    const { app } = await openApp(dir);
    try {
      assert.ok(app.pool('lost') instanceof UnavailablePool);
      await refusedUnchanged(dir, () => app.addPool('file', 'p', { dir_path: lost }), /^pool p: dir_path .*\/lost is pool lost/);
      // Pools a state already nests (Qubes' own layout: vm-kernels in /var/lib/qubes) load, and included_in says so.
      assert.equal((await app.pool('nested').includedIn(app.pools()))?.name, 'default');
      // RBD image names: a prefix that covers another pool's (or is the same), in the same Ceph pool, is refused before any Ceph call.
      await assert.rejects(app.addPool('rbd', 'c2', { ceph_pool: 'rbd', image_prefix: 'q' }), /^QubesValueError: pool c2: image_prefix 'q' in Ceph pool rbd covers image_prefix 'qubes-' of pool ceph/);
      await assert.rejects(app.addPool('rbd', 'c2', { ceph_pool: 'rbd', image_prefix: 'qubes-' }), /^QubesValueError: pool c2: image_prefix 'qubes-' in Ceph pool rbd is also image_prefix 'qubes-' of pool ceph/);
      await assert.rejects(app.addPool('rbd', 'c2', { ceph_pool: 'rbd', image_prefix: 'qubes-x' }), /^QubesValueError: .* lies within image_prefix 'qubes-'/);
      assert.deepEqual(app.poolNames(), ['default', 'lost', 'nested', 'ceph']);
    } finally {
      await app.close();
    }
  });

  it('a storage.conf pool whose place conflicts stays listed, unavailable, with the reason; the others load', async () => {
    const dir = await ctx.tempDir('conf');
    const t = await newApp(tfs, dir);
    await t.app.close();
    await fs.symlink(t.poolDir, path.join(dir, 'alias'));
    const conf = path.join(dir, 'storage.conf');
    const good = path.join(dir, 'good');
    await fs.writeFile(
      conf,
      [
        '[twin]', 'driver=file', `dir_path=${dir}/alias`, '',
        '[good]', 'driver=file', `dir_path=${good}`, '',
        '[inner]', 'driver=file', `dir_path=${good}/appvms/inner`, '',
        '[up]', 'driver=file', `dir_path=${path.dirname(dir)}`, '',
      ].join('\n'),
    );
    const before = await walk(t.poolDir);
    const storageConf = { file: conf, context: { registry: await builtinRegistry(), baseDir: dir } };
    const { app } = await openApp(dir, { storageConf });
    try {
      assert.deepEqual(app.poolNames(), ['default', 'twin', 'good', 'inner', 'up']);
      assert.ok(app.isPoolAvailable('good'));
      const reason = (n: string): string => (app.pool(n) as UnavailablePool).reason;
      assert.match(reason('twin'), new RegExp(`^${esc(conf)}:1: pool twin: dir_path ${esc(dir)}/alias \\(real path ${esc(t.poolDir)}\\) is pool default`));
      assert.match(reason('inner'), new RegExp(`^${esc(conf)}:9: pool inner: dir_path .* lies inside pool good`));
      assert.match(reason('up'), new RegExp(`^${esc(conf)}:13: pool up: dir_path ${esc(path.dirname(dir))} holds the directory of the state file`));
      await assert.rejects(app.pool('twin').listVolumes(), /pool twin \(driver file\) is unavailable: .*is pool default/);
      assert.deepEqual(await walk(t.poolDir), before, 'the conflicting pool set nothing up');
      await assert.rejects(fs.stat(path.join(good, 'appvms', 'inner')), 'nor did the one inside another');
      assert.deepEqual((await fs.readdir(path.dirname(dir))).filter((n) => n === 'appvms' || n === 'vm-templates'), [], 'nor the one around the state directory');
    } finally {
      await app.close();
    }
  });

  it("an R3.2 storage.conf [default] (xen, no dir_path) loads available in the base directory, serves a domain there, and survives reopening", async () => {
    const dir = await ctx.tempDir('r32');
    const conf = path.join(dir, 'storage.conf');
    await fs.writeFile(conf, '[default]\ndriver=xen\n');
    const opts = { storageConf: { file: conf, context: { registry: await builtinRegistry(), baseDir: dir } }, baseDir: dir };
    let { app } = await openApp(dir, opts);
    try {
      assert.ok(app.isPoolAvailable('default'), app.pool('default') instanceof UnavailablePool ? (app.pool('default') as UnavailablePool).reason : '');
      assert.equal(app.pool('default').config()['dir_path'], dir);
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
      assert.ok((await fs.readdir(path.join(dir, 'appvms', 'work'))).includes('private.img'));
      assert.ok((await fs.readdir(path.join(dir, 'vm-templates', 'tpl'))).includes('root.img'));
      await app.close();
      ({ app } = await openApp(dir, opts));
      assert.ok(app.isPoolAvailable('default'));
      assert.deepEqual(app.domainList().map((d) => d.name).sort(), ['dom0', 'tpl', 'work']);
      assert.deepEqual(await app.pool('default').listVolumes(), ['appvms/work/private', 'vm-templates/tpl/private', 'vm-templates/tpl/root']);
      await app.start('work');
      await app.shutdown('work');
    } finally {
      await app.close();
    }
  });

  it('a pool at the base directory (beside qubes.xml, its journal and backups, and a pool in BASE/pools) never touches them', async () => {
    const dir = await ctx.tempDir('varlibqubes');
    const { app: first } = await openApp(dir, { baseDir: dir });
    await first.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pools', 'default'), setup_check: tfs.reflink });
    await first.createDomain({ klass: 'StandaloneVM', name: 'other', label: 'red' });
    // A backup of the state, and in it a file named like a pool's leftover copy: a sweep that left the class folders would take it.
    const backup = path.join(dir, 'backup', '2026-12-01');
    await fs.mkdir(backup, { recursive: true });
    await fs.writeFile(path.join(backup, 'qubes.xml'), await fs.readFile(path.join(dir, 'qubes.xml')));
    await fs.writeFile(path.join(backup, 'work-tmp-0a1b.img'), 'not the pool\'s');
    // The App's own backups of the state (backup/qubes-TIME.xml) come and go; the rest must not change.
    const untouched = async (): Promise<string[]> =>
      (await walk(dir)).filter((l) => /^(backup|pools)\//.test(l) && !/^backup\/qubes-[^/]*\.xml /.test(l));
    const before = await untouched();
    let app = first;
    try {
      await app.addPool('file-reflink', 'varlibqubes', { dir_path: dir, setup_check: tfs.reflink });
      // Its volumes are only ever in its class folders: a volume id elsewhere (from a hand-edited state) is refused.
      assert.throws(() => app.pool('varlibqubes').initVolume(null, { name: 'work-tmp-0a1b', vid: 'backup/2026-12-01/work-tmp-0a1b' }), /^QubesValueError: pool varlibqubes: volume id 'backup\/2026-12-01\/work-tmp-0a1b' must lie in a class folder/);
      await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black', pool: 'varlibqubes' });
      await app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl', pool: 'varlibqubes' });
      await app.start('work');
      await app.shutdown('work');
      await app.close();
      ({ app } = await openApp(dir, { baseDir: dir }));
      await app.start('work');
      await app.shutdown('work');
      await app.removeDomain('work');
      await app.removeDomain('tpl');
      await app.removePool('varlibqubes');
      assert.deepEqual(await untouched(), before, 'backups and the other pool are as they were');
      await app.close();
      ({ app } = await openApp(dir, { baseDir: dir }));
      assert.deepEqual(app.poolNames(), ['default']);
      assert.deepEqual(app.domainList().map((d) => d.name).sort(), ['dom0', 'other']);
      assert.ok((await app.pool('default').listVolumes()).includes('appvms/other/private'));
    } finally {
      await app.close();
    }
  });
});
