import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CallbackPool, CallbackVolume, MAX_HOOK_STDERR } from '../../../src/drivers/callback/index.js';
import { DriverRegistry } from '../../../src/registry/drivers.js';
import { loadStorageConf } from '../../../src/registry/storage-conf.js';
import { QubesValueError, StoragePoolException } from '../../../src/storage/errors.js';
import type { DomainRef } from '../../../src/storage/volume.js';
import { makeTmp, removeTmp } from '../../registry/fixtures.js';
import { DirPool, dirDriver } from '../../../examples/dir-driver/index.js';

let tmp: string;
let reg: DriverRegistry;
let n = 0;
const NODE = process.execPath;
let RECORD: string;
let FAIL: string;
let BIGERR: string;
let SLEEP: string;
const domain: DomainRef = { name: 'work', dirPrefix: 'appvms' };

interface HookRecord {
  argv: string[];
  env: Record<string, string>;
  exists: boolean | null;
}

before(async () => {
  tmp = await makeTmp('callback');
  RECORD = path.join(tmp, 'record.mjs');
  FAIL = path.join(tmp, 'fail.mjs');
  BIGERR = path.join(tmp, 'bigerr.mjs');
  SLEEP = path.join(tmp, 'sleep.mjs');
  // Appends what it was given (argv, QS_* variables, whether argv[0] exists) to $HOOK_LOG.
  await fs.writeFile(
    RECORD,
    `import { appendFileSync, existsSync } from 'node:fs';
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('QS_')));
const argv = process.argv.slice(2);
appendFileSync(process.env.HOOK_LOG, JSON.stringify({ argv, env, exists: argv[0] ? existsSync(argv[0]) : null }) + '\\n');
`,
  );
  await fs.writeFile(FAIL, `process.stderr.write('refused by test: ' + (process.env.QS_EVENT ?? '') + '\\n'); process.exit(3);\n`);
  await fs.writeFile(BIGERR, `process.stderr.write('E'.repeat(100000)); process.exit(1);\n`);
  await fs.writeFile(SLEEP, `setTimeout(() => {}, 30000);\n`);
  process.env['QS_LEAK'] = 'from the daemon';
  reg = await DriverRegistry.open({ drivers: [dirDriver] });
});
after(async () => {
  delete process.env['QS_LEAK'];
  await removeTmp(tmp);
});

/** Writes a callback.json with one configuration `id` and returns a pool made from it. */
async function callbackPool(id: string, conf: Record<string, unknown>, name = `cb${++n}`): Promise<{ pool: CallbackPool; dir: string; log: string; file: string }> {
  const dir = path.join(tmp, `${name}-data`);
  const log = path.join(tmp, `${name}.log`);
  const file = path.join(tmp, `${name}.json`);
  const full = { backend: { driver: 'dir', options: { dir_path: dir } }, ...conf, env: { HOOK_LOG: log, ...((conf['env'] as object) ?? {}) } };
  await fs.writeFile(file, JSON.stringify({ other: { backend: { driver: 'dir' } }, [id]: full }, null, 2));
  const pool = (await reg.createPool('callback', name, { conf_id: id, conf_path: file })) as CallbackPool;
  return { pool, dir, log, file };
}

async function readLog(log: string): Promise<HookRecord[]> {
  const text = await fs.readFile(log, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as HookRecord);
}

const VOLUME_EVENTS = ['volume_create', 'volume_remove', 'volume_start', 'volume_stop', 'volume_resize', 'volume_revert', 'volume_import'];
const ALL_EVENTS = ['setup', 'destroy', ...VOLUME_EVENTS];

function hooksFor(events: string[], argv: string[]): Record<string, string[]> {
  return Object.fromEntries(events.flatMap((e) => [`pre_${e}`, `post_${e}`].map((h) => [h, argv])));
}

const VID = 'appvms/work/private';

