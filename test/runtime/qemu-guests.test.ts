// End-to-end tests of the qemu runtime (src/runtime/qemu.ts): real guests
// boot under qemu (TCG) on their volumes, through the real qubesd over its
// socket (`--runtime qemu`) and the qvm-* tools. The guest is the tiny kernel
// entry of scripts/guest-kernel.sh: its init runs the script found at the
// start of the private volume and powers off when it ends; what it reads it
// says on the console (BASE/log/NAME.console.log), lines `qs-guest: ...`.
//
// Disk layout the scripts use (raw disks, no filesystem): private holds the
// script in its first 64 KiB and the guest's data at 1 MiB; the template's
// root holds a marker at 0. Each boot costs ~10-20 s of one core here.
//
// Without qemu or the guest kernel the file skips, and fails under
// QS_TEST_REQUIRE=1 (CI). Every qemu is ended by the daemon, and the daemon
// by its pid, even when a test fails; leftover qemus (from the pid files) are
// killed by pid in `after`.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { QubesClient } from '../../src/client/index.js';
import type { RunnerDomain } from '../../src/domain/runner.js';
import { chooseAccel, probeGuest } from '../../src/runtime/accel.js';
import { killRecordedGuests, procStart, qemuRuntime } from '../../src/runtime/qemu.js';
import { Qmp } from '../../src/runtime/qmp.js';
import type { BlockDevice } from '../../src/storage/volume.js';
import { run, toolEnv, QUBESD, type Result } from '../cli/helpers.js';
import { COUNTER_SCRIPT, guestSetup, installGuestKernel, MiB, privateImage, TEMPLATE_ROOT, templateRootImage } from './guest-setup.js';

