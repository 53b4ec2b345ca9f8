/**
 * The qemu runtime: a domain that runs is a qemu-system-x86_64 process
 * booting the domain's kernel (from its `kernel` volume in the linux-kernel
 * pool) with the domain's volumes as virtio disks, in Qubes' order: root
 * xvda, private xvdb, volatile xvdc, the kernel's modules image xvdd (then
 * any other volume, from xvde), read-only where the volume is. Each disk
 * carries its Qubes name as its serial, so a guest can find it whatever
 * its own naming. Per domain: a QMP socket (BASE/qemu/NAME.qmp), a pid file
 * (BASE/qemu/NAME.pid: pid, start time, domain uuid), the serial console log
 * (BASE/log/NAME.console.log) and qemu's own messages (BASE/log/NAME.qemu.log),
 * both new at each start. No display, no network.
 *
 * The process is the power state: qvm-shutdown asks the guest to power off
 * (ACPI, QMP system_powerdown) and waits up to its shutdown_timeout, then
 * kills it; qvm-kill kills it; a guest that powers off (or a qemu that dies)
 * is reported to the App (`watch`), which stops the storage as a shutdown
 * does. Guests outlive qubesd (as VMs outlive it under Xen): the next
 * qubesd finds them through their pid files (`adopt`) and their domains
 * are Running again; it learns of their end by polling /proc, since they
 * are not its children.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { QubesApp } from '../domain/app.js';
import type { DomainRunner, RunnerDomain } from '../domain/runner.js';
import { writeFileAtomic } from '../files/files.js';
import { QubesException } from '../storage/errors.js';
import type { BlockDevice } from '../storage/volume.js';
import { chooseAccel, type Accel, type AccelChoice, type AccelSetting } from './accel.js';
import { Qmp } from './qmp.js';

/** Where each known volume goes in the guest (Qubes' xvd names); others follow from xvde. */
export const DISK_TARGETS: Readonly<Record<string, string>> = { root: 'xvda', private: 'xvdb', volatile: 'xvdc', kernel: 'xvdd' };
export const QEMU_DIR = 'qemu';
export const LOG_DIR = 'log';
/** Longest unix socket path (sun_path is 108 bytes, with its NUL). */
const MAX_SOCKET_PATH = 107;
/** How long qemu may take to answer on QMP after it was started (a loaded host). */
const START_TIMEOUT_MS = 120_000;
const STDERR_KEEP = 8192;
/** How often a guest found again (not our child: no exit event) is looked at. */
const ADOPTED_POLL_MS = 500;

export type { Accel, AccelSetting } from './accel.js';

export interface QemuRuntimeOptions {
  readonly baseDir: string;
  /** The qemu binary (default: qemu-system-x86_64 from PATH). */
  readonly qemu?: string;
  /** Default auto: KVM where a probe guest runs under it, else TCG (accel.ts); decided at the first start. */
  readonly accel?: AccelSetting;
  /** Where `auto` looks for KVM (default /dev/kvm). */
  readonly devKvm?: string;
  /** Lines for the log (which accelerator, and why). */
  readonly notice?: (line: string) => void;
}

/** One disk as the guest gets it. */
export interface GuestDisk {
  readonly volume: string;
  readonly target: string;
  readonly path: string;
  readonly readOnly: boolean;
}

/** What a start needs, from the domain and its volumes. */
export interface BootPlan {
  readonly name: string;
  readonly kernelDir: string;
  readonly disks: readonly GuestDisk[];
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly kernelopts: string;
}

class StartError extends QubesException {}

/** `,` doubled: qemu's option syntax. */
const optValue = (s: string): string => s.replaceAll(',', ',,');

/**
 * The disks in guest order, and the kernel directory. The kernel volume's
 * device is its modules image (a file, attached) or, without one, its
 * version directory (only the kernel comes from it). Throws, naming the
 * volume, for a device path that does not exist or is neither a regular
 * file nor a block device.
 */