describe('callback pool: hooks around every event, in order, with the facts', () => {
  it('runs pre and post commands around each operation of the backend', async () => {
    const tag = `cb-order-${n + 1}`;
    const img = path.join(tmp, `${tag}-data`, `${VID}.img`);
    const { pool, log, dir } = await callbackPool('order', { hooks: hooksFor(ALL_EVENTS, [NODE, RECORD, img, 'literal $(arg)']) }, tag);
    assert.equal(pool.backend instanceof DirPool, true);

    await pool.setup();
    const v = pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 1024 });
    await v.create();
    await v.start();
    await v.stop();
    await v.resize(2048);
    await fs.writeFile(`${img}@1`, 'older');
    await v.revert('1');
    const otherPool = (await reg.createPool('dir', 'plain', { dir_path: path.join(tmp, `${tag}-plain`) })) as DirPool;
    const src = otherPool.initVolume(domain, { name: 'private', vid: 'appvms/src/private', rw: true, save_on_stop: true, size: 4096 });
    await src.create();
    await v.importVolume(src);
    await v.remove();
    await pool.destroy();

    const records = await readLog(log);
    assert.deepEqual(
      records.map((r) => r.env['QS_EVENT']),
      [
        'pre_setup', 'post_setup',
        'pre_volume_create', 'post_volume_create',
        'pre_volume_start', 'post_volume_start',
        'pre_volume_stop', 'post_volume_stop',
        'pre_volume_resize', 'post_volume_resize',
        'pre_volume_revert', 'post_volume_revert',
        'pre_volume_import', 'post_volume_import',
        'pre_volume_remove', 'post_volume_remove',
        'pre_destroy', 'post_destroy',
      ],
    );
    const at = (ev: string): HookRecord => records.find((r) => r.env['QS_EVENT'] === ev)!;
    // The backend acted between pre and post.
    assert.equal(at('pre_volume_create').exists, false);
    assert.equal(at('post_volume_create').exists, true);
    assert.equal(at('pre_volume_remove').exists, true);
    assert.equal(at('post_volume_remove').exists, false);
    // argv is passed as given, word for word.
    assert.deepEqual(at('pre_volume_start').argv, [img, 'literal $(arg)']);

    assert.deepEqual(at('pre_volume_create').env, {
      QS_EVENT: 'pre_volume_create',
      QS_POOL: tag,
      QS_DRIVER: 'dir',
      QS_CONF_ID: 'order',
      QS_BACKEND_OPTIONS: JSON.stringify({ name: tag, driver: 'dir', dir_path: dir, revisions_to_keep: 1, ephemeral_volatile: false }),
      QS_VID: VID,
      QS_VOLUME_NAME: 'private',
      QS_DOMAIN: 'work',
      QS_SIZE: '1024',
      QS_RW: 'True',
      QS_SNAP_ON_START: 'False',
      QS_SAVE_ON_STOP: 'True',
      QS_SOURCE_VID: '',
      QS_REVISIONS_TO_KEEP: '1',
    });
    assert.equal(at('pre_volume_resize').env['QS_NEW_SIZE'], '2048');
    assert.equal(at('pre_volume_resize').env['QS_SIZE'], '1024');
    assert.equal(at('pre_volume_revert').env['QS_REVISION'], '1');
    assert.equal(at('pre_volume_import').env['QS_IMPORT'], 'volume');
    assert.equal(at('pre_volume_import').env['QS_IMPORT_VID'], 'appvms/src/private');
    assert.equal(at('pre_volume_import').env['QS_SOURCE_POOL'], 'plain');
    assert.equal(at('pre_volume_import').env['QS_IMPORT_SIZE'], '4096');
    assert.equal(at('pre_setup').env['QS_VID'], undefined);
    // Nothing of the daemon's own QS_* environment leaks in.
    assert.ok(records.every((r) => r.env['QS_LEAK'] === undefined));
    assert.equal(v.size, 4096);
  });

  it('runs pre_volume_import before importData and post_volume_import when it ends', async () => {
    const { pool, log } = await callbackPool('imp', { hooks: hooksFor(['volume_import'], [NODE, RECORD]) });
    await pool.setup();
    const v = pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 10 });
    await v.create();
    const p = await v.importData(10);
    await fs.writeFile(p, 'new data!!');
    assert.deepEqual((await readLog(log)).map((r) => r.env['QS_EVENT']), ['pre_volume_import']);
    await v.importDataEnd(true);
    await v.importData(10);
    await v.importDataEnd(false);
    const recs = await readLog(log);
    assert.deepEqual(
      recs.map((r) => [r.env['QS_EVENT'], r.env['QS_IMPORT'], r.env['QS_IMPORT_SIZE'] ?? r.env['QS_SUCCESS']]),
      [
        ['pre_volume_import', 'data', '10'],
        ['post_volume_import', 'data', 'True'],
        ['pre_volume_import', 'data', '10'],
        ['post_volume_import', 'data', 'False'],
      ],
    );
    assert.equal(await fs.readFile(await v.path(), 'utf8'), 'new data!!');
  });

  it('runs default_hook for events without their own entry; null silences one', async () => {
    const { pool, log } = await callbackPool('dflt', {
      default_hook: [NODE, RECORD],
      hooks: { pre_volume_create: null, post_setup: [NODE, RECORD, 'own'] },
    });
    await pool.setup();
    await pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 1 }).create();
    assert.deepEqual(
      (await readLog(log)).map((r) => [r.env['QS_EVENT'], r.argv.join(' ')]),
      [
        ['pre_setup', ''],
        ['post_setup', 'own'],
        ['post_volume_create', ''],
      ],
    );
  });

  it('runs a configuration without hooks as the plain backend', async () => {
    const { pool, dir } = await callbackPool('none', {});
    await pool.setup();
    const v = pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 5 });
    await v.create();
    assert.equal((await fs.stat(path.join(dir, `${VID}.img`))).size, 5);
    assert.deepEqual(await pool.listVolumes(), [VID]);
    const again = await pool.getVolume(VID);
    assert.ok(again instanceof CallbackVolume);
    assert.equal(again.pool, pool);
  });
});

