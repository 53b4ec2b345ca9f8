/**
 * QubesClient against a real qubesd over its Unix socket, and embedded (the
 * runtime opened in this process, as the tools do without a daemon): the
 * same steps and the same expected values for both.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { QubesClient } from '../../src/client/index.js';
import {
  PermissionDenied,
  QubesException,
  QubesLabelNotFoundError,
  QubesValueError,
  QubesVMInUseError,
  QubesVMNotFoundError,
} from '../../src/storage/errors.js';
import { waitFor } from '../admin/helpers.js';
import { removeTree, tempDirOn, TEST_FILESYSTEMS } from '../helpers/filesystems.js';
import { daemonScope, startQubesd, type DaemonProc } from '../daemon/helpers.js';

const MiB = 1024 * 1024;
const scope = daemonScope();
/**
 * Where the state and its pools go: a test filesystem with reflinks where
 * there is one (starting a domain copies its template's 10 GiB root: a
 * reflink there, a sparse copy of a minute or more on ext4), else /tmp.
 */
const reflinkFs = TEST_FILESYSTEMS.find((f) => f.reflink && f.root !== null);

/** 2 MiB whose every 4 KiB block differs (a copy in the wrong order would show). */
function pattern(bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE(i / 4, i);
  return b;
}

for (const kind of ['socket', 'embedded'] as const) {
  describe(`QubesClient (${kind})`, () => {
    let base = '';
    let qubes: QubesClient | undefined;
    let daemon: DaemonProc | undefined;
    const q = (): QubesClient => qubes!;

    before(async () => {
      base = reflinkFs ? await tempDirOn(reflinkFs, `client-${kind}`) : await fs.mkdtemp(path.join(os.tmpdir(), 'qs-client-'));
      if (kind === 'socket') {
        const sock = await scope.sock();
        daemon = await startQubesd(base, sock);
        scope.running.push(daemon);
        qubes = QubesClient.overSocket(sock);
      } else {
        qubes = await QubesClient.embedded(base);
      }
    });

    after(async () => {
      await qubes?.close();
      if (daemon && daemon.child.exitCode === null) {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
      }
      if (base) await removeTree(base);
    });

    it('goes through the transport asked for', () => {
      assert.equal(q().transport.kind, kind);
    });

    it('pools: list, drivers, add, info, set', async () => {
      assert.deepEqual(await q().pools(), ['default', 'linux-kernel']);
      const reflink = (await q().drivers()).find((d) => d.driver === 'file-reflink');
      assert.ok(reflink?.options.includes('dir_path'), JSON.stringify(reflink));
      await q().addPool('p2', 'file-reflink', [
        ['dir_path', path.join(base, 'p2')],
        ['setup_check', false],
        ['revisions_to_keep', 2],
      ]);
      assert.deepEqual(await q().pools(), ['default', 'linux-kernel', 'p2']);
      const info = await q().poolInfo('p2');
      assert.equal(info.name, 'p2');
      assert.equal(info.driver, 'file-reflink');
      assert.equal(typeof info.size, 'number');
      assert.equal(typeof info.usage, 'number');
      const fields = new Map(info.fields);
      assert.equal(fields.get('setup_check'), 'False');
      assert.equal(fields.get('revisions_to_keep'), '2');
      assert.equal(fields.get('dir_path'), path.join(base, 'p2'));
      await q().setPoolOption('p2', 'revisions_to_keep', 3);
      // (True is refused where the host cannot encrypt: test/storage/ephemeral.test.ts.)
      await q().setPoolOption('p2', 'ephemeral_volatile', false);
      const after = new Map((await q().poolInfo('p2')).fields);
      assert.equal(after.get('revisions_to_keep'), '3');
      assert.equal(after.get('ephemeral_volatile'), 'False');
    });

    it('pools: refusals come as the Qubes-named exception, nothing changed', async () => {
      await assert.rejects(q().poolInfo('nosuch'), PermissionDenied);
      await assert.rejects(q().removePool('nosuch'), PermissionDenied);
      await assert.rejects(q().addPool('p3', 'file-reflink', [['no_such_option', 1]]), QubesValueError);
      await assert.rejects(q().setPoolOption('p2', 'revisions_to_keep', 'many'), QubesException);
      assert.deepEqual(await q().pools(), ['default', 'linux-kernel', 'p2']);
    });

    it('pool usage rows: the figures of UsageDetails, in list order', async () => {
      // The usage is the filesystem's, which other processes change: only the size is compared between calls.
      const details = await q().poolUsageDetails('p2');
      assert.equal(typeof details['data_size'], 'number');
      assert.equal(typeof details['data_usage'], 'number');
      const rows = await q().poolUsage();
      assert.deepEqual(
        rows.map((r) => r.pool),
        ['default', 'linux-kernel', 'p2'],
      );
      const p2 = rows[2]!;
      assert.equal(p2.data.size, details['data_size']);
      assert.equal(typeof p2.data.usage, 'number');
      assert.equal(p2.data.percent, Math.round((p2.data.usage! / p2.data.size!) * 1000) / 10);
      assert.equal(p2.metadata, undefined, 'file-reflink reports no metadata');
      assert.equal(p2.threshold, 90);
      // Threshold 0: any pool with data in use is above it.
      const [zero] = await q().poolUsage({ pools: ['p2'], threshold: 0 });
      assert.deepEqual(zero!.above, zero!.data.percent! > 0 ? ['data'] : []);
      await assert.rejects(q().poolUsage({ pools: ['nosuch'] }), PermissionDenied);
      await assert.rejects(q().poolUsage({ pools: ['p2'], threshold: 101 }), QubesValueError);
    });

    it('domains: labels, create in pools, list, refusals', async () => {
      const labels = await q().labels();
      assert.ok(labels.includes('red') && labels.includes('black'), labels.join(','));
      await q().createDomain({ name: 'tpl', klass: 'TemplateVM', label: 'black', pool: 'p2' });
      await q().createDomain({ name: 'work', klass: 'AppVM', label: 'red', template: 'tpl', volumePools: [['private', 'p2']] });
      const doms = await q().domains();
      assert.deepEqual(
        doms.map((d) => [d.name, d.klass, d.state]),
        [
          ['dom0', 'AdminVM', 'Running'],
          ['tpl', 'TemplateVM', 'Halted'],
          ['work', 'AppVM', 'Halted'],
        ],
      );
      assert.match(doms[2]!.uuid, /^[0-9a-f-]{36}$/);
      assert.equal((await q().domain('work')).klass, 'AppVM');
      await assert.rejects(q().domain('nosuch'), QubesVMNotFoundError);
      await assert.rejects(q().createDomain({ name: 'w2', klass: 'AppVM', label: 'nolabel', template: 'tpl' }), QubesLabelNotFoundError);
      await assert.rejects(q().createDomain({ name: 'w3', klass: 'AppVM', label: 'red', template: 'nosuch' }), QubesVMNotFoundError);
      await assert.rejects(q().removeDomain('dom0'), QubesVMInUseError);
      assert.equal((await q().domains()).length, 3);
    });

    it('domainDetails: every domain, its properties and volume pools in one call, as the granular calls give them', async () => {
      const details = await q().domainDetails();
      assert.deepEqual(
        details.map((d) => [d.name, d.klass, d.state]),
        [
          ['dom0', 'AdminVM', 'Running'],
          ['tpl', 'TemplateVM', 'Halted'],
          ['work', 'AppVM', 'Halted'],
        ],
      );
      const work = details[2]!;
      assert.deepEqual(work.properties.get('label'), { isDefault: false, type: 'label', value: 'red' });
      assert.equal(work.properties.get('template')?.value, 'tpl');
      // Created with private in p2, the rest in the default pool; the template all in p2.
      assert.equal(work.volumePools.get('private'), 'p2');
      assert.equal(details[1]!.volumePools.get('root'), 'p2');
      // The same as the calls it stands for, for every domain.
      for (const d of details) {
        assert.deepEqual([...d.properties], [...(await q().properties(d.name))], d.name);
        const pools: [string, string][] = [];
        for (const v of await q().volumes(d.name)) pools.push([v, (await q().volumeInfo(d.name, v)).pool]);
        assert.deepEqual([...d.volumePools], pools, d.name);
        assert.equal(d.uuid, (await q().domain(d.name)).uuid);
      }
      assert.deepEqual((await q().domainDetails('work')).map((d) => d.name), ['work']);
      await assert.rejects(q().domainDetails('nosuch'), QubesVMNotFoundError);
    });

    it('properties, tags, features', async () => {
      const props = await q().properties('work');
      assert.deepEqual(props.get('label'), { isDefault: false, type: 'label', value: 'red' });
      assert.equal(props.get('template')?.value, 'tpl');
      assert.ok((await q().propertyNames('work')).includes('label'));
      assert.ok((await q().propertyNames('dom0-global')).length > 0);
      await q().setProperty('work', 'label', 'blue');
      assert.equal((await q().property('work', 'label')).value, 'blue');
      await q().addTag('work', 'mytag');
      const tags = await q().tags('work');
      assert.ok(tags.includes('mytag') && tags.includes('created-by-dom0'), tags.join(','));
      await q().setFeature('work', 'f1', 'v1');
      assert.deepEqual([...(await q().features('work'))], [['f1', 'v1']]);
    });

    it('volumes: info typed, resize, import with progress, export', async () => {
      assert.deepEqual((await q().volumes('work')).sort(), ['kernel', 'private', 'root', 'volatile']);
      const priv = await q().volumeInfo('work', 'private');
      assert.equal(priv.pool, 'p2');
      assert.equal(priv.vid, 'appvms/work/private');
      assert.equal(priv.rw, true);
      assert.equal(priv.saveOnStop, true);
      assert.equal(priv.snapOnStart, false);
      assert.equal(priv.revisionsToKeep, 3);
      assert.equal(priv.source, null);
      assert.equal(typeof priv.size, 'number');
      assert.equal(priv.fields.get('size'), String(priv.size));
      const root = await q().volumeInfo('work', 'root');
      assert.equal(root.snapOnStart, true);
      assert.equal(root.saveOnStop, false);
      assert.equal(root.source, 'vm-templates/tpl/root');

      await q().resizeVolume('work', 'private', priv.size + MiB);
      assert.equal((await q().volumeInfo('work', 'private')).size, priv.size + MiB);

      const data = pattern(2 * MiB);
      const progress: number[] = [];
      await q().importVolume('work', 'private', Readable.from([data.subarray(0, MiB), data.subarray(MiB)]), {
        size: data.length,
        onProgress: (n) => progress.push(n),
      });
      assert.deepEqual(progress, [MiB, 2 * MiB]);
      assert.equal((await q().volumeInfo('work', 'private')).size, data.length);
      // Without a size the data must be exactly the volume's size.
      await assert.rejects(q().importVolume('work', 'private', Readable.from([Buffer.alloc(10)])), QubesException);

      const held = await q().exportVolume('work', 'private');
      try {
        assert.ok((await fs.readFile(held.path)).equals(data), 'the export holds the imported data');
      } finally {
        await held.end();
      }
      await held.end(); // a second end is the first one

      // openExport: a file pool hands out its file (over a socket, held by the ExportStream call), gone once end() returns.
      const opened = await q().openExport('work', 'private');
      assert.equal(opened.kind, 'path');
      const openedPath = opened.kind === 'path' ? opened.path : '';
      try {
        assert.ok((await fs.readFile(openedPath)).equals(data), 'the opened export holds the imported data');
      } finally {
        await opened.end();
      }
      // Ended (its file gone) once end() returns; that end() waits for the daemon is shown by test/admin/reply-stream.test.ts.
      await assert.rejects(fs.stat(openedPath), { code: 'ENOENT' }, 'the export was ended');
    });

    it('start, shutdown (with events), revisions, revert, clone, clear', async () => {
      const seen: string[] = [];
      const sub = q().events('dom0', (e) => seen.push(`${e.event} ${e.subject}`));
      try {
        await sub.established;
        await q().startDomain('work');
        assert.equal(await q().powerState('work'), 'Running');
        await q().shutdownDomain('work', { wait: true });
        assert.equal(await q().powerState('work'), 'Halted');
        await waitFor(() => seen.includes('domain-shutdown work'));
        assert.ok(seen.includes('domain-start work'), seen.join('\n'));
      } finally {
        sub.close();
      }
      const revs = await q().revisions('work', 'private');
      assert.ok(revs.length >= 1, 'the stop made a revision');
      const timed = await q().revisionTimes('work', 'private');
      assert.deepEqual(timed.map((r) => r.id), revs);
      for (const r of timed) assert.ok(!Number.isNaN(Date.parse(r.time)) && r.time.endsWith('Z'), `time of ${r.id}: ${r.time}`);
      await q().revertVolume('work', 'private', revs.at(-1));
      await assert.rejects(q().revertVolume('work', 'private', 'nosuch'), QubesException);

      await q().cloneVolume('work', 'private', 'tpl', 'private');
      assert.equal((await q().volumeInfo('tpl', 'private')).size, 2 * MiB);
      await q().clearVolume('tpl', 'private');
      const held = await q().exportVolume('tpl', 'private');
      try {
        assert.ok((await fs.readFile(held.path)).equals(Buffer.alloc(2 * MiB)), 'cleared: zeros');
      } finally {
        await held.end();
      }
    });

    it('copyVolumes: each volume that keeps data, told before and after', async () => {
      await q().createDomain({ name: 'copy', klass: 'StandaloneVM', label: 'red', pool: 'p2' });
      const told: string[] = [];
      await q().copyVolumes('work', 'copy', (vol, size) => {
        told.push(`start ${vol} ${size}`);
        return { finish: () => told.push(`end ${vol}`) };
      });
      // work's root is not data of its own (snap_on_start), but copy's root keeps data: it gets a copy.
      const sizes = new Map([
        ['private', 2 * MiB],
        ['root', (await q().volumeInfo('work', 'root')).size],
      ]);
      const order = (await q().volumes('copy')).filter((v) => sizes.has(v));
      assert.deepEqual(told, order.flatMap((v) => [`start ${v} ${sizes.get(v)}`, `end ${v}`]));
      assert.equal((await q().volumeInfo('copy', 'private')).size, 2 * MiB);
    });

    it('remove domains and the pool', async () => {
      // An export still open does not keep its domain: the removal ends it.
      const opened = await q().openExport('work', 'private');
      const openedPath = opened.kind === 'path' ? opened.path : '';
      await fs.stat(openedPath);
      for (const d of ['copy', 'work', 'tpl']) await q().removeDomain(d);
      await assert.rejects(fs.stat(openedPath), { code: 'ENOENT' }, 'the removal ended the export');
      // Over a socket the call had ended already; embedded, the domain is gone and with it the export: nothing to end either way.
      await opened.end();
      assert.deepEqual(
        (await q().domains()).map((d) => d.name),
        ['dom0'],
      );
      await q().removePool('p2');
      assert.deepEqual(await q().pools(), ['default', 'linux-kernel']);
    });
  });
}
