/**
 * `qvm-volume export VM:VOLUME FILE` on the real test filesystems (embedded
 * default, its pool on the same filesystem as the output): the output has
 * the volume's bytes (SHA-256) and keeps its holes; on XFS and btrfs it is a
 * reflink (every extent shared, where a plain copy's extents are not); it
 * replaces an existing file only once complete (a crash just before the
 * rename leaves the old file), follows symbolic links, writes FIFOs in
 * place; failures and Ctrl-C leave no temporary file and always end the
 * export (no export link left in the pool).
 */
import { strict as assert } from 'node:assert';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { before, it } from 'node:test';
import { allocated, listFiles, MiB, pattern, sha256, writeAt } from '../helpers/data.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { describeEachSmallFs, fillFilesystem, unfill } from '../helpers/small-fs.js';
import { CLI_DIR, run, toolEnv } from './helpers.js';

const exec = promisify(execFile);
/** filefrag and mkfifo live in /sbin or /usr/bin; the tools' PATH may lack /sbin. */
const SBIN_PATH = `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin`;

const SIZE = 64 * MiB;
/** Where the test image has data (1 MiB each); the rest are holes. */
const DATA_AT = [0, 8, 20, 33, 63].map((m) => m * MiB);

/** Flags of each extent `filefrag -v` lists (FIEMAP): e.g. ['shared'], ['last', 'shared', 'eof']. */
async function extentFlags(file: string): Promise<string[][]> {
  const { stdout } = await exec('filefrag', ['-v', file], { env: { PATH: SBIN_PATH } });
  const out: string[][] = [];
  for (const line of stdout.split('\n')) {
    // "   0:        0..     255:      24..     279:    256:             last,shared,eof"
    const m = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+:\s*(?:\d+\s+)?([a-z_,]*)\s*$/.exec(line);
    if (m) out.push(m[1] ? m[1].split(',') : []);
  }
  return out;
}

async function filefragWorks(): Promise<string | null> {
  try {
    await exec('filefrag', ['-v', '/proc/self/exe'], { env: { PATH: SBIN_PATH } });
    return null;
  } catch (e) {
    return `filefrag -v does not run here (Debian package e2fsprogs): ${(e as Error).message.split('\n')[0]}`;
  }
}

/** Export links the file-reflink pool hands out (NAME-export-RAND.img) still present below `dir`. */
async function exportLinks(dir: string): Promise<string[]> {
  return (await listFiles(dir)).filter((f) => /-export-[0-9a-f]+\.img$/.test(f));
}

/** Temporary files an export makes beside its output (.NAME.tmp-RAND). */
async function tempFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).filter((f) => /^\..*\.tmp-[0-9a-f]+$/.test(f));
}

/** Only so that a tool stuck for good (a write held by a FIFO reader) fails the test instead of hanging the run; no timing is checked. */
const HANG_GUARD = { timeout: 120_000 };

