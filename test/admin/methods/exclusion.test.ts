// Operations on one domain exclude each other across the daemon (issue 12):
// over the real socket, an import that streams holds its domain, so a start,
// shutdown, removal or other volume change of it meanwhile is refused at once
// naming the import, while short operations wait for each other (a start in
// progress makes a revert, a resize, an import wait for it). A stalled
// client holds the domain until the stall timeout drops it; a client that
// goes away releases it at once. After each case the committed data is what
// the acknowledged calls define (kept by the test, never read back from the
// implementation), no file is left without its domain, and names are free
// again after a refused or rolled-back call.
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { createDispatchContext, runCall, silentLog } from '../../../src/admin/index.js';
import { decodeReply } from '../../../src/admin/protocol/index.js';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles, MiB, pattern, sha256 } from '../../helpers/data.js';
import { waitFor } from '../helpers.js';
import { PRIVATE_SIZE, ROOT_SIZE, raw, startRig, type Rig } from './helpers.js';

const IMPORT = 'admin.vm.volume.Import';
const hash = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

type Reply = { kind: 'ok'; result: string } | { kind: 'error'; name: string; message: string };

function decode(bytes: Buffer): Reply {
  const r = decodeReply(bytes);
  return r.kind === 'ok' ? { kind: 'ok', result: r.result.toString('utf8') } : { kind: 'error', name: r.name, message: r.message };
}

