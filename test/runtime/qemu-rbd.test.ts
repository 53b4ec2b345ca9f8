// The qemu runtime on rbd: a real guest boots under qemu (TCG) on volumes of
// an rbd pool on the test Ceph cluster, through the real qubesd and the
// qvm-* tools. qemu opens the images with its own rbd driver (Debian's
// qemu-block-extra): no local map. What the guest wrote is read back from
// the cluster with the `rbd` command.
//
// Needs the cluster of scripts/with-ceph.sh (npm test) and the guest of
// scripts/guest-kernel.sh; without them the file skips, and under
// QS_TEST_REQUIRE=1 (CI) it fails.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { QubesClient } from '../../src/client/index.js';
import { killRecordedGuests } from '../../src/runtime/qemu.js';
import { run, tempBase, toolEnv, type Result } from '../cli/helpers.js';
import { ensureDead, startQubesd, type DaemonProc } from '../daemon/helpers.js';
import { CEPH_CONF, CEPH_POOL, CEPH_SKIP, imagesWith, purgePrefix, readSpec, uniquePrefix } from '../drivers/rbd/helpers.js';
import { COUNTER_SCRIPT, guestLines, guestSetup, installGuestKernel, MiB, privateImage, TEMPLATE_ROOT, templateRootImage } from './guest-setup.js';

/** qemu's rbd block driver: Debian's qemu-block-extra puts it among qemu's modules. */
async function rbdModule(): Promise<string | null> {
  for (const dir of ['/usr/lib/x86_64-linux-gnu/qemu', '/usr/lib64/qemu', '/usr/lib/qemu']) {
    const p = path.join(dir, 'block-rbd.so');
    if (await fs.access(p).then(() => true, () => false)) return p;
  }
  return null;
}

const setup = await guestSetup();
const skip = setup.reason ?? CEPH_SKIP ?? false;
const noModule = skip ? null : (await rbdModule()) ? null : "qemu's rbd driver (block-rbd.so) not found (Debian package qemu-block-extra)";
if ((setup.reason || noModule) && process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: cannot boot guests on rbd: ${setup.reason ?? noModule}`);

describe('qemu runtime on rbd: a guest boots on rbd images through qemu\'s rbd driver (TCG) [ceph]', { skip: skip || noModule || false }, () => {
  const prefix = uniquePrefix('qemu');
  let base = '';
  let daemon: DaemonProc | undefined;
  let client: QubesClient | null = null;
  let env: NodeJS.ProcessEnv = {};

  const tool = async (name: string, ...args: string[]): Promise<Result> => {
    const r = await run(name, args, env);
    assert.equal(r.code, 0, `${name} ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const importImage = async (vmVolume: string, img: Buffer): Promise<void> => {
    const f = path.join(base, 'import.img');
    await fs.writeFile(f, img);
    await tool('qvm-volume', 'import', vmVolume, f);
    await fs.rm(f);
  };
  /** Boots the domain and waits (a deadline, not a timed assertion) until it has powered itself off. */
  const boot = async (vm: string): Promise<string[]> => {
    await tool('qvm-start', vm);
    const deadline = Date.now() + 300_000;
    while ((await client!.powerState(vm)) !== 'Halted') {
      if (Date.now() > deadline) throw new Error(`${vm} still running after 300 s: ${(await guestLines(base, vm).catch(() => [])).join('\n')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    return guestLines(base, vm);
  };
  const saidAll = (lines: readonly string[], ...wanted: string[]): void => {
    for (const w of wanted) assert.ok(lines.includes(w), `missing ${w}:\n${lines.join('\n')}`);
  };
  /** The bytes at `offset` of an image of the pool, as the cluster has them. */
  const imageAt = async (image: string, offset: number, length: number): Promise<string> =>
    (await readSpec(`${CEPH_POOL}/${prefix}${image}`)).subarray(offset, offset + length).toString('latin1').replace(/\0+$/, '');

  before(async () => {
    base = await tempBase('qs-gr-');
    await installGuestKernel(base, setup.kernelDir);
    const socket = path.join(base, 's');
    daemon = await startQubesd(base, socket, ['--runtime', 'qemu']);
    env = toolEnv(base, socket);
    client = QubesClient.overSocket(socket, { timeoutMs: 600_000 });
    await tool('qvm-pool', 'add', 'ceph', 'rbd', '-o', `ceph_pool=${CEPH_POOL}`, '-o', `ceph_conf=${CEPH_CONF}`, '-o', `image_prefix=${prefix}`);
    await tool('qvm-create', '-C', 'TemplateVM', '-l', 'black', '-P', 'ceph', 'tpl');
    await tool('qvm-create', '-t', 'tpl', '-l', 'red', '-P', 'ceph', '--prop', 'memory=128', '--prop', 'vcpus=1', 'app');
    await importImage('tpl:root', templateRootImage());
    await importImage('app:private', privateImage(COUNTER_SCRIPT));
  });

  after(async () => {
    await client?.close();
    if (daemon) {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
    await ensureDead(daemon);
    if (base) await killRecordedGuests(base);
    purgePrefix(prefix);
    if (base) await fs.rm(base, { recursive: true, force: true });
  });

  it('an AppVM on rbd writes private and root and powers off: private committed on the cluster with a new revision, root changes gone; the next boot reads private back', async () => {
    const before = await client!.revisions('app', 'private');
    const info = await tool('qvm-volume', 'info', 'app:private', 'path');
    assert.match(info.stdout, /^rbd:/, 'the volume is attached through its rbd: path');
    const lines = await boot('app');
    saidAll(lines, `qs-guest: root is [${TEMPLATE_ROOT}]`, 'qs-guest: private was []', 'qs-guest: volatile is []', 'qs-guest: root now [APPVM-WROTE-ROOT]', 'qs-guest: wrote boot-1');
    assert.deepEqual(lines.filter((l) => l.includes('failed')), []);
    // On the cluster: private holds what the guest wrote, the earlier data a new revision; the template's root untouched.
    assert.equal(await imageAt('appvms=app=private', MiB, 16), 'boot-1');
    assert.equal((await client!.revisions('app', 'private')).filter((r) => !before.includes(r)).length, 1);
    assert.equal(await imageAt('vm-templates=tpl=root', 0, 16), TEMPLATE_ROOT);
    assert.deepEqual(imagesWith(prefix).filter((i) => i.startsWith(`${prefix}appvms=app=root`)), [], 'the AppVM\'s root clone is gone with its changes');
    const [row] = JSON.parse((await tool('qvm-ls', '--format', 'json', 'app')).stdout) as { state: string }[];
    assert.equal(row?.state, 'Halted');

    await fs.rm(path.join(base, 'log', 'app.console.log'));
    const again = await boot('app');
    saidAll(again, `qs-guest: root is [${TEMPLATE_ROOT}]`, 'qs-guest: private was [boot-1]', 'qs-guest: volatile is []', 'qs-guest: wrote boot-2');
    assert.equal(await imageAt('appvms=app=private', MiB, 16), 'boot-2');
  });
});