const setup = await guestSetup();
if (setup.reason && process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: cannot boot guests: ${setup.reason}`);

describe('qemu runtime: guests boot on their volumes (TCG)', { skip: setup.reason ?? false }, () => {
  let base = '';
  let daemon: ChildProcess | null = null;
  let daemonLog = '';
  let socket = '';
  let env: NodeJS.ProcessEnv = {};
  let client: QubesClient | null = null;

  const tool = async (name: string, ...args: string[]): Promise<Result> => {
    const r = await run(name, args, env);
    assert.equal(r.code, 0, `${name} ${args.join(' ')}: ${r.stderr}\ndaemon log:\n${daemonLog.slice(-2000)}`);
    return r;
  };
  const consoleLog = (vm: string): Promise<string> => fs.readFile(path.join(base, 'log', `${vm}.console.log`), 'utf8');
  const guestLines = async (vm: string): Promise<string[]> =>
    (await consoleLog(vm)).split('\n').map((l) => l.trim()).filter((l) => l.startsWith('qs-guest: '));
  const fileAt = async (file: string, offset: number, length: number): Promise<string> => {
    const h = await fs.open(file, 'r');
    try {
      const b = Buffer.alloc(length);
      const { bytesRead } = await h.read(b, 0, length, offset);
      return b.subarray(0, bytesRead).toString('latin1').replace(/\0+$/, '');
    } finally {
      await h.close();
    }
  };
  const poolFile = (...p: string[]): string => path.join(base, 'pools', 'default', ...p);
  /**
   * Waits (without a timed assertion: a hang is what the deadline is for)
   * until the domain is Halted and its storage stopped: the runtime drops
   * the guest's pid file only once the stop is done (Halted is shown as it begins).
   */
  const halted = async (vm: string): Promise<void> => {
    const deadline = Date.now() + 300_000;
    const pidFile = path.join(base, 'qemu', `${vm}.pid`);
    while ((await client!.powerState(vm)) !== 'Halted' || (await fs.access(pidFile).then(() => true, () => false))) {
      if (Date.now() > deadline) throw new Error(`${vm} still running after 300 s; console:\n${await consoleLog(vm).catch(() => '')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  const importImage = async (vmVolume: string, img: Buffer): Promise<void> => {
    const f = path.join(base, 'import.img');
    await fs.writeFile(f, img);
    await tool('qvm-volume', 'import', vmVolume, f);
    await fs.rm(f);
  };
  /** Waits until the guest has said `line` on its console. */
  const said = async (vm: string, line: string): Promise<void> => {
    const deadline = Date.now() + 300_000;
    while (!(await guestLines(vm).catch(() => [] as string[])).includes(line)) {
      if ((await client!.powerState(vm)) === 'Halted' && !(await guestLines(vm)).includes(line)) throw new Error(`${vm} halted without saying ${line}; console:\n${await consoleLog(vm).catch(() => '')}`);
      if (Date.now() > deadline) throw new Error(`${vm} did not say ${line} in 300 s; console:\n${await consoleLog(vm).catch(() => '')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  /** Each of `wanted` is a line the guest said (its console lines shown when one is missing). */
  const saidAll = (lines: readonly string[], ...wanted: string[]): void => {
    for (const w of wanted) assert.ok(lines.includes(w), `missing ${w}:\n${lines.join('\n')}`);
  };
  const revisions = async (vm: string, volume: string): Promise<string[]> => client!.revisions(vm, volume);

  /** qubesd --runtime qemu on `base`, its log in daemonLog; a client over its socket. */
  const startQubesd = async (): Promise<void> => {
    daemonLog = '';
    const d = spawn(process.execPath, [QUBESD, '--base-dir', base, '--socket', socket, '--runtime', 'qemu'], {
      env: { PATH: process.env['PATH'], HOME: base, QUBES_STORAGE_CHECK_SAVES: process.env['QUBES_STORAGE_CHECK_SAVES'] ?? '' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    daemon = d;
    d.stderr!.setEncoding('utf8').on('data', (x: string) => (daemonLog += x));
    const deadline = Date.now() + 60_000;
    while (!daemonLog.includes('listening on')) {
      if (d.exitCode !== null || Date.now() > deadline) throw new Error(`qubesd did not start:\n${daemonLog}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await client?.close();
    client = QubesClient.overSocket(socket, { timeoutMs: 600_000 });
  };

  before(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-g-'));
    await installGuestKernel(base, setup.kernelDir);
    socket = path.join(base, 's');
    await startQubesd();
    env = toolEnv(base, socket);
    // A template with a marked root, an AppVM on it; tiny guests (TCG: one vcpu).
    await tool('qvm-create', '-C', 'TemplateVM', '-l', 'black', 'tpl');
    await tool('qvm-create', '-t', 'tpl', '-l', 'red', '--prop', 'memory=128', '--prop', 'vcpus=1', 'app');
    await importImage('tpl:root', templateRootImage());
  });

  after(async () => {
    await client?.close();
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGTERM'); // its guests go on running: killed below
      await exited;
    }
    // A daemon that could not stop them: the qemus of this base directory, by their recorded pids.
    if (base) await killRecordedGuests(base);
    if (base) await fs.rm(base, { recursive: true, force: true });
  });

  it('boots a guest: an AppVM writes private and root and powers off; private is committed as a new revision, root changes are gone', async () => {
    await importImage('app:private', privateImage(COUNTER_SCRIPT));
    const before = await revisions('app', 'private');
    await tool('qvm-start', 'app');
    await halted('app');
    const lines = await guestLines('app');
    saidAll(lines, `qs-guest: root is [${TEMPLATE_ROOT}]`, 'qs-guest: private was []', 'qs-guest: volatile is []', 'qs-guest: root now [APPVM-WROTE-ROOT]', 'qs-guest: wrote boot-1');
    assert.deepEqual(lines.filter((l) => l.includes('failed')), []);
    // The host: private committed with what the guest wrote, the earlier data kept as a new revision.
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-1');
    const after1 = await revisions('app', 'private');
    assert.equal(after1.filter((r) => !before.includes(r)).length, 1, `revisions before ${before.join(' ')} after ${after1.join(' ')}`);
    // The template's root untouched; the AppVM's root snapshot gone with its changes.
    assert.equal(await fileAt(poolFile('vm-templates', 'tpl', 'root.img'), 0, 16), TEMPLATE_ROOT);
    const appFiles = await fs.readdir(poolFile('appvms', 'app'));
    assert.deepEqual(appFiles.filter((f) => f.includes('dirty') || f.startsWith('root')), [], appFiles.join(' '));
    const [row] = JSON.parse((await tool('qvm-ls', '--format', 'json', 'app')).stdout) as { name: string; state: string }[];
    assert.equal(row?.state, 'Halted');
    // The guest's console and qemu's messages: the owner's only.
    for (const f of ['app.console.log', 'app.qemu.log']) assert.equal((await fs.stat(path.join(base, 'log', f))).mode & 0o777, 0o600, f);
    // The accelerator (QUBES_STORAGE_QEMU_ACCEL unset: auto), said once at this first start, with why.
    const kvmOpens = await fs.open('/dev/kvm', 'r+').then((h) => h.close().then(() => true), () => false);
    const accelLines = daemonLog.split('\n').filter((l) => l.includes('guests run under'));
    assert.equal(accelLines.length, 1, daemonLog);
    if (!kvmOpens) assert.match(accelLines[0]!, /^qubesd: qemu runtime: guests run under tcg \(auto: \/dev\/kvm cannot be opened \(E[A-Z]+\)\)$/);
    else assert.match(accelLines[0]!, /^qubesd: qemu runtime: guests run under (tcg|kvm) \(auto: /);
  });

  it('boots a guest again: it reads back its private data and sees the template root and an empty volatile', async () => {
    await tool('qvm-start', 'app');
    await halted('app');
    const lines = await guestLines('app');
    saidAll(lines, `qs-guest: root is [${TEMPLATE_ROOT}]`, 'qs-guest: private was [boot-1]');
    assert.deepEqual(lines.filter((l) => l.includes('failed')), []);
    saidAll(lines, 'qs-guest: volatile is []');
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-2');
  });

  it('boots a guest and shuts it down through ACPI: qvm-shutdown presses its power button, private is committed', async () => {
    await tool('qvm-prefs', 'app', 'kernelopts', 'qs.wait');
    await tool('qvm-start', 'app');
    await said('app', 'qs-guest: waiting');
    await tool('qvm-shutdown', '--wait', 'app');
    const lines = await guestLines('app');
    // The guest powered off because of the button, not the runtime's kill after shutdown_timeout (60 s).
    saidAll(lines, 'qs-guest: power button', 'qs-guest: private was [boot-2]');
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-3');
  });

  it('boots a guest and kills it mid-write: the private committed before stays as a revision; revert brings it back and a boot reads it', async () => {
    await tool('qvm-prefs', 'app', 'kernelopts', 'qs.scribble');
    await tool('qvm-start', 'app');
    await said('app', 'qs-guest: scribbling');
    await client!.transport.call('admin.vm.Kill', 'app', '', '');
    await halted('app');
    // What the killed guest wrote is committed (as Qubes does at a kill) ...
    assert.match(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 24), /^scribble-\d+$/);
    // ... and the private of the clean shutdown before is whole in the newest revision.
    await tool('qvm-volume', 'revert', 'app:private');
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-3');
    await tool('qvm-prefs', 'app', 'kernelopts', '');
    await tool('qvm-start', 'app');
    await halted('app');
    const lines = await guestLines('app');
    saidAll(lines, 'qs-guest: private was [boot-3]', 'qs-guest: volatile is []', `qs-guest: root is [${TEMPLATE_ROOT}]`);
  });

  it('boots a guest, kills qubesd: the next qubesd finds the guest running again and shuts it down through ACPI; private committed', async () => {
    await tool('qvm-prefs', 'app', 'kernelopts', 'qs.wait');
    await tool('qvm-start', 'app');
    await said('app', 'qs-guest: waiting');
    const pid = Number((await fs.readFile(path.join(base, 'qemu', 'app.pid'), 'utf8')).split(' ')[0]);
    const killed = new Promise((r) => daemon!.once('exit', r));
    daemon!.kill('SIGKILL');
    await killed;
    await startQubesd();
    assert.match(daemonLog, new RegExp(`domain app is running \\(qemu pid ${pid}, found again\\)`));
    assert.notEqual(await procStart(pid), '', 'the guest outlived its daemon');
    const [row] = JSON.parse((await tool('qvm-ls', '--format', 'json', 'app')).stdout) as { state: string }[];
    assert.equal(row?.state, 'Running');
    await tool('qvm-shutdown', '--wait', 'app');
    assert.equal(await procStart(pid), '');
    const lines = await guestLines('app');
    saidAll(lines, 'qs-guest: power button', 'qs-guest: wrote boot-5');
    // The storage the killed daemon started, stopped by the new one: private committed.
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-5');
    assert.deepEqual((await fs.readdir(poolFile('appvms', 'app'))).filter((f) => f.includes('dirty')), []);
  });

  it('a disk another qemu holds: qvm-start fails naming the volume, exit 1; the storage is stopped again, the domain Halted, no qemu left', async () => {
    // revisions_to_keep -1: the started private is the committed image itself (a hard link), the file the holder locks.
    await tool('qvm-create', '-t', 'tpl', '-l', 'red', '--prop', 'memory=128', '--prop', 'vcpus=1', 'held');
    await importImage('held:private', privateImage(COUNTER_SCRIPT, 'HELD-DATA'));
    await tool('qvm-volume', 'config', 'held:private', 'revisions_to_keep', '-1');
    const privateImg = poolFile('appvms', 'held', 'private.img');
    const holderQmp = path.join(base, 'holder.qmp');
    const holder = spawn(
      'qemu-system-x86_64',
      ['-machine', 'q35,accel=tcg', '-S', '-display', 'none', '-nodefaults', '-qmp', `unix:${holderQmp},server=on,wait=off`,
        '-drive', `file=${privateImg},format=raw,if=none,id=h`, '-device', 'virtio-blk-pci,drive=h'],
      { stdio: 'ignore' },
    );
    try {
      // It answers on QMP once its devices are made (and the image's lock taken).
      for (const until = Date.now() + 60_000; ; await new Promise((r) => setTimeout(r, 100))) {
        const q = await Qmp.connect(holderQmp).catch(() => null);
        if (q) {
          await q.execute('query-status');
          q.close();
          break;
        }
        if (holder.exitCode !== null || Date.now() > until) throw new Error('the holder qemu did not start');
      }
      const r = await run('qvm-start', ['held'], env);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^qvm-start: error: domain held: volume private cannot be attached \(\S*\/appvms\/held\/private-dirty\.img\): .*Failed to get "write" lock/m);
    } finally {
      if (holder.exitCode === null && holder.signalCode === null) {
        const gone = new Promise((res) => holder.once('exit', res));
        holder.kill('SIGKILL');
        await gone;
      }
    }
    // Storage stopped as before the start: no working copy, snapshot or volatile image left; the data as it was.
    const left = await fs.readdir(poolFile('appvms', 'held'));
    assert.deepEqual(left.sort(), ['private.img'], left.join(' '));
    assert.equal(await fileAt(privateImg, MiB, 16), 'HELD-DATA');
    const [row] = JSON.parse((await tool('qvm-ls', '--format', 'json', 'held')).stdout) as { state: string }[];
    assert.equal(row?.state, 'Halted');
    // No qemu left for it: no record, and no process with its QMP socket on its command line.
    assert.deepEqual((await fs.readdir(path.join(base, 'qemu'))).filter((f) => f.startsWith('held.')), []);
    const qmpArg = `path=${path.join(base, 'qemu', 'held.qmp')},`;
    for (const pid of (await fs.readdir('/proc')).filter((p) => /^\d+$/.test(p)))
      assert.ok(!(await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(qmpArg), `a qemu of held is left: pid ${pid}`);
  });

  it('boots a DispVM: it sees its template\'s private and root; what it writes to private is discarded', async () => {
    await tool('qvm-prefs', 'app', 'kernelopts', '');
    await tool('qvm-prefs', 'app', 'template_for_dispvms', 'True');
    await tool('qvm-create', '-C', 'DispVM', '-t', 'app', '-l', 'red', '--prop', 'memory=128', '--prop', 'vcpus=1', 'disp');
    await tool('qvm-start', 'disp');
    await halted('disp');
    const lines = await guestLines('disp');
    saidAll(lines, `qs-guest: root is [${TEMPLATE_ROOT}]`, 'qs-guest: private was [boot-5]', 'qs-guest: wrote boot-6');
    // Nothing committed anywhere: the disposable's private and root snapshots are gone, app's private unchanged.
    assert.equal(await fileAt(poolFile('appvms', 'app', 'private.img'), MiB, 16), 'boot-5');
    const left = await fs.readdir(poolFile('appvms', 'disp')).catch(() => [] as string[]);
    assert.deepEqual(left.filter((f) => f.includes('dirty') || f.startsWith('private') || f.startsWith('root')), [], left.join(' '));
  });
  it('a guest that powers off while no qubesd runs: the next qubesd stops its storage as at a shutdown (private committed, a new revision), Halted', async () => {
    // A domain of its own (the test runs alone too): its guest writes boot-1 to private and waits for the power button.
    await tool('qvm-create', '-t', 'tpl', '-l', 'red', '--prop', 'memory=128', '--prop', 'vcpus=1', '--prop', 'kernelopts=qs.wait', 'away');
    await importImage('away:private', privateImage(COUNTER_SCRIPT));
    const before = await revisions('away', 'private');
    await tool('qvm-start', 'away');
    await said('away', 'qs-guest: waiting');
    const pid = Number((await fs.readFile(path.join(base, 'qemu', 'away.pid'), 'utf8')).split(' ')[0]);
    await client!.close();
    client = null;
    const killed = new Promise((r) => daemon!.once('exit', r));
    daemon!.kill('SIGKILL');
    await killed;
    // Without a daemon the tools (embedded: bookkeeping) cannot see the guest: they refuse rather than show it Halted.
    const embedded = await run('qvm-ls', [], toolEnv(base));
    assert.notEqual(embedded.code, 0);
    assert.match(embedded.stderr, /^qvm-ls: error: \S+\/qemu records guests of the qemu runtime \(away\), which this runtime \(bookkeeping\) cannot see: use qubesd with the qemu runtime/);
    // With no qubesd: the power button, pressed here over the guest's own QMP socket; its acpid powers it off.
    const q = await Qmp.connect(path.join(base, 'qemu', 'away.qmp'));
    await q.execute('system_powerdown');
    q.close();
    while ((await procStart(pid)) !== '') await new Promise((r) => setTimeout(r, 100));
    // Still as the killed daemon left it: the working copy of private holds what the guest wrote, uncommitted.
    assert.equal(await fileAt(poolFile('appvms', 'away', 'private-dirty.img'), MiB, 16), 'boot-1');
    assert.equal(await fileAt(poolFile('appvms', 'away', 'private.img'), MiB, 16), '');
    await startQubesd();
    assert.match(daemonLog, new RegExp(`domain away: its guest \\(qemu pid ${pid}\\) ended while no qubesd ran; stopping its storage as at a shutdown`));
    const [row] = JSON.parse((await tool('qvm-ls', '--format', 'json', 'away')).stdout) as { state: string }[];
    assert.equal(row?.state, 'Halted');
    saidAll(await guestLines('away'), 'qs-guest: power button', 'qs-guest: private was []', 'qs-guest: wrote boot-1');
    // Committed: the guest's write in private, the data before it kept as one new revision; root and volatile discarded.
    assert.equal(await fileAt(poolFile('appvms', 'away', 'private.img'), MiB, 16), 'boot-1');
    const after1 = await revisions('away', 'private');
    assert.equal(after1.filter((r) => !before.includes(r)).length, 1, `revisions before ${before.join(' ')} after ${after1.join(' ')}`);
    const files = await fs.readdir(poolFile('appvms', 'away'));
    assert.deepEqual(files.filter((f) => f.includes('dirty') || f.startsWith('root') || f.startsWith('volatile')), [], files.join(' '));
    // The record is gone with the stop: a further restart finds nothing owed.
    assert.deepEqual((await fs.readdir(path.join(base, 'qemu'))).filter((f) => f.startsWith('away.')), []);
  });
});