export async function planDisks(domain: string, devices: ReadonlyMap<string, BlockDevice>): Promise<{ disks: GuestDisk[]; kernelDir: string | null }> {
  const known: GuestDisk[] = [];
  const others: GuestDisk[] = [];
  let kernelDir: string | null = null;
  for (const [volume, dev] of devices) {
    if (dev.path.startsWith('rbd:')) {
      // qemu's own rbd driver opens the image (no local map); whether it can is qemu's answer at the start.
      const target = DISK_TARGETS[volume];
      (target ? known : others).push({ volume, target: target ?? '', path: dev.path, readOnly: !dev.rw });
      continue;
    }
    let st;
    try {
      st = await fs.stat(dev.path);
    } catch (e) {
      throw new StartError(`domain ${domain}: volume ${volume} cannot be attached: ${dev.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (volume === 'kernel') {
      kernelDir = st.isDirectory() ? dev.path : path.dirname(dev.path);
      if (st.isDirectory()) continue;
    }
    if (!st.isFile() && !st.isBlockDevice())
      throw new StartError(`domain ${domain}: volume ${volume} cannot be attached: ${dev.path} is neither a file nor a block device`);
    const target = DISK_TARGETS[volume];
    const disk = { volume, target: target ?? '', path: dev.path, readOnly: !dev.rw };
    (target ? known : others).push(disk);
  }
  known.sort((a, b) => a.target.localeCompare(b.target));
  const used = new Set(known.map((d) => d.target));
  let next = 'e'.charCodeAt(0);
  const rest = others.map((d) => {
    while (used.has(`xvd${String.fromCharCode(next)}`)) next++;
    if (next > 'z'.charCodeAt(0)) throw new StartError(`domain ${domain}: too many volumes to attach`);
    return { ...d, target: `xvd${String.fromCharCode(next++)}` };
  });
  return { disks: [...known, ...rest], kernelDir };
}

/** qemu's drive id for a volume: its name where qemu takes it, so qemu's errors name the volume. */
export function driveId(d: GuestDisk): string {
  return /^[A-Za-z][A-Za-z0-9_-]{0,30}$/.test(d.volume) ? `disk-${d.volume}` : `disk-${d.target}`;
}

/** The command line (after the binary) for a plan. */
export function qemuArgs(plan: BootPlan, files: { console: string; qmp: string }, accel: Accel): string[] {
  const args = [
    '-name', plan.name,
    '-nodefaults', '-no-user-config', '-display', 'none', '-nic', 'none', '-no-reboot',
    '-machine', `q35,accel=${accel}`, '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-smp', String(plan.vcpus), '-m', String(plan.memoryMiB),
    '-kernel', path.join(plan.kernelDir, 'vmlinuz'), '-initrd', path.join(plan.kernelDir, 'initramfs'),
    '-append', ['console=ttyS0', 'panic=-1', 'loglevel=4', plan.kernelopts].filter(Boolean).join(' '),
    '-chardev', `file,id=console,path=${optValue(files.console)}`, '-serial', 'chardev:console',
    '-chardev', `socket,id=qmp,path=${optValue(files.qmp)},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control',
  ];
  for (const d of plan.disks) {
    const id = driveId(d);
    args.push(
      '-drive', `file=${optValue(d.path)},format=raw,if=none,id=${id},readonly=${d.readOnly ? 'on' : 'off'}`,
      '-device', `virtio-blk-pci,drive=${id},serial=${d.target}`,
    );
  }
  return args;
}

interface Guest {
  readonly pid: number;
  readonly qmp: string;
  readonly pidFile: string;
  /** Resolves when the process has ended. */
  readonly ended: Promise<void>;
}

export interface QemuRuntime {
  readonly runner: DomainRunner;
  /**
   * Finds the guests an earlier qubesd on this base directory left running
   * (their pid files) and marks their domains Running again; a qemu whose
   * domain is gone (or another one now) is killed.
   */
  adopt(app: QubesApp, notice: (line: string) => void): Promise<void>;
  /** Stops watching: the guests go on running, for the next qubesd to find. */
  close(): void;
}

function intProp(d: RunnerDomain, name: string, min: number): number {
  const v = Number(d.prop(name));
  return Number.isInteger(v) && v >= min ? v : min;
}

/** The qemu binary: `bin` itself when it names a path, else found on PATH (and /usr/bin, /usr/local/bin); null when none is executable. */
export async function findQemu(bin = 'qemu-system-x86_64', env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  if (bin.includes('/')) return (await isExecutable(bin)) ? bin : null;
  for (const dir of (env['PATH'] ?? '/usr/bin:/bin').split(':').concat(['/usr/bin', '/usr/local/bin'])) {
    if (!dir) continue;
    const p = path.join(dir, bin);
    if (await isExecutable(p)) return p;
  }
  return null;
}

async function isExecutable(p: string): Promise<boolean> {
  try {
    await fs.access(p, fs.constants.X_OK);
    return (await fs.stat(p)).isFile();
  } catch {
    return false;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** How long one QMP exchange may take (a qemu that stopped answering is then killed or waited out). */
const QMP_TIMEOUT_MS = 10_000;

/** Connects to QMP, runs one command, disconnects; rejects after QMP_TIMEOUT_MS (the connection is closed then too). */
async function qmpCommand(socket: string, command: string): Promise<unknown> {
  let done = false;
  let q: Qmp | null = null;
  let timer: NodeJS.Timeout | undefined;
  const exchange = (async () => {
    const c = await Qmp.connect(socket);
    q = c;
    if (done) c.close();
    return c.execute(command);
  })();
  try {
    return await Promise.race([
      exchange,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`QMP ${command}: no answer`)), QMP_TIMEOUT_MS))),
    ]);
  } finally {
    done = true;
    clearTimeout(timer);
    exchange.catch(() => undefined);
    (q as Qmp | null)?.close();
  }
}

