// Imports as Qubes' admin client makes them in dom0 (qubesadmin/app.py
// QubesLocal.qubesd_call with a payload stream): it runs the service program
// SERVICES_DIR/METHOD from the qrexec services directory with
// `env QREXEC_REMOTE_DOMAIN=dom0 QREXEC_REQUESTED_TARGET=VM METHOD_PATH VOLUME`,
// writes the payload (ImportWithSize: the size line) and then the data to its
// stdin, ignores a broken pipe, ignores the exit status and stderr, and parses
// stdout as a qubesd reply (_parse_qubesd_response): empty -> error; 0x30 0x00
// -> the result; 0x32 0x00 -> split at NUL into type, traceback, message, args.
// Here the services are the ones qubes-storage-install-rpc installs, against
// the real qubesd (a child process) and its real sockets, on each test filesystem.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminClient, type AdminEvent } from '../../src/admin/index.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { allocated, listFiles, MiB, pattern, sha256 } from '../helpers/data.js';
import { daemonScope, startQubesd, type DaemonProc } from './helpers.js';
import { createHash } from 'node:crypto';

const DIST_SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
const INSTALL = path.join(DIST_SRC, 'qrexec', 'qubes-storage-install-rpc.js');

/** What qubesadmin raises for a reply, by its parsing rules. */
type Parsed = { ok: true; result: Buffer } | { ok: false; type: string; message: string };

/** qubesadmin.base.PropertyHolder._parse_qubesd_response, restated. */
function parseQubesdResponse(data: Buffer): Parsed {
  if (data.length === 0) return { ok: false, type: 'QubesDaemonAccessError', message: 'Got empty response from qubesd.' };
  if (data[0] === 0x30 && data[1] === 0) return { ok: true, result: data.subarray(2) };
  if (data[0] === 0x32 && data[1] === 0) {
    // response_data.split(b'\x00', 4): (_, exc_type, traceback, format_string, args)
    const parts: Buffer[] = [];
    let rest = data;
    for (let i = 0; i < 4; i++) {
      const nul = rest.indexOf(0);
      assert.ok(nul >= 0, `error reply with fewer than 5 fields: ${JSON.stringify(data.toString('latin1'))}`);
      parts.push(rest.subarray(0, nul));
      rest = rest.subarray(nul + 1);
    }
    // args: split at NUL, the last (after the terminating NUL) dropped; the format applied to them.
    const args = rest.toString('utf8').split('\0').slice(0, -1);
    assert.deepEqual(args, [], 'no format arguments');
    return { ok: false, type: parts[1]!.toString('ascii'), message: parts[3]!.toString('utf8').replace(/%%/g, '%') };
  }
  return { ok: false, type: 'QubesDaemonCommunicationError', message: 'Invalid response format' };
}

interface ServiceResult {
  readonly parsed: Parsed;
  readonly stdout: Buffer;
  readonly status: number | null;
}

/**
 * QubesLocal.qubesd_call(dest, method, arg, payload, payload_stream): the
 * program must exist in the services directory; it runs with the caller's
 * environment plus the two qrexec variables; payload first, then the stream.
 */
function stockCall(
  servicesDir: string,
  dest: string,
  method: string,
  arg: string,
  payload: Buffer | null,
  data: Buffer,
  env: NodeJS.ProcessEnv = cleanEnv(),
): Promise<ServiceResult> {
  const methodPath = path.join(servicesDir, method);
  return new Promise((resolve, reject) => {
    fs.access(methodPath).then(() => {
      const child = spawn('env', ['QREXEC_REMOTE_DOMAIN=dom0', `QREXEC_REQUESTED_TARGET=${dest}`, methodPath, arg], {
        env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => out.push(d));
      child.stderr.resume();
      // BrokenPipeError is ignored by the client: the service may answer before reading everything.
      child.stdin.on('error', () => undefined);
      if (payload) child.stdin.write(payload);
      child.stdin.end(data);
      child.on('error', reject);
      child.on('close', (status) => {
        const stdout = Buffer.concat(out);
        resolve({ parsed: parseQubesdResponse(stdout), stdout, status });
      });
    }, reject);
  });
}

/** The environment without any of ours: the wrappers must name the socket themselves (sudo drops the environment). */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  for (const k of ['QUBESD_INTERNAL_SOCKET', 'QUBESD_SOCKET', 'QUBES_BASE_DIR', 'QUBES_STORAGE_FAILPOINTS']) if (!(k in extra)) delete env[k];
  return env;
}