async function call(rig: Rig, method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<Reply> {
  return decode(await raw(rig.socketPath, method, dest, arg, payload));
}

function assertOk(r: Reply, what: string): string {
  if (r.kind !== 'ok') assert.fail(`${what}: expected success, got ${r.name}: ${r.message}`);
  return r.result;
}

function assertError(r: Reply, name: string, message: string | RegExp, what: string): void {
  if (r.kind !== 'error') assert.fail(`${what}: expected ${name}, got success`);
  assert.equal(r.name, name, `${what}: ${r.name}: ${r.message}`);
  if (typeof message === 'string') assert.equal(r.message, message, what);
  else assert.match(r.message, message, what);
}

/** A call whose payload the test sends piece by piece, keeping the connection open in between. */
interface LiveCall {
  /** The reply bytes, once the server closes the connection. */
  readonly reply: Promise<Buffer>;
  write(b: Buffer): void;
  end(b?: Buffer): void;
  /** Goes away without ending the payload. */
  cut(): void;
}

/** Connections of live calls, cut after each test (a failed test must not leave an import holding its domain). */
const liveSockets = new Set<net.Socket>();

function openCall(rig: Rig, method: string, dest: string, arg: string, first: Buffer = Buffer.alloc(0)): LiveCall {
  const sock = net.connect(rig.socketPath);
  liveSockets.add(sock);
  sock.on('close', () => liveSockets.delete(sock));
  const chunks: Buffer[] = [];
  sock.on('error', () => {});
  sock.on('data', (c: Buffer) => chunks.push(c));
  const reply = new Promise<Buffer>((r) => sock.on('close', () => r(Buffer.concat(chunks))));
  sock.write(Buffer.concat([Buffer.from(`${method}+${arg} dom0 name ${dest}\0`, 'latin1'), first]));
  return { reply, write: (b) => sock.write(b), end: (b) => (b ? sock.end(b) : sock.end()), cut: () => sock.destroy() };
}

/** Resolves once an event (after index `from` of the rig's events) matches. */
async function eventAfter(rig: Rig, from: number, subject: string, event: string): Promise<void> {
  await waitFor(() => rig.events.slice(from).some((e) => e.subject === subject && e.event === event), 30_000);
}

/** An Import into DEST:VOLUME that has begun (its data file made) and has `sent` bytes of `data` sent. */
async function importBegun(rig: Rig, dest: string, volume: string, data: Buffer, sent = MiB): Promise<LiveCall> {
  const from = rig.events.length;
  const live = openCall(rig, IMPORT, dest, volume, data.subarray(0, sent));
  await eventAfter(rig, from, dest, 'domain-volume-import-begin');
  return live;
}

/** A broken build must fail, not hang. */
const LIMIT = { timeout: 180_000 };

const busy = (dest: string, what: string): string => `domain ${dest} is busy: ${what}`;

describeEachFs('admin: operations on one domain exclude each other', (tfs, fsx) => {
  let rig: Rig;
  /** What each domain's private volume must hold now (hash), as the acknowledged calls defined it. */
  const committed = new Map<string, string>();

  const imgOf = (domain: string, volume = 'private', dir = 'appvms') => path.join(rig.poolDir, dir, domain, `${volume}.img`);

  async function importWhole(dest: string, data: Buffer): Promise<void> {
    const live = openCall(rig, IMPORT, dest, 'private');
    live.end(data);
    assertOk(decode(await live.reply), `import into ${dest}`);
    committed.set(dest, hash(data));
  }

  async function create(name: string, klass = 'AppVM', template = 'tpl'): Promise<void> {
    assertOk(await call(rig, `admin.vm.Create.${klass}`, 'dom0', template, `name=${name} label=red`), `create ${name}`);
    committed.set(name, hash(Buffer.alloc(PRIVATE_SIZE)));
  }

  async function remove(name: string): Promise<void> {
    assertOk(await call(rig, 'admin.vm.Remove', name), `remove ${name}`);
    committed.delete(name);
  }

  /** Every domain's private image holds what the model says; no directory without its domain; no temporary files. */
  async function checkState(): Promise<void> {
    for (const [name, want] of committed) {
      const d = rig.rt.app.findDomain(name);
      assert.ok(d, `domain ${name} exists`);
      assert.equal(d.isRunning, false, `${name} halted when checked`);
      const file = imgOf(name, 'private', d.klass === 'TemplateVM' ? 'vm-templates' : 'appvms');
      assert.equal(await sha256(file), want, `${name}:private holds what the acknowledged calls define`);
    }
    const names = new Set(rig.rt.app.domainList().map((d) => d.name));
    for (const sub of ['appvms', 'vm-templates']) {
      const dirs = await fs.readdir(path.join(rig.poolDir, sub)).catch(() => [] as string[]);
      for (const dir of dirs) assert.ok(names.has(dir), `${sub}/${dir} is left without its domain`);
    }
    const debris = (await listFiles(rig.poolDir)).filter((f) => /-(import|tmp-|export-)/.test(f));
    assert.deepEqual(debris, [], 'no import, copy or export files left');
    assert.deepEqual(rig.rt.app.holdersOf('work'), [], 'nothing holds work any more');
  }

  before(async () => {
    rig = await startRig(tfs, await fsx.tempDir('exclusion'));
    await create('tpl', 'TemplateVM', '');
    committed.delete('tpl'); // its private volume is not looked at
    await create('work');
    await create('other');
  });
  after(() => rig?.stop());
  // Each test starts from a quiet daemon (a failed one may have left a call
  // streaming or a domain running), so that each fails only for its own reason.
  afterEach(async () => {
    for (const sock of liveSockets) sock.destroy();
    const app = rig.rt.app;
    await waitFor(() => app.domainList().every((d) => app.holdersOf(d.name).length === 0), 90_000).catch(() => undefined);
    for (const d of app.domainList()) if (d.isRunning && d.klass !== 'AdminVM') await app.kill(d.name).catch(() => undefined);
  });

  test('Start while an import streams is refused at once, naming it; the import then commits exactly its data', LIMIT, async () => {
    assertOk(await call(rig, 'admin.vm.volume.Set.revisions_to_keep', 'work', 'private', '0'), 'revisions_to_keep=0');
    const data = pattern(PRIVATE_SIZE, 1);
    const live = await importBegun(rig, 'work', 'private', data);
    assertError(await call(rig, 'admin.vm.Start', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Start');
    assert.equal(rig.rt.app.domain('work').powerState, 'Halted');
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('work', hash(data));
    await checkState();
    // Now a start and a shutdown go through, and the data stays what was imported (no writes in between).
    assertOk(await call(rig, 'admin.vm.Start', 'work'), 'Start after the import');
    assertOk(await call(rig, 'admin.vm.Shutdown', 'work'), 'Shutdown');
    await checkState();
  });

  test('Shutdown and Kill while an import streams are refused naming it (not "not running")', LIMIT, async () => {
    const data = pattern(PRIVATE_SIZE, 2);
    const live = await importBegun(rig, 'work', 'private', data);
    assertError(await call(rig, 'admin.vm.Shutdown', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Shutdown');
    assertError(await call(rig, 'admin.vm.Kill', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Kill');
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('work', hash(data));
    await checkState();
  });

  test('Remove while an import streams is refused; the import commits; then the removal leaves no file and the name is free', LIMIT, async () => {
    const data = pattern(PRIVATE_SIZE, 3);
    const live = await importBegun(rig, 'work', 'private', data);
    assertError(await call(rig, 'admin.vm.Remove', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Remove');
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('work', hash(data));
    await checkState();
    await remove('work');
    await assert.rejects(fs.stat(path.join(rig.poolDir, 'appvms', 'work')), { code: 'ENOENT' });
    await checkState();
    await create('work');
    await checkState();
  });

  test('every other change of the volume or its domain is refused while the import streams; the data and revisions are the import\'s', LIMIT, async () => {
    assertOk(await call(rig, 'admin.vm.volume.Set.revisions_to_keep', 'work', 'private', '1'), 'revisions_to_keep=1');
    const previous = pattern(PRIVATE_SIZE, 4);
    await importWhole('work', previous);
    const data = pattern(PRIVATE_SIZE, 5);
    const token = assertOk(await call(rig, 'admin.vm.volume.CloneFrom', 'other', 'private'), 'CloneFrom');
    const live = await importBegun(rig, 'work', 'private', data);
    const what = busy('work', 'import into volume private');
    const refused: Array<[string, string, string]> = [
      ['admin.vm.volume.Revert', 'private', ''],
      ['admin.vm.volume.Resize', 'private', String(8 * MiB)],
      ['admin.vm.volume.Clear', 'private', ''],
      ['admin.vm.volume.Set.rw', 'private', 'False'],
      ['admin.vm.volume.Set.revisions_to_keep', 'private', '3'],
      ['admin.vm.volume.CloneTo', 'private', token],
      ['admin.vm.property.Set', 'label', 'blue'],
    ];
    for (const [method, arg, payload] of refused) assertError(await call(rig, method, 'work', arg, payload), 'QubesVMInUseError', what, method);
    // A second import, whole, to the same or another way in.
    const second = openCall(rig, IMPORT, 'work', 'private');
    second.end(pattern(PRIVATE_SIZE, 6));
    assertError(decode(await second.reply), 'QubesVMInUseError', what, 'a second Import');
    const withSize = openCall(rig, 'admin.vm.volume.ImportWithSize', 'work', 'private');
    withSize.end(Buffer.concat([Buffer.from(`${MiB}\n`), pattern(MiB, 7)]));
    assertError(decode(await withSize.reply), 'QubesVMInUseError', what, 'ImportWithSize');
    // The token was used up by the refused CloneTo.
    assertError(await call(rig, 'admin.vm.volume.CloneTo', 'other', 'private', token), 'QubesVolumeCopyTokenNotFoundError', /already used/, 'token reuse');
    // Reading is not a change: Info and ListSnapshots answer meanwhile.
    assert.match(assertOk(await call(rig, 'admin.vm.volume.Info', 'work', 'private'), 'Info'), new RegExp(`\nsize=${PRIVATE_SIZE}\n`));
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('work', hash(data));
    await checkState();
    assert.match(assertOk(await call(rig, 'admin.vm.volume.Info', 'work', 'private'), 'Info'), /\nrw=True\n.*\nrevisions_to_keep=1\n/s);
    assert.equal((await fs.stat(imgOf('work'))).size, PRIVATE_SIZE, 'no resize went through');
    // Exactly one revision, holding the data of the import before.
    const revs = assertOk(await call(rig, 'admin.vm.volume.ListSnapshots', 'work', 'private'), 'ListSnapshots').split('\n').filter(Boolean);
    assert.equal(revs.length, 1, `one revision: ${revs.join(',')}`);
    const revFiles = (await listFiles(path.join(rig.poolDir, 'appvms', 'work'))).filter((f) => /^private\.img\.[0-9]+@/.test(f));
    assert.equal(revFiles.length, 1);
    assert.equal(await sha256(path.join(rig.poolDir, 'appvms', 'work', revFiles[0]!)), hash(previous), 'the revision holds the previous import');
  });

  test('a start in progress makes Revert, Resize and Import wait for it: revert and import are then refused (running), the resize runs after it', LIMIT, async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inStart = new Promise<void>((r) => (entered = r));
    const off = rig.rt.app.events.on('domain-pre-start', async (e) => {
      if (e.subject !== 'work') return;
      entered();
      await gate;
    });
    const waiting = (what: string) => rig.rt.app.holdersOf('work').some((h) => h.what === what && !h.holding);
    // A revision to revert to, and known data to grow.
    assertOk(await call(rig, 'admin.vm.volume.Set.revisions_to_keep', 'work', 'private', '1'), 'revisions_to_keep=1');
    await importWhole('work', pattern(PRIVATE_SIZE, 15));
    const base = pattern(PRIVATE_SIZE, 16);
    await importWhole('work', base);
    try {
      const from = rig.events.length;
      const start = call(rig, 'admin.vm.Start', 'work');
      await inStart;
      let early: Reply | undefined;
      const revert = call(rig, 'admin.vm.volume.Revert', 'work', 'private');
      const resize = call(rig, 'admin.vm.volume.Resize', 'work', 'private', String(6 * MiB));
      void revert.then((r) => (early ??= r));
      void resize.then((r) => (early ??= r));
      // Each waits behind the start (or, without the mechanism, replies while the start is still held up).
      await waitFor(() => early !== undefined || (waiting('revert of volume private') && waiting('resize of volume private')), 30_000);
      assert.equal(early, undefined, `a call went through while the start was in progress: ${JSON.stringify(early)}`);
      const imp = openCall(rig, IMPORT, 'work', 'private');
      imp.end(pattern(PRIVATE_SIZE, 8));
      let importEarly: Buffer | undefined;
      void imp.reply.then((r) => (importEarly = r));
      await waitFor(() => importEarly !== undefined || waiting('import into volume private'), 30_000);
      assert.equal(importEarly && decode(importEarly).kind, undefined, 'the import went through while the start was in progress');
      // Behind a waiting import, a short change is refused at once rather than queued behind a client-paced transfer.
      assertError(await call(rig, 'admin.vm.volume.Set.revisions_to_keep', 'work', 'private', '1'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'a change behind the waiting import');
      release();
      assertOk(await start, 'Start');
      assertError(await revert, 'QubesVMNotHaltedError', /running/, 'Revert after the start');
      assertOk(await resize, 'Resize after the start');
      assertError(decode(await imp.reply), 'QubesVMNotHaltedError', /running/, 'Import after the start');
      const order = rig.events.slice(from).filter((e) => e.subject === 'work').map((e) => e.event);
      assert.ok(order.indexOf('domain-start') < order.indexOf('volume-resized'), order.join(' '));
      assert.ok(!order.includes('volume-imported') && !order.includes('volume-reverted'), order.join(' '));
    } finally {
      off();
      release();
    }
    assertOk(await call(rig, 'admin.vm.Shutdown', 'work'), 'Shutdown');
    // The resize grew the committed image (zeros at the end); the rest is what was imported before.
    const grown = Buffer.concat([base, Buffer.alloc(2 * MiB)]);
    committed.set('work', hash(grown));
    await checkState();
  });

  test('a shutdown in progress makes an Import wait for it; the import then goes through on the halted domain', LIMIT, async () => {
    assertOk(await call(rig, 'admin.vm.Start', 'work'), 'Start');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inShutdown = new Promise<void>((r) => (entered = r));
    const off = rig.rt.app.events.on('domain-pre-shutdown', async (e) => {
      if (e.subject !== 'work') return;
      entered();
      await gate;
    });
    const data = pattern(6 * MiB, 9);
    try {
      const shutdown = call(rig, 'admin.vm.Shutdown', 'work');
      await inShutdown;
      const imp = openCall(rig, 'admin.vm.volume.ImportWithSize', 'work', 'private', Buffer.from(`${6 * MiB}\n`));
      imp.end(data);
      let early: Buffer | undefined;
      void imp.reply.then((r) => (early = r));
      await waitFor(() => early !== undefined || rig.rt.app.holdersOf('work').some((h) => h.what === 'import into volume private' && !h.holding), 30_000);
      assert.equal(early && decode(early).kind, undefined, 'the import waited for the shutdown');
      release();
      assertOk(await shutdown, 'Shutdown');
      assertOk(decode(await imp.reply), 'Import after the shutdown');
    } finally {
      off();
      release();
    }
    committed.set('work', hash(data));
    await checkState();
  });

  test('a client that stalls mid-import holds the domain until the stall timeout drops it; then the old data stays and the domain is usable', LIMIT, async () => {
    // A rig of its own with a short stall timeout.
    const own = await startRig(tfs, await fsx.tempDir('stall'), {}, { requestTimeoutMs: 2000 });
    try {
      await own.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await own.rt.app.createDomain({ klass: 'AppVM', name: 'slow', label: 'red', template: 'tpl' });
      const before = await sha256(path.join(own.poolDir, 'appvms', 'slow', 'private.img'));
      const from = own.events.length;
      const live = await importBegun(own, 'slow', 'private', pattern(PRIVATE_SIZE, 10));
      // Stalled: the connection stays open, nothing more comes.
      assertError(await call(own, 'admin.vm.Start', 'slow'), 'QubesVMInUseError', busy('slow', 'import into volume private'), 'Start while stalled');
      assertError(await call(own, 'admin.vm.Remove', 'slow'), 'QubesVMInUseError', busy('slow', 'import into volume private'), 'Remove while stalled');
      await eventAfter(own, from, 'slow', 'domain-volume-import-end');
      const end = own.events.slice(from).find((e) => e.event === 'domain-volume-import-end');
      assert.deepEqual(end?.pairs, [['volume', 'private'], ['success', 'False']]);
      assert.equal(await live.reply.then((b) => b.length), 0, 'the stalled client got no reply: it was dropped');
      await waitFor(() => own.rt.app.holdersOf('slow').length === 0);
      assert.equal(await sha256(path.join(own.poolDir, 'appvms', 'slow', 'private.img')), before, 'old data kept');
      assert.deepEqual((await listFiles(own.poolDir)).filter((f) => /-(import|tmp-)/.test(f)), []);
      assertOk(await call(own, 'admin.vm.Start', 'slow'), 'Start after the drop');
      assertOk(await call(own, 'admin.vm.Shutdown', 'slow'), 'Shutdown');
      assertOk(await call(own, 'admin.vm.Remove', 'slow'), 'Remove');
      assertOk(await call(own, 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=slow label=red'), 'the name is free again');
    } finally {
      await own.stop();
    }
  });

  test('a client that goes away mid-import: rolled back, nothing left, the domain can be removed and its name reused at once', LIMIT, async () => {
    const from = rig.events.length;
    const live = await importBegun(rig, 'work', 'private', pattern(PRIVATE_SIZE, 11), 2 * MiB);
    assertError(await call(rig, 'admin.vm.Remove', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Remove during the import');
    live.cut();
    await eventAfter(rig, from, 'work', 'domain-volume-import-end');
    await waitFor(() => rig.rt.app.holdersOf('work').length === 0);
    await checkState(); // the data from before the import
    await remove('work');
    await checkState();
    await create('work');
    await checkState();
  });

  test('a template: removal refused while its root import streams; creating and starting a domain on it meanwhile is fine and sees the committed root', LIMIT, async () => {
    await create('tpl2', 'TemplateVM', '');
    committed.delete('tpl2');
    const rootImg = imgOf('tpl2', 'root', 'vm-templates');
    const oldRoot = await sha256(rootImg);
    const newRoot = pattern(ROOT_SIZE, 12);
    const live = await importBegun(rig, 'tpl2', 'root', newRoot);
    assertError(await call(rig, 'admin.vm.Remove', 'tpl2'), 'QubesVMInUseError', busy('tpl2', 'import into volume root'), 'Remove the template');
    // The committed root changes only when the import ends (one rename): a domain started meanwhile sees the old one.
    await create('app2', 'AppVM', 'tpl2');
    assertOk(await call(rig, 'admin.vm.Start', 'app2'), 'Start an AppVM of the template');
    const snap = /\npath=([^\n]+)\n/.exec(assertOk(await call(rig, 'admin.vm.volume.Info', 'app2', 'root'), 'Info'))![1]!;
    assert.equal(await sha256(snap), oldRoot, 'the running AppVM sees the root committed before the import');
    live.end(newRoot.subarray(MiB));
    assertOk(decode(await live.reply), 'the root import');
    assert.equal(await sha256(rootImg), hash(newRoot));
    assert.equal(await sha256(snap), oldRoot, 'still the old root while it runs');
    assertOk(await call(rig, 'admin.vm.Shutdown', 'app2'), 'Shutdown');
    assertOk(await call(rig, 'admin.vm.Start', 'app2'), 'Start again');
    const snap2 = /\npath=([^\n]+)\n/.exec(assertOk(await call(rig, 'admin.vm.volume.Info', 'app2', 'root'), 'Info'))![1]!;
    assert.equal(await sha256(snap2), hash(newRoot), 'a new start sees the imported root');
    assertOk(await call(rig, 'admin.vm.Shutdown', 'app2'), 'Shutdown');
    await checkState();
    await remove('app2');
    await remove('tpl2');
    await checkState();
  });

  test('a change of the template\'s kernel is refused while an import streams into a domain based on it (its volumes would be rebuilt)', LIMIT, async () => {
    await create('tpl3', 'TemplateVM', '');
    committed.delete('tpl3');
    await create('app3', 'AppVM', 'tpl3');
    const data = pattern(PRIVATE_SIZE, 13);
    const live = await importBegun(rig, 'app3', 'private', data);
    assertError(await call(rig, 'admin.vm.property.Set', 'tpl3', 'kernel', ''), 'QubesVMInUseError', busy('app3', 'import into volume private'), 'kernel of tpl3');
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('app3', hash(data));
    assertOk(await call(rig, 'admin.vm.property.Set', 'tpl3', 'kernel', ''), 'kernel of tpl3 afterwards');
    await checkState();
    await remove('app3');
    await remove('tpl3');
    await checkState();
  });

  test('an export never ended does not keep its domain: the removal ends it (file gone, ExportEnd refused); clone from a domain being imported into copies its committed data', LIMIT, async () => {
    await create('gone');
    const exported = assertOk(await call(rig, 'admin.vm.volume.Export', 'gone', 'private'), 'Export');
    assert.equal(await sha256(exported), committed.get('gone'));
    await remove('gone');
    await assert.rejects(fs.lstat(exported), { code: 'ENOENT' }, 'the removal ended the export');
    assertError(await call(rig, 'admin.vm.volume.ExportEnd', 'gone', 'private', exported), 'QubesVMNotFoundError', /gone/, 'ExportEnd after the removal');
    await checkState();
    const ended = assertOk(await call(rig, 'admin.vm.volume.Export', 'work', 'private'), 'Export');
    assertOk(await call(rig, 'admin.vm.volume.ExportEnd', 'work', 'private', ended), 'ExportEnd');
    // Clone from work into other while an import into work streams: allowed, copies what work has committed.
    const data = pattern(PRIVATE_SIZE, 14);
    const token = assertOk(await call(rig, 'admin.vm.volume.CloneFrom', 'work', 'private'), 'CloneFrom');
    const live = await importBegun(rig, 'work', 'private', data);
    assertOk(await call(rig, 'admin.vm.volume.CloneTo', 'other', 'private', token), 'CloneTo other');
    committed.set('other', committed.get('work')!);
    live.end(data.subarray(MiB));
    assertOk(decode(await live.reply), 'the import');
    committed.set('work', hash(data));
    await checkState();
    await remove('work');
    await create('work');
    await checkState();
  });
  test('in-process, as the embedded tools call: the same hold (an import fed by the tool keeps Start and Remove out until it ends)', LIMIT, async () => {
    const ctx = createDispatchContext({ methods: rig.rt.methods, log: silentLog });
    const inProcess = async (method: string, dest: string, arg = '', payload: Buffer | PassThrough = Buffer.alloc(0)) =>
      decode(await runCall(ctx, { method, dest, arg }, payload));
    const data = pattern(PRIVATE_SIZE, 17);
    const feed = new PassThrough();
    const from = rig.events.length;
    const imp = inProcess(IMPORT, 'work', 'private', feed);
    feed.write(data.subarray(0, MiB));
    await eventAfter(rig, from, 'work', 'domain-volume-import-begin');
    assertError(await inProcess('admin.vm.Start', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Start in-process');
    // The socket and the in-process calls share the App: a socket call is refused alike.
    assertError(await call(rig, 'admin.vm.Remove', 'work'), 'QubesVMInUseError', busy('work', 'import into volume private'), 'Remove over the socket');
    feed.end(data.subarray(MiB));
    assertOk(await imp, 'the in-process import');
    committed.set('work', hash(data));
    await checkState();
  });
});
