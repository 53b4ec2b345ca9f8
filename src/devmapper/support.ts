/**
 * Whether this host can encrypt a volume with dm-crypt, and if not, why, in
 * words a user can act on. Read from the kernel's own files (no module is
 * loaded, nothing is changed), once per process: a kernel does not gain or
 * lose device-mapper while it runs, and installing dmsetup is followed by a
 * restart of the daemon.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import { findTool } from './tools.js';

export type DmCryptSupport = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** Whether the running kernel has device-mapper (its control device is registered). */
export async function kernelHasDeviceMapper(): Promise<boolean> {
  const misc = await fs.readFile('/proc/misc', 'utf8').catch(() => '');
  return /^\s*\d+\s+device-mapper$/m.test(misc);
}

/** dm-crypt loaded, built in, or among the kernel's modules (the kernel loads it on first use). */
async function kernelHasDmCrypt(): Promise<boolean> {
  if (await exists('/sys/module/dm_crypt')) return true;
  const dir = `/lib/modules/${os.release()}`;
  for (const index of ['modules.builtin', 'modules.dep']) {
    const text = await fs.readFile(`${dir}/${index}`, 'utf8').catch(() => '');
    if (/(^|\/)dm-crypt\.ko(\.[a-z]+)?(:|$)/m.test(text)) return true;
  }
  return false;
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

async function probe(): Promise<DmCryptSupport> {
  const no = (reason: string): DmCryptSupport => ({ ok: false, reason });
  if (!(await kernelHasDeviceMapper())) return no('the kernel has no device-mapper');
  if (!(await kernelHasDmCrypt())) return no('the kernel has no dm-crypt target (module dm-crypt)');
  if (!(await findTool('dmsetup'))) return no('dmsetup is not installed (Debian package dmsetup)');
  if (process.geteuid?.() !== 0) return no('device-mapper needs root, and this process does not run as root');
  return { ok: true };
}

let cached: Promise<DmCryptSupport> | undefined;

/** This host's answer, worked out on the first call. */
export function dmCryptSupport(): Promise<DmCryptSupport> {
  return (cached ??= probe());
}

let dmPresent: Promise<boolean> | undefined;

/** Whether device-mapper mappings can exist here at all (else there is nothing to look for). */
export function deviceMapperPresent(): Promise<boolean> {
  return (dmPresent ??= kernelHasDeviceMapper());
}
