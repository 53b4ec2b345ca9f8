// A qubesd with a StandaloneVM on an rbd pool whose tmp_dir is a regular
// file: an import or export that goes through a file there fails, so a test
// passing on it shows the data never went through tmp_dir. Shared by
// import-service.ts and export-stream.ts.
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { run, toolEnv } from '../../cli/helpers.js';
import { startQubesd, type DaemonProc } from '../../daemon/helpers.js';
import { CEPH_CONF, CEPH_POOL } from './helpers.js';

/** Asserts a tool exited 0, naming the step and its stderr. */
export function ok(r: { code: number | null; stderr: string }, what: string): void {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
}

/** Starts the daemon on `base` (its socket `base/s`), adds the pool `ceph` (images named `prefix`...) and creates `vm` in it. */
export async function daemonWithRbdVm(base: string, prefix: string, vm: string): Promise<{ daemon: DaemonProc; env: NodeJS.ProcessEnv }> {
  const sock = path.join(base, 's');
  const daemon = await startQubesd(base, sock);
  const env = toolEnv(base, sock);
  const notADir = path.join(base, 'not-a-dir');
  await fs.writeFile(notADir, 'x');
  const opts = ['-o', `ceph_pool=${CEPH_POOL}`, '-o', `ceph_conf=${CEPH_CONF}`, '-o', `image_prefix=${prefix}`, '-o', 'host_id=h', '-o', `tmp_dir=${notADir}`];
  ok(await run('qvm-pool', ['add', 'ceph', 'rbd', ...opts], env), 'qvm-pool add');
  ok(await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'ceph', vm], env), 'qvm-create');
  return { daemon, env };
}