describeEachFs('qvm-volume export', (tfs, ctx) => {
  let base: string;
  let env: NodeJS.ProcessEnv;
  let pool: string;
  let out: string;
  /** The committed image of sa:private in the pool (what the export copies). */
  let committed: string;
  let want: string;

  before(async () => {
    base = await ctx.tempDir('base');
    out = await ctx.tempDir('out');
    env = toolEnv(base);
    const create = await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'green', 'sa'], env);
    assert.equal(create.code, 0, create.stderr);
    // A sparse input: 5 MiB of data in 64 MiB.
    const img = path.join(out, 'in.img');
    await fsp.writeFile(img, '');
    await fsp.truncate(img, SIZE);
    for (const [i, at] of DATA_AT.entries()) await writeAt(img, at, pattern(MiB, i + 1));
    want = await sha256(img);
    const imp = await run('qvm-volume', ['import', 'sa:private', img], env);
    assert.equal(imp.code, 0, imp.stderr);
    await fsp.unlink(img);
    pool = (JSON.parse((await run('qvm-pool', ['info', 'default', '--format', 'json'], env)).stdout) as Record<string, string>)['dir_path']!;
    const vid = (await run('qvm-volume', ['info', 'sa:private', 'vid'], env)).stdout.trim();
    committed = path.join(pool, `${vid}.img`);
    assert.equal(await sha256(committed), want, 'the import made the volume');
  });

  it('the output has the volume bytes, keeps its holes, leaves no temporary file and ends the export', async () => {
    const file = path.join(out, 'plain.img');
    const r = await run('qvm-volume', ['export', 'sa:private', file], env);
    assert.deepEqual(r, { stdout: '', stderr: '', code: 0 });
    assert.equal(await sha256(file), want);
    const st = await fsp.stat(file);
    assert.equal(st.size, SIZE);
    assert.equal(st.mode & 0o777, 0o600);
    const src = await allocated(committed);
    assert.ok(src < SIZE / 2, `the source itself is sparse (${src} bytes allocated)`);
    assert.ok((await allocated(file)) <= src, `output allocates ${await allocated(file)} bytes, the source ${src}`);
    assert.deepEqual(await tempFiles(out), []);
    assert.deepEqual(await exportLinks(pool), []);
  });

  it(tfs.reflink ? 'is a reflink: every extent of the output is shared (a plain copy has none)' : 'is a sparse copy here (no reflink on ext4)', async (t) => {
    const file = path.join(out, 'shared.img');
    const r = await run('qvm-volume', ['export', 'sa:private', file], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await sha256(file), want);
    if (!tfs.reflink) {
      assert.ok((await allocated(file)) >= DATA_AT.length * MiB, 'the data was written');
      return;
    }
    const why = await filefragWorks();
    if (why) return void t.skip(why);
    const flags = await extentFlags(file);
    assert.ok(flags.length >= 1, 'filefrag lists the extents');
    assert.ok(flags.every((f) => f.includes('shared')), `extents of the export: ${JSON.stringify(flags)}`);
    // The check tells the difference: a byte copy of the same image shares nothing (cp reads and
    // writes with --sparse=always; sparseCopy's copy_file_range may share extents on XFS and btrfs).
    const control = path.join(out, 'control.img');
    await exec('cp', ['--reflink=never', '--sparse=always', '--', committed, control]);
    const cflags = await extentFlags(control);
    assert.ok(cflags.length >= 1 && cflags.every((f) => !f.includes('shared')), `extents of a plain copy: ${JSON.stringify(cflags)}`);
  });

  it('replaces an existing file through its symbolic link; a crash before the rename leaves the old file whole', async () => {
    const file = path.join(out, 'old.img');
    const link = path.join(out, 'link.img');
    const old = pattern(3 * MiB, 99);
    await fsp.writeFile(file, old, { mode: 0o644 });
    await fsp.symlink('old.img', link);
    const crash = await run('qvm-volume', ['export', 'sa:private', link], { ...env, QUBES_STORAGE_FAILPOINTS: 'cli.export.before-rename' });
    assert.equal(crash.code, null, `killed at the failpoint: ${crash.stderr}`);
    assert.ok((await fsp.readFile(file)).equals(old), 'the old file is untouched');
    assert.ok((await fsp.lstat(link)).isSymbolicLink());
    // A crash may leave the temporary copy (never the target half-written); the next export works.
    for (const f of await tempFiles(out)) await fsp.unlink(path.join(out, f));
    const r = await run('qvm-volume', ['export', 'sa:private', link], env);
    assert.deepEqual(r, { stdout: '', stderr: '', code: 0 });
    assert.ok((await fsp.lstat(link)).isSymbolicLink(), 'the link is followed, not replaced');
    assert.equal(await sha256(file), want);
    assert.deepEqual(await tempFiles(out), []);
    assert.deepEqual(await exportLinks(pool), []);
  });

  it('errors as before: no such directory, a directory; nothing exported, nothing left', async () => {
    const missing = path.join(out, 'nodir', 'x.img');
    assert.deepEqual(await run('qvm-volume', ['export', 'sa:private', missing], env), {
      stdout: '',
      stderr: `qvm-volume: error: cannot write '${missing}': ENOENT\n`,
      code: 1,
    });
    assert.deepEqual(await run('qvm-volume', ['export', 'sa:private', out], env), {
      stdout: '',
      stderr: `qvm-volume: error: cannot write '${out}': EISDIR\n`,
      code: 1,
    });
    assert.deepEqual(await run('qvm-volume', ['export', 'sa:nosuch', path.join(out, 'y.img')], env), {
      stdout: '',
      stderr: "qvm-volume: error: no such volume: 'sa:nosuch' (sa has root, private, volatile, kernel)\n",
      code: 1,
    });
    assert.deepEqual(await tempFiles(out), []);
    await assert.rejects(fsp.stat(path.join(out, 'y.img')), { code: 'ENOENT' });
    assert.deepEqual(await exportLinks(pool), []);
  });

  it('a copy that fails midway (file size limit) leaves the old file and no temporary file, and ends the export', async (t) => {
    const file = path.join(out, 'limited.img');
    const old = Buffer.from('old contents\n');
    await fsp.writeFile(file, old);
    // RLIMIT_FSIZE of 4 MiB: writing (or sizing) the 64 MiB copy fails with EFBIG (Node ignores SIGXFSZ).
    const r = await runShell(`ulimit -f 4096; exec "$0" "$@"`, ['export', 'sa:private', file], env);
    t.diagnostic(`exit ${r.code}: ${r.stderr.trim()}`);
    if (tfs.reflink && r.code === 0) {
      // A reflink writes no data: the limit may not apply to it at all.
      assert.equal(await sha256(file), want);
    } else {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^qvm-volume: error: .*EFBIG.*\n$/);
      assert.ok((await fsp.readFile(file)).equals(old), 'the old file is untouched');
    }
    assert.deepEqual(await tempFiles(out), []);
    assert.deepEqual(await exportLinks(pool), []);
  });

  it('a FIFO is written in place, every byte, and stays a FIFO', HANG_GUARD, async () => {
    const fifo = path.join(out, 'fifo');
    await exec('mkfifo', [fifo], { env: { PATH: SBIN_PATH } });
    const child = spawnTool(['export', 'sa:private', fifo], env);
    unblockReaderAfter(child, fifo);
    const hash = (await import('node:crypto')).createHash('sha256');
    let n = 0;
    for await (const c of fs.createReadStream(fifo)) {
      hash.update(c as Buffer);
      n += (c as Buffer).length;
    }
    const [code] = (await child.exited) as [number | null];
    assert.equal(code, 0, child.stderr());
    assert.equal(n, SIZE);
    assert.equal(hash.digest('hex'), want);
    assert.ok((await fsp.lstat(fifo)).isFIFO());
    assert.deepEqual(await exportLinks(pool), []);
  });

  it('Ctrl-C while the reader of a FIFO holds the export back: exit 130, the export ended', HANG_GUARD, async () => {
    const fifo = path.join(out, 'fifo-stalled');
    await exec('mkfifo', [fifo], { env: { PATH: SBIN_PATH } });
    const child = spawnTool(['export', 'sa:private', fifo], env);
    unblockReaderAfter(child, fifo);
    const reader = fs.createReadStream(fifo);
    try {
      // Some bytes arrived, then nobody reads: the tool blocks on a full pipe.
      await once(reader, 'data');
      reader.pause();
      child.kill('SIGINT');
      const [code] = (await child.exited) as [number | null];
      assert.equal(code, 130, child.stderr());
      assert.equal(child.stderr(), 'qvm-volume: interrupted\n');
    } finally {
      reader.destroy();
    }
    assert.deepEqual(await exportLinks(pool), []);
    assert.ok((await fsp.lstat(fifo)).isFIFO());
  });

  it('Ctrl-C during a file export: no temporary file, no output or a whole one, the export ended', HANG_GUARD, async (t) => {
    const file = path.join(out, 'interrupted.img');
    const child = spawnTool(['export', 'sa:private', file], env);
    // Interrupt once the copy exists under its temporary name (or once the tool is done, whichever first).
    let done = false;
    void child.exited.then(() => (done = true));
    while (!done && (await tempFiles(out)).length === 0) await new Promise((r) => setImmediate(r));
    const sent = !done && child.kill('SIGINT');
    const [code] = (await child.exited) as [number | null];
    t.diagnostic(`SIGINT ${sent ? 'sent' : 'not sent (done first)'}; exit ${code}`);
    if (sent) assert.ok(code === 130 || code === 0, `exit ${code}: ${child.stderr()}`);
    else assert.equal(code, 0, child.stderr());
    assert.deepEqual(await tempFiles(out), []);
    assert.deepEqual(await exportLinks(pool), []);
    const st = await fsp.stat(file).catch(() => null);
    if (st) assert.equal(await sha256(file), want, 'an output that exists is whole');
    else assert.equal(code, 130, 'no output only when interrupted');
  });
});