describe('qemu runtime: a disk that cannot be attached fails the start, naming the volume', { skip: setup.reason ?? false }, () => {
  const dom: RunnerDomain = {
    name: 'bad',
    klass: 'AppVM',
    uuid: '00000000-0000-4000-8000-000000000001',
    qid: 1,
    prop: (n) => ({ memory: 64, vcpus: 1, kernelopts: '', shutdown_timeout: 5 })[n],
  };
  const dev = (p: string, rw: boolean): BlockDevice => ({ path: p, name: path.basename(p), devtype: 'disk', rw, domain: null });

  it('a missing file, and a file qemu refuses (another qemu writes it): the start fails, no qemu is left', async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-g-'));
    let holder: ChildProcess | null = null;
    let rt: Awaited<ReturnType<typeof qemuRuntime>> | null = null;
    try {
      const priv = path.join(base, 'private.img');
      await fs.writeFile(priv, Buffer.alloc(MiB));
      rt = await qemuRuntime({ baseDir: base });
      const disks = (privatePath: string) =>
        new Map([
          ['private', dev(privatePath, true)],
          ['kernel', dev(path.join(setup.kernelDir, 'modules.img'), false)],
        ]);
      await assert.rejects(rt.runner.start(dom, disks(path.join(base, 'gone.img'))), (e: Error) => {
        assert.match(e.message, /^domain bad: volume private cannot be attached: .*gone\.img: ENOENT$/);
        return true;
      });
      // Another process writes the image (qemu's image locks): qemu refuses to open it.
      // (a paused machine with the image on a device: qemu takes the image's lock when the device is made)
      const holderQmp = path.join(base, 'holder.qmp');
      holder = spawn(
        'qemu-system-x86_64',
        ['-machine', 'q35,accel=tcg', '-S', '-display', 'none', '-nodefaults', '-qmp', `unix:${holderQmp},server=on,wait=off`,
          '-drive', `file=${priv},format=raw,if=none,id=h`, '-device', 'virtio-blk-pci,drive=h'],
        { stdio: 'ignore' },
      );
      // It answers on QMP once its devices are made (and the lock taken).
      const deadline = Date.now() + 60_000;
      for (;;) {
        const q = await Qmp.connect(holderQmp).catch(() => null);
        if (q) {
          await q.execute('query-status');
          q.close();
          break;
        }
        if (holder.exitCode !== null || Date.now() > deadline) throw new Error('the holder qemu did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
      await assert.rejects(rt.runner.start(dom, disks(priv)), (e: Error) => {
        assert.match(e.message, /^domain bad: volume private cannot be attached \(.*private\.img\): .*Failed to get "write" lock/);
        return true;
      });
      assert.equal(rt.runner.isRunning!(dom), false);
      assert.deepEqual(await fs.readdir(path.join(base, 'qemu')), []);
    } finally {
      await rt?.runner.kill(dom); // a qemu the start should not have left
      if (holder && holder.exitCode === null) {
        const gone = new Promise((r) => holder!.once('exit', r));
        holder.kill('SIGKILL');
        await gone;
      }
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});

describe('qemu runtime: the accelerator (auto: KVM only where a probe guest runs under it)', { skip: setup.reason ?? false }, () => {
  const vmlinuz = (): string => path.join(setup.kernelDir, 'vmlinuz');

  it('auto without a /dev/kvm that opens: tcg, saying why; no probe is run', async () => {
    const c = await chooseAccel('auto', { qemu: 'qemu-system-x86_64', vmlinuz: vmlinuz(), devKvm: path.join(os.tmpdir(), 'qs-no-such-kvm') });
    assert.deepEqual(c, { accel: 'tcg', why: `auto: ${path.join(os.tmpdir(), 'qs-no-such-kvm')} cannot be opened (ENOENT)` });
    // Told: taken as told, no probe.
    assert.deepEqual(await chooseAccel('kvm', { qemu: 'qemu-system-x86_64', vmlinuz: vmlinuz() }), { accel: 'kvm', why: 'QUBES_STORAGE_QEMU_ACCEL=kvm' });
  });

  it('auto where /dev/kvm opens but the probe guest does not get to its panic in time: tcg, saying why', async () => {
    // /dev/null opens read-write; 1 ms is too short for any guest: the probe fails whatever this host's KVM does.
    const c = await chooseAccel('auto', { qemu: 'qemu-system-x86_64', vmlinuz: vmlinuz(), devKvm: '/dev/null', timeoutMs: 1 });
    assert.equal(c.accel, 'tcg');
    assert.equal(c.why, 'auto: /dev/null opens but a probe guest did not reach its kernel panic within 0.001 s under kvm (the guest hangs)');
  });

  it('the probe: a kernel that boots reaches its panic and qemu ends (under tcg); a file that is no kernel does not', async () => {
    assert.equal(await probeGuest('qemu-system-x86_64', 'tcg', vmlinuz(), 120_000), null);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-probe-'));
    try {
      await fs.writeFile(path.join(dir, 'vmlinuz'), 'not a kernel\n');
      const notKernel = await probeGuest('qemu-system-x86_64', 'tcg', path.join(dir, 'vmlinuz'), 120_000);
      assert.equal(notKernel, 'a probe guest did not run under tcg: qemu exited 1: qemu: invalid kernel header');
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