describe('callback pool: a failing pre command aborts and changes nothing', () => {
  interface Case {
    event: string;
    prepare: (v: CallbackVolume, img: string) => Promise<void>;
    run: (pool: CallbackPool, v: CallbackVolume) => Promise<unknown>;
    unchanged: (v: CallbackVolume, img: string, dir: string) => Promise<void>;
  }
  const created = async (v: CallbackVolume): Promise<void> => {
    await v.pool.setup();
    await v.create();
  };
  const cases: Case[] = [
    {
      event: 'setup',
      prepare: async () => {},
      run: (pool) => pool.setup(),
      unchanged: async (_v, _img, dir) => assert.equal(await fs.stat(dir).catch(() => null), null),
    },
    {
      event: 'volume_create',
      prepare: async (v) => v.pool.setup(),
      run: (_p, v) => v.create(),
      unchanged: async (_v, img) => assert.equal(await fs.stat(img).catch(() => null), null),
    },
    {
      event: 'volume_remove',
      prepare: created,
      run: (_p, v) => v.remove(),
      unchanged: async (_v, img) => assert.equal((await fs.stat(img)).size, 100),
    },
    {
      event: 'volume_start',
      prepare: created,
      run: (_p, v) => v.start(),
      unchanged: async (v) => assert.equal(await v.isDirty(), false),
    },
    {
      event: 'volume_resize',
      prepare: created,
      run: (_p, v) => v.resize(500),
      unchanged: async (v, img) => {
        assert.equal(v.size, 100);
        assert.equal((await fs.stat(img)).size, 100);
      },
    },
    {
      event: 'volume_revert',
      prepare: async (v, img) => {
        await created(v);
        await fs.writeFile(`${img}@1`, 'old');
      },
      run: (_p, v) => v.revert('1'),
      unchanged: async (_v, img) => assert.equal(await fs.readFile(`${img}@1`, 'utf8'), 'old'),
    },
    {
      event: 'volume_import',
      prepare: created,
      run: (_p, v) => v.importData(100),
      unchanged: async (_v, img) => assert.equal(await fs.stat(`${img}.import`).catch(() => null), null),
    },
  ];
  for (const c of cases)
    it(`pre_${c.event}`, async () => {
      const { pool, dir, log } = await callbackPool('fail', {
        hooks: { [`pre_${c.event}`]: [NODE, FAIL], [`post_${c.event}`]: [NODE, RECORD] },
      });
      const v = pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 100 });
      const img = path.join(dir, `${VID}.img`);
      await c.prepare(v, img);
      await assert.rejects(c.run(pool, v), (e: unknown) => {
        assert.ok(e instanceof StoragePoolException, String(e));
        assert.match(e.message, new RegExp(`: ${c.event} aborted: the pre_${c.event} command failed \\(exit status 3\\): refused by test: pre_${c.event}$`));
        return true;
      });
      await c.unchanged(v, img, dir);
      assert.deepEqual(await readLog(log), [], 'the post command must not run');
    });

  it('reports a failing post command although the operation was done', async () => {
    const { pool, dir } = await callbackPool('postfail', { hooks: { post_volume_create: [NODE, FAIL] } });
    await pool.setup();
    const v = pool.initVolume(domain, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 7 });
    await assert.rejects(v.create(), /volume_create was done, but the post_volume_create command failed \(exit status 3\)/);
    assert.equal((await fs.stat(path.join(dir, `${VID}.img`))).size, 7);
  });

  it('keeps at most a bounded part of stderr', async () => {
    const { pool } = await callbackPool('bigerr', { hooks: { pre_setup: [NODE, BIGERR] } });
    await assert.rejects(pool.setup(), (e: unknown) => {
      const msg = (e as Error).message;
      assert.match(msg, /pre_setup command failed \(exit status 1\): E+ \[\.\.\.\]$/);
      assert.ok(msg.length < MAX_HOOK_STDERR + 300, `message is ${msg.length} characters`);
      return true;
    });
  });

  it('kills a command that runs past its timeout', async () => {
    const { pool, dir } = await callbackPool('slow', { hooks: { pre_setup: { argv: [NODE, SLEEP], timeout_ms: 300 } } });
    const t0 = Date.now();
    await assert.rejects(pool.setup(), /setup aborted: the pre_setup command failed \(timed out after 300 ms\)/);
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(await fs.stat(dir).catch(() => null), null);
  });

  it('says when a program cannot be run', async () => {
    const { pool } = await callbackPool('enoent', { hooks: { pre_setup: [path.join(tmp, 'no-such-program')] } });
    await assert.rejects(pool.setup(), /pre_setup command failed \(cannot run .*no-such-program: ENOENT\)/);
  });
});

