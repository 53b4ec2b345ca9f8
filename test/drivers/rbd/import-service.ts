// The local import service (src/qrexec/import-service.ts, the default of
// `qvm-volume import` on the daemon's host) on an rbd volume: the data is
// streamed into the image through the volume's import writer
// (internal.vm.volume.ImportMode answers `stream`), never through a file in
// tmp_dir, which here is a regular file: any import file made there fails.
// Short and long inputs are refused with Qubes' messages, the old data kept.
// Imported by rbd.test.ts.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, tempBase } from '../../cli/helpers.js';
import { ensureDead, type DaemonProc } from '../../daemon/helpers.js';
import { daemonWithRbdVm, ok } from './daemon-vm.js';
import { CEPH_POOL, cleanupAfter, describeRbd, readSpec, sha, uniquePrefix } from './helpers.js';

const SERVICE = fileURLToPath(new URL('../../../src/qrexec/import-service.js', import.meta.url));

/** Runs the service as the wrappers do, `file` as its stdin; resolves its stdout (the reply). */
async function service(env: NodeJS.ProcessEnv, vm: string, size: number, file: string): Promise<Buffer> {
  const fh = await fs.open(file, 'r');
  try {
    const child = spawn(process.execPath, [SERVICE, '--service', 'admin.vm.volume.ImportWithSize', '--size', String(size), '--', 'private'], {
      env: { ...env, QREXEC_REMOTE_DOMAIN: 'dom0', QREXEC_REQUESTED_TARGET: vm },
      stdio: [fh.fd, 'pipe', 'inherit'],
    });
    const out: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    await new Promise((resolve, reject) => child.once('close', resolve).once('error', reject));
    return Buffer.concat(out);
  } finally {
    await fh.close();
  }
}

describeRbd('rbd: the local import service streams into the image', () => {
  const prefix = uniquePrefix('impsvc');
  cleanupAfter(prefix);
  const daemons: DaemonProc[] = [];
  let base = '';
  after(async () => {
    for (const d of daemons) await ensureDead(d);
    if (base) await fs.rm(base, { recursive: true, force: true });
  });

  it('imports through the volume writer (no file in tmp_dir), and refuses short or long data keeping the old', async () => {
    base = await tempBase('qs-rbd-impsvc-');
    // tmp_dir is a regular file: an import through a file there cannot even begin.
    const { daemon, env } = await daemonWithRbdVm(base, prefix, 'imp');
    daemons.push(daemon);
    const data = path.join(base, 'data.img');
    const bytes = Buffer.alloc(6 * 1024 * 1024); // 2 MiB of data, 2 MiB of zeros, 2 MiB of data
    randomFillSync(bytes, 0, 2 * 1024 * 1024);
    randomFillSync(bytes, 4 * 1024 * 1024);
    await fs.writeFile(data, bytes);
    const imported = await run('qvm-volume', ['import', 'imp:private', data], env);
    ok(imported, 'qvm-volume import (the local service)');
    const image = `${CEPH_POOL}/${prefix}appvms=imp=private`;
    assert.equal(sha(await readSpec(image)), sha(bytes), 'the image holds the file');

    const short = path.join(base, 'short.img');
    await fs.writeFile(short, Buffer.alloc(100, 7));
    const refused = (await service(env, 'imp', 200, short)).toString('utf8');
    assert.match(refused, /Data import failed: not enough data \(copied 100 bytes, expected 200 bytes\)/);
    const tooMuch = (await service(env, 'imp', 50, short)).toString('utf8');
    assert.match(tooMuch, /Data import failed: too much data \(expected 50 bytes\)/);
    assert.equal(sha(await readSpec(image)), sha(bytes), 'the old data is kept');

    const exact = (await service(env, 'imp', 100, short)).toString('latin1');
    assert.equal(exact.slice(0, 2), '0\0', `the exact size is imported: ${exact}`);
    assert.deepEqual(await readSpec(image), Buffer.alloc(100, 7));
    ok(await run('qvm-remove', ['-f', 'imp'], env), 'qvm-remove');
  });
});
