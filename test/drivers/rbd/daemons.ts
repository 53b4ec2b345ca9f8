// Two hosts, one Ceph pool, through the tools: two real qubesd processes
// with their own base directories and state files (B's a copy of A's with
// its own host_id) on the same Ceph pool. Imported by rbd.test.ts.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { run, tempBase, toolEnv } from '../../cli/helpers.js';
import { ensureDead, startQubesd, type DaemonProc } from '../../daemon/helpers.js';
import { CEPH_CONF, CEPH_POOL, cleanupAfter, describeRbd, imagesWith, readSpec, uniquePrefix, writeSpec } from './helpers.js';

describeRbd('rbd: two daemons (two hosts) on one Ceph pool, through the tools', () => {
  const prefix = uniquePrefix('qubesd');
  cleanupAfter(prefix);
  const daemons: DaemonProc[] = [];
  const bases: string[] = [];
  after(async () => {
    for (const d of daemons) await ensureDead(d);
    for (const b of bases) await fs.rm(b, { recursive: true, force: true });
  });

  it('refuses a domain running on host A to host B, naming A; after a shutdown on A it starts on B with the same data', async () => {
    const baseA = await tempBase('qs-rbd-a-');
    const baseB = await tempBase('qs-rbd-b-');
    bases.push(baseA, baseB);
    const ok = (r: { code: number | null; stderr: string }, what: string) => assert.equal(r.code, 0, `${what}: ${r.stderr}`);
    const a = await startQubesd(baseA, path.join(baseA, 's'));
    daemons.push(a);
    const envA = toolEnv(baseA, path.join(baseA, 's'));
    const opts = ['-o', `ceph_pool=${CEPH_POOL}`, '-o', `ceph_conf=${CEPH_CONF}`, '-o', `image_prefix=${prefix}`];
    ok(await run('qvm-pool', ['add', 'ceph', 'rbd', ...opts, '-o', 'host_id=hostA'], envA), 'qvm-pool add on A');
    ok(await run('qvm-create', ['--class', 'StandaloneVM', '--label', 'red', '-P', 'ceph', 'mover'], envA), 'qvm-create on A');
    const images = imagesWith(prefix);
    assert.deepEqual(images, [`${prefix}appvms=mover=private`, `${prefix}appvms=mover=root`]);
    // Host B learns the pool and the domain from A's state file (a copy of
    // metadata, no data), and takes its own name in locks.
    const state = await fs.readFile(path.join(baseA, 'qubes.xml'), 'utf8');
    assert.ok(state.includes('host_id="hostA"'), 'the pool is in the state file');
    await fs.writeFile(path.join(baseB, 'qubes.xml'), state.replace('host_id="hostA"', 'host_id="hostB"'));
    const b = await startQubesd(baseB, path.join(baseB, 's'));
    daemons.push(b);
    const envB = toolEnv(baseB, path.join(baseB, 's'));

    ok(await run('qvm-start', ['mover'], envA), 'qvm-start on A');
    const priv = `${CEPH_POOL}/${prefix}appvms=mover=private`;
    await writeSpec(priv, 0, 'written on host A');
    const refused = await run('qvm-start', ['mover'], envB);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /in use by host hostA \(lock qubes:hostA/);
    assert.match(refused.stderr, /break_stale_locks=hostA/);
    ok(await run('qvm-shutdown', ['--wait', 'mover'], envA), 'qvm-shutdown on A');

    ok(await run('qvm-start', ['mover'], envB), 'qvm-start on B');
    assert.equal((await readSpec(priv)).subarray(0, 17).toString(), 'written on host A');
    assert.deepEqual(imagesWith(prefix).filter((i) => !i.includes('~')), images, 'no copy made');
    const info = await run('qvm-volume', ['info', 'mover:private', 'path'], envB);
    ok(info, 'qvm-volume info');
    assert.match(info.stdout, new RegExp(`rbd:${CEPH_POOL}/${prefix}appvms=mover=private:conf=`));
    const onA = await run('qvm-start', ['mover'], envA);
    assert.equal(onA.code, 1);
    assert.match(onA.stderr, /in use by host hostB/);
    await writeSpec(priv, 0, 'written on host B');
    // Host B dies with the domain running: its locks stay. A breaks them only when told.
    const killed = daemons.pop()!;
    killed.child.kill('SIGKILL');
    await killed.exited;
    const stale = await run('qvm-start', ['mover'], envA);
    assert.equal(stale.code, 1);
    assert.match(stale.stderr, /in use by host hostB/);
    // The operator's explicit word: A restarted with QUBES_RBD_BREAK_STALE_LOCKS=hostB.
    a.child.kill('SIGTERM');
    await a.exited;
    daemons.splice(daemons.indexOf(a), 1);
    process.env['QUBES_RBD_BREAK_STALE_LOCKS'] = 'hostB';
    try {
      daemons.push(await startQubesd(baseA, path.join(baseA, 's')));
    } finally {
      delete process.env['QUBES_RBD_BREAK_STALE_LOCKS'];
    }
    ok(await run('qvm-start', ['mover'], envA), 'qvm-start on A after breaking the dead host B\'s locks');
    assert.equal((await readSpec(priv)).subarray(0, 17).toString(), 'written on host B', 'nothing B wrote is lost');
    ok(await run('qvm-shutdown', ['--wait', 'mover'], envA), 'qvm-shutdown on A');
    ok(await run('qvm-remove', ['-f', 'mover'], envA), 'qvm-remove on A');
    assert.deepEqual(imagesWith(prefix), []);
  });

  it('a pool added without host_id gets one of its own per daemon, saved: a restart keeps it', async () => {
    const pfx = uniquePrefix('hostid');
    cleanupAfter(pfx);
    const ok = (r: { code: number | null; stderr: string }, what: string) => assert.equal(r.code, 0, `${what}: ${r.stderr}`);
    const opts = ['-o', `ceph_pool=${CEPH_POOL}`, '-o', `ceph_conf=${CEPH_CONF}`, '-o', `image_prefix=${pfx}`];
    const hostIdOf = async (env: NodeJS.ProcessEnv): Promise<string> => {
      const r = await run('qvm-pool', ['info', 'ceph'], env);
      ok(r, 'qvm-pool info');
      const m = /^host_id\s+(\S+)$/m.exec(r.stdout);
      assert.ok(m, `host_id in: ${r.stdout}`);
      return m[1]!;
    };
    const ids: string[] = [];
    const envs: NodeJS.ProcessEnv[] = [];
    const baseA = await tempBase('qs-rbd-id-');
    bases.push(baseA);
    for (const base of [baseA, await tempBase('qs-rbd-id-')]) {
      if (base !== baseA) bases.push(base);
      daemons.push(await startQubesd(base, path.join(base, 's')));
      const env = toolEnv(base, path.join(base, 's'));
      envs.push(env);
      ok(await run('qvm-pool', ['add', 'ceph', 'rbd', ...opts], env), 'qvm-pool add without host_id');
      ids.push(await hostIdOf(env));
    }
    for (const id of ids) assert.match(id, new RegExp(`^${os.hostname().replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40)}-[0-9a-f]{12}$`));
    assert.notEqual(ids[0], ids[1], 'two daemons, two host ids');
    assert.ok((await fs.readFile(path.join(baseA, 'qubes.xml'), 'utf8')).includes(`host_id="${ids[0]}"`), 'saved in the state');
    const a = daemons.find((d) => d === daemons.at(-2))!;
    a.child.kill('SIGTERM');
    await a.exited;
    daemons.splice(daemons.indexOf(a), 1);
    daemons.push(await startQubesd(baseA, path.join(baseA, 's')));
    assert.equal(await hostIdOf(envs[0]!), ids[0], 'the same after a restart');
  });
});
