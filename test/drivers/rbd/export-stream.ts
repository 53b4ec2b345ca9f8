// `qvm-volume export` against a daemon on an rbd volume: the data is read
// from the image and streamed over the admin socket
// (admin.vm.volume.ExportStream), never through a file in tmp_dir, which
// here is a regular file: any export file made there fails. The output has
// the image's bytes and keeps its holes (a file) or has every byte in order
// (stdout); a tool killed mid-export leaves no export snapshot: the daemon
// ends the export when the connection goes. Imported by rbd.test.ts.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { CLI_DIR, run, tempBase } from '../../cli/helpers.js';
import { ensureDead, type DaemonProc } from '../../daemon/helpers.js';
import { daemonWithRbdVm, ok } from './daemon-vm.js';
import { CEPH_POOL, cleanupAfter, describeRbd, readSpec, restlessSnaps, sha, snapsOf, uniquePrefix } from './helpers.js';

const MiB = 1024 * 1024;

describeRbd('rbd: qvm-volume export streams the image over the admin socket', () => {
  const prefix = uniquePrefix('expstr');
  cleanupAfter(prefix);
  const daemons: DaemonProc[] = [];
  let base = '';
  after(async () => {
    for (const d of daemons) await ensureDead(d);
    if (base) await fs.rm(base, { recursive: true, force: true });
  });

  it('to a file (holes kept) and to stdout (every byte), no file in tmp_dir; a killed tool leaves no export snapshot', { timeout: 300_000 }, async () => {
    base = await tempBase('qs-rbd-expstr-');
    // tmp_dir is a regular file: an export through a file there fails.
    const { daemon, env } = await daemonWithRbdVm(base, prefix, 'exp');
    daemons.push(daemon);
    // 12 MiB over three 4 MiB reads: data, 7 MiB of zeros, data.
    const bytes = Buffer.alloc(12 * MiB);
    randomFillSync(bytes, 0, 2 * MiB);
    randomFillSync(bytes, 9 * MiB);
    const data = path.join(base, 'data.img');
    await fs.writeFile(data, bytes);
    ok(await run('qvm-volume', ['import', 'exp:private', data], env), 'qvm-volume import');
    const image = `${prefix}appvms=exp=private`;
    assert.equal(sha(await readSpec(`${CEPH_POOL}/${image}`)), sha(bytes), 'the image holds the file');

    const out = path.join(base, 'out.img');
    ok(await run('qvm-volume', ['export', 'exp:private', out], env), 'qvm-volume export to a file');
    assert.equal(sha(await fs.readFile(out)), sha(bytes), 'the file has the image');
    const st = await fs.stat(out);
    assert.equal(st.size, bytes.length);
    assert.ok(st.blocks * 512 <= 6 * MiB, `the zeros are holes: ${st.blocks * 512} bytes allocated`);
    assert.match(daemon.stderr(), /call method=admin\.vm\.volume\.ExportStream arg=private .*result=ok/);

    const viaStdout = path.join(base, 'stdout.img');
    const fh = await fs.open(viaStdout, 'w');
    try {
      const child = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), 'export', 'exp:private', '-'], { env, stdio: ['ignore', fh.fd, 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise((resolve) => child.once('close', resolve));
      assert.equal(code, 0, stderr);
    } finally {
      await fh.close();
    }
    assert.equal(sha(await fs.readFile(viaStdout)), sha(bytes), 'stdout has every byte');

    // A reader that never reads: the tool blocks mid-export, the daemon holding its snapshot; then the tool is killed.
    const child = spawn(process.execPath, [path.join(CLI_DIR, 'qvm-volume.js'), 'export', 'exp:private', '-'], { env, stdio: ['ignore', 'pipe', 'ignore'] });
    child.stdout!.pause();
    const exited = new Promise((resolve) => child.once('close', resolve));
    for (let i = 0; !snapsOf(image).some((s) => s.startsWith('qs-export-')); i++) {
      assert.ok(i < 600, 'the export began (its snapshot)');
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGKILL');
    await exited;
    for (let i = 0; restlessSnaps(image).length > 0; i++) {
      assert.ok(i < 600, `the daemon ended the export of the dead tool: ${restlessSnaps(image).join(' ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    ok(await run('qvm-remove', ['-f', 'exp'], env), 'qvm-remove');
  });
});