describe('callback pool: values cannot inject commands', () => {
  const evil = (dir: string): string => `w$(touch ${dir}/PWNED1);touch ${dir}/PWNED2 \`touch ${dir}/PWNED3\` |touch ${dir}/PWNED4`;

  async function pwned(): Promise<string[]> {
    return (await fs.readdir(tmp)).filter((f) => f.startsWith('PWNED'));
  }

  it('passes hostile values literally to an argv command (no shell)', async () => {
    const { pool, log } = await callbackPool('inj', { hooks: { pre_volume_create: [NODE, RECORD, `$(touch ${tmp}/PWNED5)`] } });
    await pool.setup();
    const name = evil(tmp);
    await pool.initVolume({ name, dirPrefix: 'appvms' }, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 1 }).create();
    const [rec] = await readLog(log);
    assert.equal(rec!.env['QS_DOMAIN'], name);
    assert.deepEqual(rec!.argv, [`$(touch ${tmp}/PWNED5)`]);
    assert.deepEqual(await pwned(), []);
  });

  it('keeps values inert even in an explicit shell command, as quoted variables', async () => {
    const out = path.join(tmp, 'shell-out.txt');
    const { pool } = await callbackPool('sh', { shell: true, hooks: { pre_volume_create: `printf '%s' "$QS_DOMAIN" > '${out}'` } });
    await pool.setup();
    const name = evil(tmp);
    await pool.initVolume({ name, dirPrefix: 'appvms' }, { name: 'private', vid: VID, rw: true, save_on_stop: true, size: 1 }).create();
    assert.equal(await fs.readFile(out, 'utf8'), name);
    assert.deepEqual(await pwned(), []);
  });
});

