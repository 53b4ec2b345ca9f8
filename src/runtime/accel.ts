/**
 * Which accelerator the qemu runtime's guests run under. `tcg` and `kvm`
 * are taken as told; `auto` (the default) uses KVM only where it really runs
 * a guest: /dev/kvm must open read-write, and a probe guest must run there.
 * On some hosts /dev/kvm opens but a guest hangs (nested virtualisation), so
 * the probe is a real boot with a short deadline: the domain's own kernel,
 * no initramfs and no root device, so that any Linux kernel boots until it
 * panics ("Kernel panic - not syncing: VFS: Unable to mount root fs"), and
 * `panic=-1` with `-no-reboot` then ends qemu (exit 0). Under KVM that takes
 * well under a second; a guest that has not got there within the deadline
 * is taken to hang and is killed. The qemu runtime asks once per daemon, at
 * the first start (src/runtime/README.md).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';

export type Accel = 'tcg' | 'kvm';
export const ACCEL_SETTINGS = ['auto', 'tcg', 'kvm'] as const;
export type AccelSetting = (typeof ACCEL_SETTINGS)[number];

/** How long a probe guest may take to reach its kernel panic under KVM. */
export const KVM_PROBE_TIMEOUT_MS = 5_000;
const KEEP = 4096;

export interface AccelChoice {
  readonly accel: Accel;
  /** Why, for the log: `auto: ...` or the setting's name. */
  readonly why: string;
}

/**
 * Boots `vmlinuz` under `accel` with no root device and waits until the
 * guest's kernel panics and qemu ends; null when it did within `timeoutMs`,
 * else why not (qemu's own words, or the deadline).
 */
export async function probeGuest(qemu: string, accel: Accel, vmlinuz: string, timeoutMs: number): Promise<string | null> {
  const args = [
    '-nodefaults', '-no-user-config', '-display', 'none', '-nic', 'none', '-no-reboot',
    '-machine', `q35,accel=${accel}`, '-cpu', accel === 'kvm' ? 'host' : 'max', '-m', '128',
    '-kernel', vmlinuz, '-append', 'console=ttyS0 panic=-1 loglevel=4 root=/dev/qs-no-root',
    '-serial', 'stdio', '-monitor', 'none',
  ];
  const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let console = '';
  let said = '';
  child.stdout!.setEncoding('latin1').on('data', (d: string) => (console = (console + d).slice(-KEEP)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (said = (said + d).slice(-KEEP)));
  let timer: NodeJS.Timeout | undefined;
  const ended = new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(null));
    child.once('close', (code) => resolve(code));
  });
  const timedOut = await Promise.race([
    ended.then(() => false),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    child.kill('SIGKILL');
    await ended;
    return `a probe guest did not reach its kernel panic within ${timeoutMs / 1000} s under ${accel} (the guest hangs)`;
  }
  const code = await ended;
  const last = said.trim().split('\n').pop() ?? '';
  if (code !== 0) return `a probe guest did not run under ${accel}: qemu exited ${code ?? 'without starting'}${last ? `: ${last}` : ''}`;
  if (!console.includes('Kernel panic')) return `a probe guest ended under ${accel} without its kernel running`;
  return null;
}

/**
 * The accelerator for `setting`: for `auto`, KVM when `devKvm` opens
 * read-write and a probe guest of `vmlinuz` runs under KVM, else TCG;
 * `why` says which test decided.
 */
export async function chooseAccel(
  setting: AccelSetting,
  probe: { readonly qemu: string; readonly vmlinuz: string; readonly devKvm?: string; readonly timeoutMs?: number },
): Promise<AccelChoice> {
  if (setting !== 'auto') return { accel: setting, why: `QUBES_STORAGE_QEMU_ACCEL=${setting}` };
  const devKvm = probe.devKvm ?? '/dev/kvm';
  try {
    await (await fs.open(devKvm, 'r+')).close();
  } catch (e) {
    return { accel: 'tcg', why: `auto: ${devKvm} cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` };
  }
  const timeoutMs = probe.timeoutMs ?? KVM_PROBE_TIMEOUT_MS;
  const failed = await probeGuest(probe.qemu, 'kvm', probe.vmlinuz, timeoutMs);
  if (failed) return { accel: 'tcg', why: `auto: ${devKvm} opens but ${failed}` };
  return { accel: 'kvm', why: `auto: a probe guest (${probe.vmlinuz}) ran under KVM` };
}
