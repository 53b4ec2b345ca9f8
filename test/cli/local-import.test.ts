/**
 * `qvm-volume import` of a regular file against a qubesd whose internal
 * socket it may use (these tests run as root): the import service writes
 * the file into the volume itself (internal.vm.volume.ImportBegin/ImportEnd
 * in the daemon's log, no admin.vm.volume.Import[WithSize]), with the same
 * bytes and holes, on XFS, btrfs and ext4. Where the internal socket is
 * missing, dead, or --stream is given, the data is streamed over the admin
 * socket and the import still works. A service killed or a tool interrupted
 * midway leaves the old data and no import file.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import * as fsSync from 'node:fs';
import * as path from 'node:path';
import { after, before, it } from 'node:test';
import { allocated, listFiles, MiB, pattern, sha256 } from '../helpers/data.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { CLI_DIR, run, startDaemon, toolEnv, type Daemon } from './helpers.js';

/** Only so that a broken build fails instead of hanging the run; no timing is checked. */
const HANG_GUARD = { timeout: 120_000 };
const BLOCK = 4096;
const SIZE = 16 * MiB;

/** The data of the test image: [offset, bytes]; everything else reads as zeros (holes in the file). */
const EXTENTS: readonly (readonly [number, number])[] = [
  [100, 10], // a few bytes inside the first block
  [3 * BLOCK - 7, 20], // across a block boundary
  [2 * MiB, MiB], // an aligned MiB
  [5 * MiB + 123, 300 * 1024 + 5], // unaligned, longer than a small write
  [9 * MiB - 1, 2], // across a 64 KiB (and MiB) boundary
  [SIZE - 3, 3], // the last bytes
];

/** 4 KiB blocks holding data, counted from EXTENTS (not from the code under test). */
function dataBlocks(): number {
  const blocks = new Set<number>();
  for (const [at, len] of EXTENTS) for (let b = Math.floor(at / BLOCK); b <= Math.floor((at + len - 1) / BLOCK); b++) blocks.add(b);
  return blocks.size;
}

/** A sparse file of SIZE bytes, `prefix` bytes of junk first (not part of the image), then the extents of `seed`. */
async function makeImage(file: string, seed: number, prefix = 0): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(prefix + SIZE);
    if (prefix) await fh.write(pattern(prefix, 99), 0, prefix, 0);
    for (const [i, [at, len]] of EXTENTS.entries()) await fh.write(pattern(len, seed * 100 + i + 1), 0, len, prefix + at);
  } finally {
    await fh.close();
  }
}

/** Pids whose parent is `pid` (from /proc). */
async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const stat = await fs.readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === pid) out.push(Number(e));
  }
  return out;
}