interface Child {
  readonly exited: Promise<unknown[]>;
  kill(sig: NodeJS.Signals): boolean;
  stderr(): string;
}

/** Opens and closes `fifo` once the tool exited, so that a reader still waiting in open() gets EOF, not a hang. */
function unblockReaderAfter(child: Child, fifo: string): void {
  void child.exited.then(async () => (await fsp.open(fifo, fs.constants.O_RDWR)).close()).catch(() => undefined);
}

function spawnTool(args: readonly string[], env: NodeJS.ProcessEnv): Child {
  const c = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = once(c, 'close');
  return { exited, kill: (s) => c.kill(s), stderr: () => err };
}

function runShell(script: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn('bash', ['-c', script, process.execPath, path.join(CLI_DIR, 'qvm-volume.js'), ...args], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stderr }));
  });
}

// An output on a filesystem with no room left (when the export is asked
// for, or midway): the tool says so as the daemon says it of a pool (not
// the raw errno text), exits 1, leaves the old
// file and no temporary file, and ends the export. The pool is elsewhere
// (the machine's filesystem), so the copy must write data.
describeEachSmallFs('qvm-volume export to a full filesystem', (small) => {
  it('answers "not enough space left (ENOSPC at ...)" naming the output, and changes nothing', async (t) => {
    const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'qs-export-full-'));
    const out = await fsp.mkdtemp(path.join(small.root, 'export-full-'));
    const fillers: string[] = [];
    t.after(async () => {
      await unfill(fillers);
      await fsp.rm(out, { recursive: true, force: true });
      await fsp.rm(base, { recursive: true, force: true });
    });
    const env = toolEnv(base);
    assert.equal((await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'green', 'sa'], env)).code, 0);
    const img = path.join(base, 'in.img');
    await fsp.writeFile(img, '');
    await fsp.truncate(img, 16 * MiB);
    await writeAt(img, 0, pattern(8 * MiB, 7));
    const imp = await run('qvm-volume', ['import', 'sa:private', img], env);
    assert.equal(imp.code, 0, imp.stderr);
    const file = path.join(out, 'backup.img');
    const old = Buffer.from('old contents\n');
    await fsp.writeFile(file, old);
    await fillFilesystem(out, fillers);
    const r = await run('qvm-volume', ['export', 'sa:private', file], env);
    t.diagnostic(`exit ${r.code}: ${r.stderr.trim()}`);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^qvm-volume: error: cannot write the export to ${file}: not enough space left \\(ENOSPC at ${out}/[^\\n]*\\)\\n$`));
    assert.ok((await fsp.readFile(file)).equals(old), 'the old file is untouched');
    assert.deepEqual(await tempFiles(out), []);
    const pool = (JSON.parse((await run('qvm-pool', ['info', 'default', '--format', 'json'], env)).stdout) as Record<string, string>)['dir_path']!;
    assert.deepEqual(await exportLinks(pool), [], 'the export was ended');
  });
});