/** 1 MiB of data, 2 MiB of zeros, 1 MiB of data. */
function image(seed: number, size = 4 * MiB): Buffer {
  const b = Buffer.alloc(size);
  pattern(MiB, seed).copy(b, 0);
  pattern(MiB, seed + 1).copy(b, size - MiB);
  return b;
}

const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** One raw call on a socket (header as the stock client writes it); the reply bytes. */
function rawCall(socketPath: string, method: string, dest: string, arg: string, payload = '', source = 'dom0'): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect(socketPath, () => s.end(Buffer.concat([Buffer.from(`${method}+${arg} ${source} name ${dest}\0`), Buffer.from(payload)])));
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function runInstall(args: string[], env: NodeJS.ProcessEnv = cleanEnv()): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [INSTALL, ...args], { env, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('qubes-storage-install-rpc', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rpc-'));
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  test('installs both names (0755 sh wrappers naming the internal socket); run again, it replaces its own', async () => {
    const services = path.join(dir, 'a', 'qubes-rpc');
    const r = runInstall(['--internal-socket', '/run/x/qubesd.internal.sock', services]);
    assert.equal(r.status, 0, r.stderr);
    for (const name of ['admin.vm.volume.Import', 'admin.vm.volume.ImportWithSize']) {
      const f = path.join(services, name);
      const st = await fs.lstat(f);
      assert.ok(st.isFile());
      assert.equal(st.mode & 0o777, 0o755);
      const text = await fs.readFile(f, 'utf8');
      assert.ok(text.startsWith('#!/bin/sh\n'));
      assert.match(text, /QUBESD_INTERNAL_SOCKET:=\/run\/x\/qubesd\.internal\.sock\}/);
      assert.match(text, new RegExp(`--service ${name.replace(/\./g, '\\.')} -- "\\$@"`));
    }
    assert.equal(runInstall(['--internal-socket', '/run/y.sock', services]).status, 0);
    assert.match(await fs.readFile(path.join(services, 'admin.vm.volume.Import'), 'utf8'), /:=\/run\/y\.sock\}/);
    assert.deepEqual((await fs.readdir(services)).sort(), ['admin.vm.volume.Import', 'admin.vm.volume.ImportWithSize'], 'no temporary files');
  });

  test('default directory: QREXEC_SERVICES_DIR; the socket: as the daemon names it (QUBESD_SOCKET)', async () => {
    const services = path.join(dir, 'b');
    const r = runInstall([], cleanEnv({ QREXEC_SERVICES_DIR: services, QUBESD_SOCKET: '/run/q/qubesd.sock' }));
    assert.equal(r.status, 0, r.stderr);
    assert.match(await fs.readFile(path.join(services, 'admin.vm.volume.ImportWithSize'), 'utf8'), /:=\/run\/q\/qubesd\.internal\.sock\}/);
  });

  test('an entry that is not ours is refused (nothing written) unless --force; a directory always', async () => {
    const services = path.join(dir, 'c');
    await fs.mkdir(services);
    const theirs = path.join(services, 'admin.vm.volume.ImportWithSize');
    await fs.writeFile(theirs, '#!/bin/sh\n# Qubes script\n', { mode: 0o755 });
    const r = runInstall(['--internal-socket', '/run/q.sock', services]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /qubes-storage-install-rpc: error: .*admin\.vm\.volume\.ImportWithSize exists and is not written by qubes-storage-install-rpc; --force replaces it/);
    assert.equal(await fs.readFile(theirs, 'utf8'), '#!/bin/sh\n# Qubes script\n');
    assert.deepEqual(await fs.readdir(services), ['admin.vm.volume.ImportWithSize'], 'the other name not written either');
    await fs.symlink('/bin/true', path.join(services, 'admin.vm.volume.Import'));
    assert.equal(runInstall(['--internal-socket', '/run/q.sock', services]).status, 1);
    assert.equal(runInstall(['--force', '--internal-socket', '/run/q.sock', services]).status, 0);
    assert.ok((await fs.lstat(path.join(services, 'admin.vm.volume.Import'))).isFile(), 'the symlink replaced by a file');
    assert.match(await fs.readFile(theirs, 'utf8'), /qubes-storage import service/);
    const d = path.join(dir, 'd');
    await fs.mkdir(path.join(d, 'admin.vm.volume.Import'), { recursive: true });
    const rd = runInstall(['--force', '--internal-socket', '/run/q.sock', d]);
    assert.equal(rd.status, 1);
    assert.match(rd.stderr, /is a directory/);
  });
});