export async function qemuRuntime(opts: QemuRuntimeOptions): Promise<QemuRuntime> {
  const bin = await findQemu(opts.qemu);
  if (!bin) throw new QubesException(`runtime qemu: ${opts.qemu ?? 'qemu-system-x86_64'} not found (Debian package qemu-system-x86)`);
  const accelSetting = opts.accel ?? 'auto';
  // Decided once, at the first start (the probe boots that domain's kernel), and kept for this daemon.
  let accelChoice: Promise<AccelChoice> | null = null;
  const accelFor = (kernelDir: string): Promise<AccelChoice> =>
    (accelChoice ??= chooseAccel(accelSetting, {
      qemu: bin,
      vmlinuz: path.join(kernelDir, 'vmlinuz'),
      ...(opts.devKvm ? { devKvm: opts.devKvm } : {}),
    }).then((c) => {
      opts.notice?.(`qemu runtime: guests run under ${c.accel} (${c.why})`);
      return c;
    }));
  const qemuDir = path.join(opts.baseDir, QEMU_DIR);
  const logDir = path.join(opts.baseDir, LOG_DIR);
  const guests = new Map<string, Guest>();
  let exited: ((name: string) => Promise<void>) | null = null;
  let closed = false;

  const filesOf = (name: string) => ({
    qmp: path.join(qemuDir, `${name}.qmp`),
    pidFile: path.join(qemuDir, `${name}.pid`),
    console: path.join(logDir, `${name}.console.log`),
    qemuLog: path.join(logDir, `${name}.qemu.log`),
  });

  /** What qemu said last (its own log: stderr goes to a file, so a guest never depends on a pipe to this process). */
  const qemuSaid = async (name: string): Promise<string> => {
    const text = await fs.readFile(filesOf(name).qemuLog, 'utf8').catch(() => '');
    return text.slice(-STDERR_KEEP).trim().split('\n').slice(-3).join(' ').trim();
  };

  /** Waits until qemu answers on QMP (it opened every disk by then), or fails with what qemu said. */
  const waitReady = async (name: string, g: Guest, disks: readonly GuestDisk[]): Promise<void> => {
    let ended = false;
    void g.ended.then(() => (ended = true));
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (ended) {
        const said = await qemuSaid(name);
        const bad = disks.find((d) => said.includes(`id=${driveId(d)}`) || said.includes(`drive=${driveId(d)}`) || said.includes(`'${driveId(d)}'`) || said.includes(d.path));
        if (bad) throw new StartError(`domain ${name}: volume ${bad.volume} cannot be attached (${bad.path}): ${said}`);
        throw new StartError(`domain ${name}: qemu ended at start: ${said || 'no message'}`);
      }
      if (Date.now() > deadline) throw new StartError(`domain ${name}: qemu did not answer on ${g.qmp} within ${START_TIMEOUT_MS / 1000} s`);
      try {
        await qmpCommand(g.qmp, 'query-status');
        return;
      } catch {
        await sleep(100);
      }
    }
  };

  const killGuest = async (g: Guest): Promise<void> => {
    try {
      process.kill(g.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await g.ended;
  };

  /**
   * Tracks a guest: when its qemu ends, the App hears of it and stops the
   * storage; its pid file goes after that (`stopped`), so a qubesd that
   * dies in between leaves it for the next one to finish the stop.
   */
  const track = (name: string, g: Guest): void => {
    guests.set(name, g);
    void g.ended.then(async () => {
      if (closed) return; // the next qubesd's to see
      if (guests.get(name) === g) guests.delete(name);
      await exited?.(name);
    });
  };

  /** The record of a run that is over: its pid file (last: it says a stop may be owed) and QMP socket. */
  const forget = async (name: string): Promise<void> => {
    const files = filesOf(name);
    await fs.rm(files.qmp, { force: true });
    await fs.rm(files.pidFile, { force: true });
  };

  /** Resolves when process `pid` (started at `start`) is gone, or a zombie; polled (it may not be our child). */
  const endOf = (pid: number, start: string): Promise<void> =>
    new Promise<void>((resolve) => {
      const check = (): void => {
        void procStart(pid).then((now) => {
          if (now !== start) resolve();
          else if (!closed) setTimeout(check, ADOPTED_POLL_MS);
        });
      };
      check();
    });

  const runner: DomainRunner = {
    async start(d, devices) {
      if (guests.has(d.name)) throw new StartError(`domain ${d.name}: its qemu (pid ${guests.get(d.name)!.pid}) is still running`);
      const { disks, kernelDir } = await planDisks(d.name, devices);
      if (!kernelDir)
        throw new StartError(`domain ${d.name} has no kernel (property kernel is empty); the qemu runtime boots only kernels of the linux-kernel pool`);
      const files = filesOf(d.name);
      if (Buffer.byteLength(files.qmp) > MAX_SOCKET_PATH)
        throw new StartError(`domain ${d.name}: the QMP socket path ${files.qmp} is longer than ${MAX_SOCKET_PATH} bytes (use a shorter base directory)`);
      await fs.mkdir(qemuDir, { recursive: true, mode: 0o750 });
      await fs.mkdir(logDir, { recursive: true, mode: 0o750 });
      await fs.rm(files.qmp, { force: true });
      const plan: BootPlan = {
        name: d.name,
        kernelDir,
        disks,
        memoryMiB: intProp(d, 'memory', 32),
        vcpus: intProp(d, 'vcpus', 1),
        kernelopts: typeof d.prop('kernelopts') === 'string' ? (d.prop('kernelopts') as string) : '',
      };
      // The console may hold what the guest says (secrets too): 0600, made here, new (O_EXCL), before qemu opens it.
      await fs.rm(files.console, { force: true });
      await (await fs.open(files.console, 'wx', 0o600)).close();
      const { accel } = await accelFor(kernelDir);
      const log = await fs.open(files.qemuLog, 'w', 0o600);
      let child: ChildProcess;
      try {
        child = spawn(bin, qemuArgs(plan, files, accel), { stdio: ['ignore', 'ignore', log.fd], detached: true });
      } finally {
        await log.close();
      }
      const ended = new Promise<void>((resolve) => {
        child.once('close', () => resolve());
        child.once('error', () => resolve());
      });
      if (child.pid === undefined) {
        await ended;
        throw new StartError(`domain ${d.name}: cannot run ${bin}`);
      }
      const g: Guest = { pid: child.pid, qmp: files.qmp, pidFile: files.pidFile, ended };
      track(d.name, g);
      try {
        // What the next qubesd needs to find it again: the pid, its start time (no reused pid is taken for it), the domain.
        await writeFileAtomic(files.pidFile, `${g.pid} ${await procStart(g.pid)} ${d.uuid}\n`, 0o600);
        await waitReady(d.name, g, disks);
      } catch (e) {
        await killGuest(g);
        await forget(d.name);
        throw e;
      }
    },
    async shutdown(d) {
      const g = guests.get(d.name);
      if (!g) return;
      try {
        await qmpCommand(g.qmp, 'system_powerdown');
      } catch {
        // QMP gone (qemu ending): the wait below sees it end, or kills it
      }
      const timeoutMs = intProp(d, 'shutdown_timeout', 0) * 1000;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        g.ended.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (timedOut) await killGuest(g);
    },
    async kill(d) {
      const g = guests.get(d.name);
      if (g) await killGuest(g);
    },
    watch(cb) {
      exited = cb;
    },
    isRunning(d) {
      return guests.has(d.name);
    },
    async stopped(d) {
      if (!guests.has(d.name)) await forget(d.name);
    },
  };

  return {
    runner,
    async adopt(app, notice) {
      let names: string[];
      try {
        names = (await fs.readdir(qemuDir)).filter((n) => n.endsWith('.pid'));
      } catch {
        return;
      }
      const endedAway: { name: string; pid: number }[] = [];
      for (const n of names) {
        const name = n.slice(0, -'.pid'.length);
        const files = filesOf(name);
        const [pidText, start, uuid] = (await fs.readFile(files.pidFile, 'utf8').catch(() => '')).trim().split(' ');
        const pid = Number(pidText);
        const d = app.findDomain(name);
        // The domain the record is of (same name and uuid; dom0 never runs under qemu), or null.
        const mine = d && d.uuid === uuid && d.klass !== 'AdminVM' ? d : null;
        if (!Number.isInteger(pid) || pid <= 1 || !start) {
          await forget(name);
          continue;
        }
        // Only the very process recorded (same start time) running this domain's qemu (its QMP socket on its command line).
        const cmdline = (await procStart(pid)) === start ? await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '') : '';
        if (!cmdline.includes(`path=${optValue(files.qmp)},`)) {
          // The guest ended while no qubesd ran (or the host rebooted): the stop it was owed is made below.
          if (mine) {
            mine.powerState = 'Running';
            endedAway.push({ name, pid });
          } else await forget(name);
          continue;
        }
        if (mine) {
          track(name, { pid, qmp: files.qmp, pidFile: files.pidFile, ended: endOf(pid, start) });
          mine.powerState = 'Running';
          notice(`domain ${name} is running (qemu pid ${pid}, found again)`);
        } else {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
          await forget(name);
          notice(`killed qemu pid ${pid}, left running for ${name}, which is no longer that domain`);
        }
      }
      // Each stopped as at a shutdown (commit or discard, domain-shutdown); its pid file goes once that is done.
      for (const { name, pid } of endedAway) {
        notice(`domain ${name}: its guest (qemu pid ${pid}) ended while no qubesd ran; stopping its storage as at a shutdown`);
        await exited?.(name);
      }
    },
    close() {
      closed = true;
    },
  };
}

/**
 * Kills (SIGKILL) every qemu that the runtime of `baseDir` recorded and that
 * still runs with that base directory's QMP socket on its command line (a
 * reused pid is left alone), and waits until each is gone: the last resort
 * of a test or a demo whose daemon could not stop its guests.
 */
export async function killRecordedGuests(baseDir: string): Promise<void> {
  const qemuDir = path.join(baseDir, QEMU_DIR);
  for (const f of (await fs.readdir(qemuDir).catch(() => [] as string[])).filter((n) => n.endsWith('.pid'))) {
    const pid = Number((await fs.readFile(path.join(qemuDir, f), 'utf8')).split(' ')[0]);
    if (!(await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(qemuDir)) continue;
    process.kill(pid, 'SIGKILL');
    while ((await procStart(pid)) !== '') await new Promise((r) => setTimeout(r, 100));
  }
}

/** Field 22 of /proc/PID/stat (start time, clock ticks since boot); '' when there is no such process or it is a zombie. */
export async function procStart(pid: number): Promise<string> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields.length < 20 || fields[0] === 'Z' || fields[0] === 'X') return '';
  return fields[19] ?? '';
}
