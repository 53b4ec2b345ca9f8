/**
 * `qvm-volume export` and `import` stopped halfway, embedded and against a
 * qubesd, as the real tools run: an export whose reader quits early exits
 * 141 (as SIGPIPE stops cat) and is ended; an export whose tool is killed
 * is ended by the daemon when the tool's connection goes (embedded, it goes
 * with its domain: the next tool sweeps it), so removing the domain and its
 * pool leaves no file; an
 * import interrupted (SIGINT, SIGTERM) or whose stdin ends early leaves the
 * old data (SHA-256) and no import file. The pool is listed, not asked.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { listFiles, MiB, pattern, sha256 } from '../helpers/data.js';
import { CLI_DIR, run, startDaemon, tempBase, toolEnv, type Daemon } from './helpers.js';

/** Only so that a broken build fails instead of hanging the run; no timing is checked. */
const HANG_GUARD = { timeout: 120_000 };
const SIZE = 8 * MiB;

interface Tool {
  readonly child: ChildProcessWithoutNullStreams;
  /** Exit code (null when killed) once the tool is gone. */
  readonly exited: Promise<number | null>;
  stderr(): string;
  gone(): boolean;
}

function spawnTool(args: readonly string[], env: NodeJS.ProcessEnv): Tool {
  const child = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  let gone = false;
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  child.stdin.on('error', () => {}); // a tool that exits without reading all its input
  const exited = once(child, 'close').then(([code]) => {
    gone = true;
    return code as number | null;
  });
  return { child, exited, stderr: () => err, gone: () => gone };
}