describeEachFs('imports through the qrexec service, as the stock client makes them', (tfs, fsx) => {
  const { sock, running } = daemonScope();
  let base: string;
  let poolDir: string;
  let services: string;
  let socketPath: string;
  let internal: string;
  let d: DaemonProc;
  let client: AdminClient;
  const events: AdminEvent[] = [];
  let closeEvents: () => void;

  const privateImg = () => path.join(poolDir, 'appvms/work/private.img');
  const volDir = () => path.join(poolDir, 'appvms/work');
  const debris = async () => (await listFiles(poolDir)).filter((f) => /-import\.img$|-tmp-|-export-/.test(f));
  const info = async (dom: string, vol: string) => (await client.call('admin.vm.volume.Info', dom, vol)).toString();
  /** Events of `work` since `from`, as `event k=v ...`, without progress. */
  const workEvents = (from: number) =>
    events
      .slice(from)
      .filter((e) => e.subject === 'work' && /import|imported/.test(e.event))
      .map((e) => [e.event, ...e.pairs.map(([k, v]) => `${k}=${v}`)].join(' '));
  /** Waits until the events stream shows `match` (the daemon acts on its own: no reply to wait for). */
  const seen = (match: (e: AdminEvent) => boolean, from: number) =>
    new Promise<void>((resolve, reject) => {
      const limit = Date.now() + 30_000;
      const check = () => {
        if (events.slice(from).some(match)) resolve();
        else if (Date.now() > limit) reject(new Error(`event not seen in 30 s; seen: ${JSON.stringify(workEvents(from))}`));
        else setTimeout(check, 20);
      };
      check();
    });

  async function startDaemon(): Promise<void> {
    d = await startQubesd(base, socketPath);
    running.push(d);
    await d.waitFor(`qubesd: listening on ${internal}\n`);
    client = new AdminClient({ socketPath, timeoutMs: 60_000 });
    const h = client.events('dom0', (e) => events.push(e));
    await h.established;
    closeEvents = () => h.close();
  }

  before(async () => {
    base = await fsx.tempDir('rpc');
    poolDir = path.join(base, 'pool');
    // Small volumes, made in-process; the daemon then loads the state.
    const rt = await openRuntime({ baseDir: base, storageConf: null, nodeModules: [], sizes: { root: 8 * MiB, private: 4 * MiB } });
    await rt.app.addPool('file-reflink', 'default', { dir_path: poolDir, setup_check: tfs.reflink });
    await rt.app.createDomain({ klass: 'StandaloneVM', name: 'work', label: 'red' });
    await rt.app.createDomain({ klass: 'StandaloneVM', name: 'other', label: 'red' });
    await rt.close();
    socketPath = await sock();
    internal = path.join(path.dirname(socketPath), 'qubesd.internal.sock');
    services = path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rpcdir-')), 'qubes-rpc');
    await startDaemon();
    const r = runInstall([services], cleanEnv({ QUBESD_SOCKET: socketPath }));
    assert.equal(r.status, 0, r.stderr);
  });
  after(async () => {
    closeEvents?.();
    if (d && d.child.exitCode === null) {
      d.child.kill('SIGTERM');
      await d.exited;
    }
    await fs.rm(path.dirname(services), { recursive: true, force: true });
  });

  test('the internal socket: beside the admin socket, a socket of mode 0600', async () => {
    const st = await fs.lstat(internal);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, process.getuid!());
  });

  test('internal methods are not served on the admin socket, nor admin methods on the internal one', async () => {
    for (const m of ['internal.vm.volume.ImportBegin', 'internal.vm.volume.ImportEnd']) {
      const p = parseQubesdResponse(await rawCall(socketPath, m, 'work', 'private', ''));
      assert.deepEqual(p.ok ? 'ok' : p.type, 'PermissionDenied', m);
    }
    for (const m of ['admin.vm.volume.Import', 'admin.vm.volume.Info', 'admin.vm.List']) {
      const p = parseQubesdResponse(await rawCall(internal, m, 'work', m.includes('volume') ? 'private' : '', ''));
      assert.deepEqual(p.ok ? 'ok' : p.type, 'PermissionDenied', m);
    }
    assert.deepEqual(await debris(), []);
  });

  test('ImportWithSize: the volume takes the size and the bytes; zero blocks stay holes; events as the streamed import', async () => {
    const size = 6 * MiB;
    const data = image(3, size);
    const from = events.length;
    const r = await stockCall(services, 'work', 'admin.vm.volume.ImportWithSize', 'private', Buffer.from(`${size}\n`), data);
    assert.deepEqual(r.parsed, { ok: true, result: Buffer.alloc(0) });
    assert.equal(r.status, 0);
    assert.equal(await sha256(privateImg()), hash(data));
    assert.ok((await allocated(privateImg())) <= 2 * MiB + 256 * 1024, `sparse: ${await allocated(privateImg())} bytes allocated for 2 MiB of data`);
    assert.match(await info('work', 'private'), new RegExp(`\nsize=${size}\n`));
    await seen((e) => e.event === 'volume-imported', from);
    assert.deepEqual(workEvents(from), [
      `domain-volume-import-begin volume=private size=${size}`,
      'domain-volume-import-end volume=private success=True',
      `volume-imported volume=private pool=default vid=appvms/work/private size=${size}`,
    ]);
    assert.deepEqual(await debris(), []);
  });

  test('Import: exactly the volume size; same bytes', async () => {
    const data = image(7, 6 * MiB);
    const r = await stockCall(services, 'work', 'admin.vm.volume.Import', 'private', null, data);
    assert.deepEqual(r.parsed, { ok: true, result: Buffer.alloc(0) });
    assert.equal(await sha256(privateImg()), hash(data));
  });

  test('fewer or more bytes than announced: the Qubes error, the old data and files kept', async () => {
    const before = await sha256(privateImg());
    const files = await listFiles(volDir());
    const cases: Array<[string, Buffer | null, Buffer, string]> = [
      ['admin.vm.volume.ImportWithSize', Buffer.from(`${2 * MiB}\n`), pattern(MiB, 1), `not enough data (copied ${MiB} bytes, expected ${2 * MiB} bytes)`],
      ['admin.vm.volume.ImportWithSize', Buffer.from(`${MiB}\n`), pattern(MiB + 1, 2), `too much data (expected ${MiB} bytes)`],
      ['admin.vm.volume.Import', null, pattern(6 * MiB - 1, 3), `not enough data (copied ${6 * MiB - 1} bytes, expected ${6 * MiB} bytes)`],
      ['admin.vm.volume.Import', null, pattern(6 * MiB + 4096, 4), `too much data (expected ${6 * MiB} bytes)`],
    ];
    for (const [m, payload, data, why] of cases) {
      const from = events.length;
      const r = await stockCall(services, 'work', m, 'private', payload, data);
      assert.deepEqual(r.parsed, { ok: false, type: 'QubesException', message: `Data import failed: ${why}` }, `${m} ${data.length}`);
      assert.equal(await sha256(privateImg()), before, 'old data kept');
      assert.deepEqual(await listFiles(volDir()), files, 'no files left');
      assert.deepEqual(workEvents(from), [
        `domain-volume-import-begin volume=private size=${payload ? Number(payload.toString().trim()) : 6 * MiB}`,
        'domain-volume-import-end volume=private success=False',
      ]);
    }
    assert.match(await info('work', 'private'), new RegExp(`\nsize=${6 * MiB}\n`));
  });

  test('unknown domain or volume, a running domain, a source the policy refuses: the error, nothing changed', async () => {
    const before = await sha256(privateImg());
    const data = pattern(MiB, 5);
    const sized = Buffer.from(`${MiB}\n`);
    const type = (r: ServiceResult) => (r.parsed.ok ? 'ok' : r.parsed.type);
    assert.equal(type(await stockCall(services, 'nosuch', 'admin.vm.volume.ImportWithSize', 'private', sized, data)), 'QubesVMNotFoundError');
    assert.equal(type(await stockCall(services, 'work', 'admin.vm.volume.ImportWithSize', 'nosuch', sized, data)), 'PermissionDenied');
    // A source other than dom0: the admin policy (default: dom0 only) decides, as for the admin call.
    const asMgmt = await new Promise<Buffer>((resolve, reject) => {
      const c = spawn(path.join(services, 'admin.vm.volume.ImportWithSize'), ['private'], {
        env: cleanEnv({ QREXEC_REMOTE_DOMAIN: 'mgmt', QREXEC_REQUESTED_TARGET: 'work' }),
      });
      const out: Buffer[] = [];
      c.stdout.on('data', (b: Buffer) => out.push(b));
      c.stdin.on('error', () => undefined);
      c.stdin.end(Buffer.concat([sized, data]));
      c.on('error', reject);
      c.on('close', () => resolve(Buffer.concat(out)));
    });
    assert.deepEqual(parseQubesdResponse(asMgmt), {
      ok: false,
      type: 'PermissionDenied',
      message: 'admin.vm.volume.ImportWithSize is not allowed for mgmt by the default policy (no policy file: only dom0 may call)',
    });
    // Running: QubesVMNotHaltedError (root first made small, so that the start is quick everywhere).
    assert.equal(type(await stockCall(services, 'work', 'admin.vm.volume.ImportWithSize', 'root', Buffer.from('65536\n'), Buffer.alloc(65536, 1))), 'ok');
    await client.call('admin.vm.Start', 'work');
    try {
      const r = await stockCall(services, 'work', 'admin.vm.volume.ImportWithSize', 'private', sized, data);
      assert.equal(type(r), 'QubesVMNotHaltedError');
    } finally {
      await client.call('admin.vm.Shutdown', 'work');
    }
    assert.equal(await sha256(privateImg()), before);
    assert.deepEqual(await debris(), []);
  });

  test('the service dies after ImportBegin: the import is ended as failed, rolled back, and the volume is free again', async () => {
    const before = await sha256(privateImg());
    const files = await listFiles(volDir());
    const from = events.length;
    // Killed (SIGKILL, a failpoint) right after ImportBegin, under a shell that then exits too.
    const r = await new Promise<number | null>((resolve, reject) => {
      const c = spawn('sh', ['-c', '"$@"; exit 0', 'sh', path.join(services, 'admin.vm.volume.ImportWithSize'), 'private'], {
        env: cleanEnv({ QREXEC_REMOTE_DOMAIN: 'dom0', QREXEC_REQUESTED_TARGET: 'work', QUBES_STORAGE_FAILPOINTS: 'import-service.after-begin' }),
        stdio: ['pipe', 'ignore', 'ignore'],
      });
      c.stdin.on('error', () => undefined);
      c.stdin.end(Buffer.concat([Buffer.from(`${MiB}\n`), pattern(MiB, 9)]));
      c.on('error', reject);
      c.on('close', resolve);
    });
    assert.equal(r, 0);
    await seen((e) => e.subject === 'work' && e.event === 'domain-volume-import-end', from);
    assert.deepEqual(workEvents(from), [`domain-volume-import-begin volume=private size=${MiB}`, 'domain-volume-import-end volume=private success=False']);
    assert.match(d.stderr(), /import into work:private ended as failed: its caller \(pid [0-9, ]+\) exited without internal\.vm\.volume\.ImportEnd/);
    assert.equal(await sha256(privateImg()), before);
    assert.deepEqual(await listFiles(volDir()), files, 'no import file left');
    // Free again: the next import goes through.
    const data = pattern(2 * MiB, 10);
    assert.equal((await stockCall(services, 'work', 'admin.vm.volume.ImportWithSize', 'private', Buffer.from(`${2 * MiB}\n`), data)).parsed.ok, true);
    assert.equal(await sha256(privateImg()), hash(data));
  });

  test('begun and not ended by a live caller: the domain is busy; ImportEnd without ImportBegin is refused; qubesd stop rolls it back', async () => {
    const before = await sha256(privateImg());
    const files = await listFiles(volDir());
    // This test process is the caller: alive, so the import stays pending.
    const begin = parseQubesdResponse(await rawCall(internal, 'internal.vm.volume.ImportBegin', 'work', 'private', String(MiB)));
    assert.ok(begin.ok, JSON.stringify(begin));
    const [size, file] = begin.result.toString().split(' ');
    assert.equal(size, String(MiB));
    assert.equal((await fs.stat(file!)).size, MiB);
    const again = parseQubesdResponse(await rawCall(internal, 'internal.vm.volume.ImportBegin', 'work', 'private', ''));
    assert.deepEqual(again, { ok: false, type: 'QubesVMInUseError', message: 'domain work is busy: import into volume private' });
    const start = parseQubesdResponse(await rawCall(socketPath, 'admin.vm.Start', 'work', ''));
    assert.equal(start.ok ? 'ok' : start.type, 'QubesVMInUseError');
    const endOther = parseQubesdResponse(await rawCall(internal, 'internal.vm.volume.ImportEnd', 'other', 'private', 'ok'));
    assert.equal(endOther.ok ? 'ok' : endOther.type, 'StoragePoolException');
    closeEvents();
    d.child.kill('SIGTERM');
    assert.deepEqual(await d.exited, { code: 0, signal: null });
    assert.equal(await sha256(privateImg()), before);
    assert.deepEqual(await listFiles(volDir()), files, 'the import file removed at stop');
    await assert.rejects(fs.lstat(internal), { code: 'ENOENT' }, 'the internal socket removed at stop');
    await startDaemon();
  });
});