describeEachFs('qvm-volume import, local and streamed', (_tfs, fsx) => {
  let base: string;
  let daemon: Daemon;
  let env: NodeJS.ProcessEnv;
  let poolDir: string;
  let privateImg: string;
  let img: string;
  let imgHash: string;
  let oldHash: string;

  const calls = (method: string) => (daemon.log().match(new RegExp(`call method=${method.replace(/\./g, '\\.')} .*result=`, 'g')) ?? []).length;
  const importFiles = async () => (await listFiles(poolDir)).filter((f) => /-import\.img$/.test(f));
  /** Waits for a condition the daemon reaches after the tool has exited (polling, no time limit but the guard). */
  const until = async (cond: () => boolean | Promise<boolean>) => {
    while (!(await cond())) await new Promise((r) => setTimeout(r, 20));
  };
  /** Puts the old data (seed 1) back into sa:private, streamed. */
  const resetOld = async () => {
    const old = path.join(base, 'old.img');
    await makeImage(old, 1);
    const r = await run('qvm-volume', ['import', '--stream', 'sa:private', old], env);
    assert.equal(r.code, 0, r.stderr);
    oldHash = await sha256(privateImg);
    assert.equal(oldHash, await sha256(old));
  };

  before(async () => {
    base = await fsx.tempDir('base');
    daemon = await startDaemon(base);
    env = toolEnv(base, daemon.socket);
    poolDir = path.join(base, 'p');
    privateImg = path.join(poolDir, 'appvms', 'sa', 'private.img');
    const add = await run('qvm-pool', ['add', 'p', 'file-reflink', '-o', `dir_path=${poolDir}`, '-o', 'setup_check=False'], env);
    assert.equal(add.code, 0, add.stderr);
    const create = await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'p', 'sa'], env);
    assert.equal(create.code, 0, create.stderr);
    img = path.join(base, 'image.img');
    await makeImage(img, 2);
    imgHash = await sha256(img);
  });
  after(async () => {
    await daemon?.stop();
  });

  /** The import took: the image's bytes and size, its holes kept, no import file left. */
  const assertImported = async () => {
    assert.equal(await sha256(privateImg), imgHash, 'the same bytes');
    assert.equal((await run('qvm-volume', ['info', 'sa:private', 'size'], env)).stdout, `${SIZE}\n`);
    const a = await allocated(privateImg);
    assert.ok(a <= dataBlocks() * BLOCK + 64 * 1024, `holes kept: ${a} bytes allocated for ${dataBlocks()} blocks of data`);
    assert.deepEqual(await importFiles(), []);
  };

  it('a file is imported locally: internal ImportBegin/ImportEnd, no admin import call; same bytes and holes', HANG_GUARD, async () => {
    await resetOld();
    const [begins, ends, streamed] = [calls('internal.vm.volume.ImportBegin'), calls('internal.vm.volume.ImportEnd'), calls('admin.vm.volume.ImportWithSize')];
    const r = await run('qvm-volume', ['import', 'sa:private', img], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.equal(calls('internal.vm.volume.ImportBegin'), begins + 1, 'ImportBegin on the internal socket');
    assert.equal(calls('internal.vm.volume.ImportEnd'), ends + 1, 'ImportEnd on the internal socket');
    assert.equal(calls('admin.vm.volume.ImportWithSize'), streamed, 'nothing streamed');
    await assertImported();
  });

  it('stdin redirected from a file, not at its start: imported locally from that offset', HANG_GUARD, async () => {
    await resetOld();
    const shifted = path.join(base, 'shifted.img');
    await makeImage(shifted, 2, 5000);
    const fd = fsSync.openSync(shifted, 'r');
    try {
      assert.equal(fsSync.readSync(fd, Buffer.alloc(5000), 0, 5000, null), 5000); // as `(head -c 5000 >/dev/null; qvm-volume ...) < FILE`
      const begins = calls('internal.vm.volume.ImportBegin');
      const tool = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), 'import', '--size', String(SIZE), 'sa:private', '-'], {
        env,
        stdio: [fd, 'ignore', 'pipe'],
      });
      let err = '';
      tool.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      const [code] = (await once(tool, 'close')) as [number | null];
      assert.equal(code, 0, err);
      assert.equal(calls('internal.vm.volume.ImportBegin'), begins + 1, 'imported locally');
    } finally {
      fsSync.closeSync(fd);
    }
    await assertImported();
  });

  for (const [what, extra, args] of [
    ['the internal socket missing', { QUBESD_INTERNAL_SOCKET: '/nonexistent/qubesd.internal.sock' }, []],
    ['--stream', {}, ['--stream']],
  ] as const) {
    it(`${what}: streamed over the admin socket, and imported`, HANG_GUARD, async () => {
      await resetOld();
      const [begins, streamed] = [calls('internal.vm.volume.ImportBegin'), calls('admin.vm.volume.ImportWithSize')];
      const r = await run('qvm-volume', ['import', ...args, 'sa:private', img], { ...env, ...extra });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.equal(calls('internal.vm.volume.ImportBegin'), begins, 'no internal call');
      assert.equal(calls('admin.vm.volume.ImportWithSize'), streamed + 1, 'streamed');
      await assertImported();
    });
  }

  it('an internal socket nobody answers at (a dead daemon left it): the service reads nothing, the tool streams instead', HANG_GUARD, async () => {
    await resetOld();
    const dead = path.join(base, 'dead.internal.sock');
    // A listener killed outright leaves its socket file behind: connecting is refused.
    const l = spawn(process.execPath, ['-e', `require('net').createServer().listen(process.argv[1], () => console.log('up'))`, dead], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(l.stdout!, 'data');
    l.kill('SIGKILL');
    await once(l, 'close');
    assert.ok((await fs.lstat(dead)).isSocket());
    const [begins, streamed] = [calls('internal.vm.volume.ImportBegin'), calls('admin.vm.volume.ImportWithSize')];
    const r = await run('qvm-volume', ['import', 'sa:private', img], { ...env, QUBESD_INTERNAL_SOCKET: dead });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(calls('internal.vm.volume.ImportBegin'), begins);
    assert.equal(calls('admin.vm.volume.ImportWithSize'), streamed + 1, 'streamed');
    await assertImported();
  });

  it('the import service killed after ImportBegin: exit 1, and once the tool is gone the daemon rolls back: the old data, no import file', HANG_GUARD, async () => {
    await resetOld();
    const r = await run('qvm-volume', ['import', 'sa:private', img], { ...env, QUBES_STORAGE_FAILPOINTS: 'import-service.after-begin' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^qvm-volume: error: .*import service ended without a reply \(SIGKILL\)\n$/);
    await until(() => /import into sa:private ended as failed/.test(daemon.log()));
    await until(async () => (await importFiles()).length === 0);
    assert.equal(await sha256(privateImg), oldHash, 'the old data');
    // The domain is free again: a new import goes through.
    const again = await run('qvm-volume', ['import', 'sa:private', img], env);
    assert.equal(again.code, 0, again.stderr);
    await assertImported();
  });

  it('SIGINT while the service is writing: exit 130, the import ended as failed, the old data, no import file', HANG_GUARD, async () => {
    await resetOld();
    const ends = calls('internal.vm.volume.ImportEnd');
    // The service stops itself (SIGSTOP) right after ImportBegin: an import caught in progress.
    const tool = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), 'import', 'sa:private', img], {
      env: { ...env, QUBES_STORAGE_FAILPOINTS: 'import-service.after-begin', QUBES_STORAGE_FAILPOINT_ACTION: 'stop' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    let exited = false;
    tool.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    // 'exit', not 'close': the service holds the tool's stderr open while it lives.
    const closed = once(tool, 'exit').finally(() => (exited = true));
    const stderrDone = once(tool, 'close');
    /** As `until`, but fails at once if the tool has exited first. */
    const whileTool = async (cond: () => Promise<boolean>, what: string) => {
      while (!(await cond())) {
        if (exited) assert.fail(`${what}: the tool exited first: ${err}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    let service: number | undefined;
    const status = () => fs.readFile(`/proc/${service}/status`, 'utf8').catch(() => '');
    try {
      await whileTool(async () => (await importFiles()).length > 0, 'the import began');
      [service] = await childrenOf(tool.pid!);
      assert.ok(service, 'the tool runs the import service');
      await whileTool(async () => /^State:\s*T/m.test(await status()), 'the service stopped at the failpoint');
      tool.kill('SIGINT');
      // The tool passes SIGINT on to the service; it takes it once it runs again.
      await whileTool(async () => /^(SigPnd|ShdPnd):\s*0*2$/m.test(await status()), 'SIGINT passed on to the service');
      process.kill(service, 'SIGCONT');
      const [code] = (await closed) as [number | null];
      await stderrDone;
      assert.equal(code, 130, err);
    } finally {
      // A failed check must not leave a stopped service behind.
      if (service !== undefined && (await status()) !== '') process.kill(service, 'SIGKILL');
      if (!exited) tool.kill('SIGKILL');
    }
    assert.equal(err, 'qvm-volume: interrupted\n');
    await until(() => calls('internal.vm.volume.ImportEnd') > ends);
    assert.match(daemon.log(), /call method=internal\.vm\.volume\.ImportEnd arg=private .*result=QubesException reason="Data import failed: interrupted \(SIGINT\)"/);
    assert.deepEqual(await importFiles(), []);
    assert.equal(await sha256(privateImg), oldHash, 'the old data');
  });
});