/** Polls `cond` until it holds; fails (instead of waiting for ever) if the tool exits first. */
async function until(cond: () => Promise<boolean>, what: string, tool: Tool): Promise<void> {
  for (;;) {
    if (await cond()) return;
    if (tool.gone()) assert.fail(`${what}: the tool exited first (${await tool.exited}): ${tool.stderr()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (const mode of ['embedded', 'qubesd'] as const) {
  describe(`qvm-volume export and import stopped halfway (${mode})`, () => {
    let base: string;
    let daemon: Daemon | undefined;
    let env: NodeJS.ProcessEnv;
    /** The pool p of the domain sa, where its volumes, exports and imports are files. */
    let poolDir: string;
    let volDir: string;
    /** sa:private holds this (SHA-256), written by the test's import. */
    let want: string;

    const leftovers = async (re: RegExp) => (await listFiles(poolDir)).filter((f) => re.test(f));
    const exportFiles = () => leftovers(/-export-[0-9a-f]+\.img$/);
    const importFiles = () => leftovers(/-import\.img$/);
    /** With a daemon, the tool may exit before the daemon has ended the call: wait for the call's log line. */
    const callsLogged = (method: string) => (daemon?.log().match(new RegExp(`call method=${method.replace(/\./g, '\\.')} .*result=`, 'g')) ?? []).length;

    before(async () => {
      base = await tempBase(`qs-cli-stop-${mode}-`);
      if (mode === 'qubesd') daemon = await startDaemon(base);
      env = toolEnv(base, daemon?.socket);
      poolDir = path.join(base, 'p');
      volDir = path.join(poolDir, 'appvms', 'sa');
      const add = await run('qvm-pool', ['add', 'p', 'file-reflink', '-o', `dir_path=${poolDir}`, '-o', 'setup_check=False'], env);
      assert.equal(add.code, 0, add.stderr);
      const create = await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'p', 'sa'], env);
      assert.equal(create.code, 0, create.stderr);
      const img = path.join(base, 'data.img');
      await fs.writeFile(img, pattern(SIZE, 7));
      const imp = await run('qvm-volume', ['import', 'sa:private', img], env);
      assert.equal(imp.code, 0, imp.stderr);
      want = await sha256(img);
      assert.equal(await sha256(path.join(volDir, 'private.img')), want);
    });
    after(async () => {
      await daemon?.stop();
      await fs.rm(base, { recursive: true, force: true });
    });

    it('export to a reader that quits after the first bytes: exit 141, nothing said, the export ended', HANG_GUARD, async () => {
      const tool = spawnTool(['export', 'sa:private', '-'], env);
      let got = 0;
      tool.child.stdout.once('data', (c: Buffer) => {
        got = c.length;
        tool.child.stdout.destroy(); // as `| head -c 16` leaves
      });
      const code = await tool.exited;
      assert.ok(got > 0 && got < SIZE, `the reader got ${got} bytes`);
      assert.equal(code, 141, tool.stderr());
      assert.equal(tool.stderr(), '');
      assert.deepEqual(await exportFiles(), [], 'no export left in the pool');
      // The tool waits until the daemon has ended the export (it closes its side of the call, then waits for the daemon's).
      if (daemon) assert.match(daemon.log(), /call method=admin\.vm\.volume\.ExportStream arg=private .*result=ok/);
    });

    for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      it(`${sig} during an import from a stdin pipe that stalls: exit ${code}, the old data, no import file`, HANG_GUARD, async () => {
        const ends = callsLogged('admin.vm.volume.ImportWithSize');
        const tool = spawnTool(['import', '--size', '8Mi', 'sa:private', '-'], env);
        tool.child.stdin.write(pattern(MiB, 9)); // then nothing more, the pipe left open
        await until(async () => (await importFiles()).length > 0, 'the import began', tool);
        tool.child.kill(sig);
        assert.equal(await tool.exited, code, tool.stderr());
        assert.equal(tool.stderr(), 'qvm-volume: interrupted\n');
        if (daemon) await until(async () => callsLogged('admin.vm.volume.ImportWithSize') > ends, 'the daemon ended the import', { ...tool, gone: () => false });
        assert.deepEqual(await importFiles(), [], 'no import file left');
        assert.equal(await sha256(path.join(volDir, 'private.img')), want, 'the old data');
        assert.equal((await run('qvm-volume', ['info', 'sa:private', 'size'], env)).stdout, `${SIZE}\n`);
      });
    }

    it('an import whose stdin ends early: exit 1 naming the shortfall, the old data, no import file', HANG_GUARD, async () => {
      const tool = spawnTool(['import', '--size', '8Mi', 'sa:private', '-'], env);
      tool.child.stdin.end(pattern(MiB, 10));
      assert.equal(await tool.exited, 1, tool.stderr());
      assert.match(tool.stderr(), /^qvm-volume: error: .*got 1048576 bytes of data, expected 8388608\n$/);
      assert.deepEqual(await importFiles(), []);
      assert.equal(await sha256(path.join(volDir, 'private.img')), want);
    });

    it('an export whose tool is killed (SIGKILL) is ended (with a daemon: when its connection goes; embedded: with its domain): removing the domain and the pool leaves no file', HANG_GUARD, async () => {
      // A reader that never reads: the tool blocks with the export held.
      const tool = spawnTool(['export', 'sa:private', '-'], env);
      await until(async () => (await exportFiles()).length > 0, 'the export began', tool);
      tool.child.kill('SIGKILL');
      assert.equal(await tool.exited, null);
      if (daemon) {
        // The daemon ends it when the tool's connection goes.
        await until(async () => (await exportFiles()).length === 0, 'the daemon ended the export of the dead tool', { ...tool, gone: () => false });
        assert.match(daemon.log(), /call method=admin\.vm\.volume\.ExportStream arg=private .*result=ok/);
      } else {
        // Embedded, it is a dead process's leftover.
        assert.equal((await exportFiles()).length, 1, 'the export outlived its tool');
      }
      const rm = await run('qvm-remove', ['-f', 'sa'], env);
      assert.deepEqual(rm, { stdout: '', stderr: '', code: 0 });
      assert.deepEqual(await exportFiles(), [], 'the removal took the export');
      const rmPool = await run('qvm-pool', ['remove', 'p'], env);
      assert.deepEqual(rmPool, { stdout: '', stderr: '', code: 0 });
      assert.deepEqual(await listFiles(poolDir), [], 'no file left in the pool directory');
    });
  });
}