describe('callback pool: configuration', () => {
  const bad: { name: string; write: (file: string) => string; options?: Record<string, string>; error: RegExp }[] = [
    { name: 'a missing file', write: () => '', options: { conf_path: '/nonexistent/callback.json' }, error: /callback configuration \/nonexistent\/callback.json: no such file/ },
    { name: 'invalid JSON', write: () => '{ nope', error: /not valid JSON/ },
    { name: 'an unknown configuration id', write: () => JSON.stringify({ a: {}, b: {} }), error: /no configuration 'c' \(present: a, b\)/ },
    { name: 'a command string without shell', write: () => conf({ hooks: { pre_setup: '/bin/true' } }), error: /hooks.pre_setup: a command string needs "shell": true/ },
    { name: 'an unknown hook', write: () => conf({ hooks: { pre_volume_explode: ['/bin/true'] } }), error: /unknown hook 'pre_volume_explode'/ },
    { name: 'an empty argv', write: () => conf({ hooks: { pre_setup: [] } }), error: /hooks.pre_setup: expected a non-empty argv array/ },
    { name: 'a non-string argument', write: () => conf({ hooks: { pre_setup: ['/bin/echo', 3] } }), error: /every argument must be a string/ },
    { name: 'a bad timeout', write: () => conf({ timeout_ms: 0 }), error: /timeout_ms must be a whole number of milliseconds/ },
    { name: 'an unknown key', write: () => conf({ sheel: true }), error: /unknown key 'sheel'/ },
    { name: 'a QS_ variable in env', write: () => conf({ env: { QS_POOL: 'x' } }), error: /env: 'QS_POOL': QS_ variables are set by the driver/ },
    { name: 'a callback backend', write: () => conf({ backend: { driver: 'callback' } }), error: /backend.driver cannot be 'callback'/ },
    { name: 'no backend', write: () => JSON.stringify({ c: { hooks: {} } }), error: /'backend' must be/ },
    { name: 'an unknown backend driver', write: () => conf({ backend: { driver: 'nosuch' } }), error: /backend nosuch of callback configuration 'c' .*unknown driver 'nosuch'/ },
    { name: 'backend options that do not fit', write: () => conf({ backend: { driver: 'dir', options: {} } }), error: /backend dir .*missing required option 'dir_path'/ },
  ];
  function conf(c: Record<string, unknown>): string {
    return JSON.stringify({ c: { backend: { driver: 'dir', options: { dir_path: '/x' } }, ...c } });
  }
  for (const c of bad)
    it(`refuses ${c.name}, naming the pool and file`, async () => {
      const file = path.join(tmp, `bad-${++n}.json`);
      await fs.writeFile(file, c.write(file));
      await assert.rejects(reg.createPool('callback', 'badcb', { conf_id: 'c', conf_path: file, ...c.options }), (e: unknown) => {
        assert.ok(e instanceof StoragePoolException, String(e));
        assert.match(e.message, /^pool badcb: /);
        assert.match(e.message, c.error);
        return true;
      });
    });

  it('requires conf_id', async () => {
    await assert.rejects(reg.createPool('callback', 'p', {}), (e: unknown) => e instanceof QubesValueError && /missing required option 'conf_id'/.test(e.message));
  });

  it('is configured from storage.conf like any pool', async () => {
    const { file } = await callbackPool('fromconf', {}, 'unused');
    const ini = path.join(tmp, 'storage-cb.conf');
    await fs.writeFile(ini, `[cbpool]\ndriver=callback\nconf_id=fromconf\nconf_path=${file}\n`);
    const loaded = await loadStorageConf(ini, { registry: reg, baseDir: tmp });
    const pool = loaded.pools.get('cbpool') as CallbackPool;
    assert.deepEqual(pool.config(), { name: 'cbpool', driver: 'callback', conf_id: 'fromconf', conf_path: file, revisions_to_keep: 1, ephemeral_volatile: false });
    assert.equal(pool.backend.name, 'cbpool');
  });

  it('forwards revisions_to_keep and ephemeral_volatile to the backend', async () => {
    // A file backend: its driver keeps at most 1 revision.
    const { pool } = await callbackPool('fwd', { backend: { driver: 'file', options: { dir_path: path.join(tmp, 'fwd-file') } } });
    pool.setOption('revisions_to_keep', 0);
    assert.equal(pool.backend.revisions_to_keep, 0);
    assert.equal(pool.revisions_to_keep, 0);
    // The backend's declaration is the callback pool's.
    assert.equal(pool.capabilities, pool.backend.capabilities);
    assert.throws(() => pool.setOption('revisions_to_keep', 3), (e: unknown) => e instanceof QubesValueError && /more than driver file keeps \(at most 1 revision\)/.test(e.message));
    assert.equal(pool.backend.revisions_to_keep, 0, 'nothing changed');
    const set = (await reg.createPool('callback', 'fwd2', { conf_id: 'fwd', conf_path: path.join(tmp, `${pool.name}.json`), ephemeral_volatile: true })) as CallbackPool;
    assert.equal(set.backend.ephemeral_volatile, true);
  });

  it('maps a source to the backend and refuses one from another pool', async () => {
    const { pool } = await callbackPool('src', {});
    const tpl = pool.initVolume(domain, { name: 'root', vid: 'vm-templates/t/root', rw: true, save_on_stop: true, size: 1 });
    const snap = pool.initVolume(domain, { name: 'root', vid: 'appvms/work/root', rw: true, snap_on_start: true, source: tpl, size: 1 });
    assert.equal(snap.source, tpl);
    assert.equal(snap.backend.source, tpl.backend);
    const { pool: other } = await callbackPool('src', {});
    assert.throws(
      () => other.initVolume(domain, { name: 'root', vid: 'appvms/x/root', rw: true, snap_on_start: true, source: tpl, size: 1 }),
      /source vm-templates\/t\/root is not a volume of this pool/,
    );
    snap.setRevisionsToKeep(0);
    assert.equal(snap.backend.revisions_to_keep, 0);
    assert.equal((await snap.info()).pool, pool.name);
    assert.equal(snap.config().pool, pool.name);
  });
});
