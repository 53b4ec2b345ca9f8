// The test VM harness, scripts/with-test-vm.sh: each test boots a guest
// (Debian's kernel under qemu) and runs a command in it. Exit status and
// output come back, the checkout is there and writable, device-mapper thin
// pools work on a scratch disk with real LVM commands, and the harness's
// failures (a guest that never reports a status, one that runs too long, an
// interrupted run) are failures that leave nothing behind. These tests never
// skip: if the VM cannot boot, they fail. One guest at a time (the tests of
// a file run in order). How the harness works: test/testvm/README.md.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { type NodeRun } from '../helpers/process.js';
import { CHECKOUT, runInTestVm, startTestVm, type TestVmOptions } from '../helpers/test-vm.js';

// A guest that hangs must not hang the run: the harness kills it after this.
const TIMEOUT = '600';

describe('test VM harness [vm] (commands run inside a qemu guest by scripts/with-test-vm.sh)', () => {
  // The harness makes its temporary directory (initramfs, scratch disks,
  // console, exchange files) under TMPDIR: with a TMPDIR of our own, "left
  // nothing behind" is "this directory is empty and no process names it".
  let tmp = '';
  before(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-testvm-harness-'));
  });
  after(async () => {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  const options = (env: NodeJS.ProcessEnv = {}, cwd?: string): TestVmOptions => ({
    env: { TMPDIR: tmp, QS_TEST_VM_TIMEOUT: TIMEOUT, ...env },
    ...(cwd ? { cwd } : {}),
  });

  /** Processes whose command line names `dir` (a qemu the harness left running would). */
  async function processesNaming(dir: string): Promise<string[]> {
    const found: string[] = [];
    for (const pid of await fs.readdir('/proc')) {
      if (!/^[0-9]+$/.test(pid) || pid === String(process.pid)) continue;
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(dir)) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ').trim()}`);
    }
    return found;
  }

  /** After a run: no file, directory or process of the harness is left. */
  async function assertNothingLeft(): Promise<void> {
    assert.deepEqual(await fs.readdir(tmp), [], `the harness left files in ${tmp}`);
    assert.deepEqual(await processesNaming(tmp), [], 'the harness left processes running');
  }

  /** Runs `command` in a guest, then checks that nothing is left on the host. */
  async function vm(command: readonly string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<NodeRun> {
    const run = await runInTestVm(command, options(env, cwd));
    await assertNothingLeft();
    return run;
  }

  test('COMMAND exit status 0 is passed back, and its stdout and stderr apart and unmixed', async () => {
    const run = await vm(['sh', '-c', 'printf "to stdout\\n"; printf "to stderr\\n" >&2; printf "stdout again\\n"']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'to stdout\nstdout again\n');
    assert.equal(run.stderr, 'to stderr\n');
  });

  test('a non-zero exit status is passed back, with the output written before it', async () => {
    const run = await vm(['sh', '-c', 'echo before; exit 7']);
    assert.equal(run.code, 7, run.stderr);
    assert.equal(run.stdout, 'before\n');
  });

  test("runs in the guest's kernel, in the checkout (writable, at its host path), with this node", async () => {
    // Started from dist/test/testvm on the host: the guest starts there too.
    const dir = path.join(CHECKOUT, 'dist', 'test', 'testvm');
    const probe = path.join(dir, `written-in-vm-${process.pid}`);
    const script = [
      'uname -r',
      'pwd',
      'node -p process.version',
      'sha256sum < ../../../package.json',
      `echo "written in the guest" > ${path.basename(probe)}`,
    ].join('; ');
    try {
      const run = await vm(['bash', '-c', script], {}, dir);
      assert.equal(run.code, 0, run.stderr);
      const [kernel, cwd, version, sum] = run.stdout.trim().split('\n');
      assert.notEqual(kernel, os.release(), "the guest runs its own kernel, not the host's");
      assert.match(kernel!, /^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-amd64$/, "Debian's amd64 kernel");
      assert.equal(cwd, dir);
      assert.equal(version, process.version);
      const hostSum = createHash('sha256').update(await fs.readFile(path.join(CHECKOUT, 'package.json'))).digest('hex');
      assert.equal(sum, `${hostSum}  -`);
      assert.equal(await fs.readFile(probe, 'utf8'), 'written in the guest\n');
    } finally {
      await fs.rm(probe, { force: true });
    }
  });

  test('modprobe dm-thin-pool and a thin pool on a scratch disk with real LVM commands', async () => {
    const script = [
      'set -e',
      'test -b "$QS_TEST_VM_DISK_1"',
      'modprobe dm-thin-pool',
      'grep -q "^dm_thin_pool " /proc/modules',
      'pvcreate -q "$QS_TEST_VM_DISK_1" >&2',
      'vgcreate -q qs_vm_test "$QS_TEST_VM_DISK_1" >&2',
      'lvcreate -q --type thin-pool -L 64M -n pool qs_vm_test >&2',
      'lvcreate -q --thin -V 128M -n thin1 qs_vm_test/pool >&2',
      'dd if=/dev/urandom of=/dev/qs_vm_test/thin1 bs=1M count=4 conv=fsync status=none',
      'lvs --reportformat json --units b -o lv_name,lv_attr,pool_lv,lv_size,data_percent qs_vm_test',
    ].join('\n');
    const run = await vm(['bash', '-c', script], { QS_TEST_VM_DISKS: '1', QS_TEST_VM_DISK_SIZE: '256M' });
    assert.equal(run.code, 0, run.stderr);
    const report = JSON.parse(run.stdout) as { report: [{ lv: Record<string, string>[] }] };
    const lvs = new Map(report.report[0].lv.map((lv) => [lv['lv_name'], lv]));
    const pool = lvs.get('pool');
    const thin = lvs.get('thin1');
    assert.ok(pool && thin, run.stdout);
    assert.equal(pool['lv_attr']![0], 't', 'pool is a thin pool');
    assert.equal(pool['lv_size'], `${64 * 2 ** 20}B`);
    assert.equal(thin['lv_attr']![0], 'V', 'thin1 is a thin volume');
    assert.equal(thin['pool_lv'], 'pool');
    assert.equal(thin['lv_size'], `${128 * 2 ** 20}B`);
    assert.ok(Number(thin['data_percent']) > 0, `4 MiB written into thin1 uses some of it (${thin['data_percent']}%)`);
  });

  test('a guest that ends without reporting an exit status is a failure (125), with its console', async () => {
    // An immediate reboot: init never writes the status.
    const run = await vm(['sh', '-c', 'echo b > /proc/sysrq-trigger; sleep 60']);
    assert.equal(run.code, 125);
    assert.match(run.stderr, /ended without reporting COMMAND's exit status/);
    assert.match(run.stderr, /last lines of the guest's console/);
  });

  test('a kernel that cannot boot is a failure (125), not a pass or a skip', async () => {
    // A cache like the real one but for the kernel, which is not one.
    const real = process.env['QS_TEST_VM_CACHE'] ?? '/var/cache/qubes-storage/test-vm';
    const current = await fs.readFile(path.join(real, 'current'), 'utf8');
    const kernelDir = /^kernel=(.*)$/m.exec(current)![1]!;
    const version = kernelDir.replace(/^kernel-/, '');
    const cache = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-testvm-badcache-'));
    try {
      await fs.writeFile(path.join(cache, 'current'), current);
      await fs.mkdir(path.join(cache, kernelDir, 'boot'), { recursive: true });
      await fs.mkdir(path.join(cache, kernelDir, 'lib', 'modules'), { recursive: true });
      await fs.writeFile(path.join(cache, kernelDir, 'boot', `vmlinuz-${version}`), 'not a kernel\n');
      await fs.symlink(path.join(real, kernelDir, 'lib', 'modules', version), path.join(cache, kernelDir, 'lib', 'modules', version));
      const busyboxDir = /^busybox=(.*)$/m.exec(current)![1]!;
      await fs.symlink(path.join(real, busyboxDir), path.join(cache, busyboxDir));
      const run = await vm(['true'], { QS_TEST_VM_CACHE: cache });
      assert.equal(run.code, 125);
      assert.match(run.stderr, /ended without reporting COMMAND's exit status/);
    } finally {
      await fs.rm(cache, { recursive: true, force: true });
    }
  });

  test('a guest running longer than QS_TEST_VM_TIMEOUT is killed: exit 124, nothing left', async () => {
    const run = await vm(['sleep', '3600'], { QS_TEST_VM_TIMEOUT: '10' });
    assert.equal(run.code, 124);
    assert.match(run.stderr, /ran longer than QS_TEST_VM_TIMEOUT=10s/);
  });

  test('SIGTERM to the harness stops the guest and leaves nothing behind', async () => {
    const child = startTestVm(['sh', '-c', 'echo started; exec sleep 3600'], options());
    let stdout = '';
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = once(child, 'close') as Promise<[number | null, string | null]>;
    // Once COMMAND runs in the guest (its first line came back), interrupt.
    await new Promise<void>((resolve) => {
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
        if (stdout.includes('started\n')) resolve();
      });
      child.on('close', () => resolve());
    });
    assert.equal(stdout, 'started\n', stderr);
    child.kill('SIGTERM');
    const [code, signal] = await exited;
    assert.deepEqual([code, signal], [143, null], stderr);
    assert.match(stderr, /interrupted by SIGTERM/);
    await assertNothingLeft();
  });
});
