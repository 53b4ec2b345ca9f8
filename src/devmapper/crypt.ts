/**
 * Throw-away dm-crypt mappings: a file or block device seen through
 * dm-crypt with a random key that exists only in this process's memory
 * (until the kernel has it) and in the kernel. What is written through the
 * mapping reaches the backing store encrypted; once the mapping is removed
 * the key is gone and the data with it. Qubes encrypts `ephemeral` volatile
 * volumes this way (plain dm-crypt, aes-xts-plain64, a key from the kernel's
 * random source, the first 64 KiB zeroed so the domain finds no stale
 * signature there).
 *
 * The key never appears on a command line (argv is world-readable in
 * /proc/PID/cmdline) nor in a file: the table that carries it goes to
 * `dmsetup create` through its stdin, built in a buffer that is wiped as
 * soon as dmsetup has exited, as is the key's own buffer.
 *
 * A file is attached to a loop device first (`losetup`); the mapping's
 * device-mapper UUID says so (QS-EPH-LOOP-...), so whoever removes the
 * mapping, this process or the next one after a crash, detaches that loop
 * device too, and only that one. Mappings are named `qs-eph-` and 32 hex
 * digits; anything else, and a `qs-eph-` mapping without our UUID, is never
 * touched.
 */
import { createHash, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { runTool } from './tools.js';

export const MAPPING_PREFIX = 'qs-eph-';
const UUID_PREFIX = 'QS-EPH-';
const LOOP_UUID_PREFIX = `${UUID_PREFIX}LOOP-`;
const NAME_RE = /^qs-eph-[0-9a-f]{32}$/;
/** AES-256 in XTS mode takes two 256-bit keys. */
const KEY_BYTES = 64;
const CIPHER = 'aes-xts-plain64';
/** Zeroed through the mapping after it is made: the domain reads no random "partition table". */
const ZEROED_AT_START = 64 * 1024;

const FP = {
  afterLoop: declareFailpoint('ephemeral.open.after-loop'),
  afterCreate: declareFailpoint('ephemeral.open.after-create'),
};

/** The mapping's name for an identity (anything that tells one volume from every other on this host). */
export function cryptMappingName(identity: string): string {
  return MAPPING_PREFIX + createHash('sha256').update(identity).digest('hex').slice(0, 32);
}

/** Where the mapping's device node is. */
export function mappingPath(name: string): string {
  checkName(name);
  return `/dev/mapper/${name}`;
}

function checkName(name: string): void {
  if (!NAME_RE.test(name)) throw new Error(`not an ephemeral mapping name: ${JSON.stringify(name).slice(0, 80)}`);
}

/** Every device-mapper device the kernel has: its name and its sysfs directory. */
async function kernelMappings(): Promise<{ name: string; sys: string }[]> {
  const out: { name: string; sys: string }[] = [];
  for (const dev of await fs.readdir('/sys/block').catch(() => [] as string[])) {
    if (!/^dm-[0-9]+$/.test(dev)) continue;
    const name = (await fs.readFile(`/sys/block/${dev}/dm/name`, 'utf8').catch(() => '')).trim();
    if (name) out.push({ name, sys: `/sys/block/${dev}` });
  }
  return out;
}

/** The names of the `qs-eph-` mappings present, as the kernel lists them. */
export async function listCryptMappings(): Promise<string[]> {
  return (await kernelMappings()).map((m) => m.name).filter((n) => NAME_RE.test(n));
}

/** The sysfs directory of the device a node is, when it is the mapping `name` (a stale node is not). */
async function nodeSysDir(name: string): Promise<string | null> {
  const st = await fs.stat(mappingPath(name)).catch(() => null);
  if (!st?.isBlockDevice()) return null;
  const sys = sysBlock(st);
  const named = (await fs.readFile(`${sys}/dm/name`, 'utf8').catch(() => '')).trim();
  return named === name ? sys : null;
}

/** The mapping's sysfs directory, found by its node or else by the kernel's list; null when there is none. */
async function mappingSysDir(name: string): Promise<string | null> {
  return (await nodeSysDir(name)) ?? (await kernelMappings()).find((m) => m.name === name)?.sys ?? null;
}

/**
 * Where udev runs, its rules make and remove the nodes under /dev/mapper
 * (dmsetup waits for it). Without udev (an initramfs, a container, the test
 * VM) libdevmapper still leaves them to udev: `dmsetup mknodes NAME` then
 * makes the node of a new mapping and removes that of a removed one.
 */
async function syncNodeWithoutUdev(name: string): Promise<void> {
  const udev = await fs.access('/run/udev/control').then(
    () => true,
    () => false,
  );
  if (!udev) await runTool('dmsetup', ['mknodes', name]);
}

/** The mapping's device node when it exists, else null. */
export async function existingMapping(name: string): Promise<string | null> {
  return (await nodeSysDir(name)) ? mappingPath(name) : null;
}

const sysBlock = (st: Stats): string => `/sys/dev/block/${major(st.rdev)}:${minor(st.rdev)}`;
// Linux's dev_t encoding (glibc's gnu_dev_major/minor).
const major = (dev: number): number => Number((BigInt(dev) >> 8n) & 0xfffn) | Number((BigInt(dev) >> 32n) & ~0xfffn);
const minor = (dev: number): number => Number(BigInt(dev) & 0xffn) | Number((BigInt(dev) >> 12n) & ~0xffn);

/**
 * Maps `backing` (a regular file, through a loop device, or a block device)
 * as `name` with a fresh random key; returns the mapping's device path. On
 * failure nothing it made is left (mapping, loop device).
 */
export async function openCryptMapping(name: string, backing: string): Promise<string> {
  const path = mappingPath(name);
  const st = await fs.stat(backing).catch(() => null);
  if (!st) throw new Error(`${backing} is not a file or block device on this host`);
  let loop: string | null = null;
  if (st.isFile()) loop = await attachLoop(backing);
  else if (!st.isBlockDevice()) throw new Error(`${backing} is not a file or block device on this host`);
  try {
    failpoint(FP.afterLoop);
    const dev = await fs.stat(loop ?? backing);
    const sectors = Number((await fs.readFile(`${sysBlock(dev)}/size`, 'utf8')).trim());
    if (!Number.isSafeInteger(sectors) || sectors <= 0) throw new Error(`${loop ?? backing} is empty: nothing to encrypt`);
    const uuid = (loop ? LOOP_UUID_PREFIX : UUID_PREFIX) + name.slice(MAPPING_PREFIX.length);
    const table = cryptTable(sectors, `${major(dev.rdev)}:${minor(dev.rdev)}`);
    try {
      await runTool('dmsetup', ['create', name, '--uuid', uuid], { input: table });
    } finally {
      table.fill(0);
    }
    await syncNodeWithoutUdev(name);
    failpoint(FP.afterCreate);
    await zeroStart(path, sectors * 512);
    return path;
  } catch (e) {
    await closeCryptMapping(name).catch(() => undefined);
    if (loop && (await mappingSysDir(name).catch(() => 'unknown')) === null) await detachLoop(loop).catch(() => undefined);
    throw e;
  }
}

/**
 * A dm-crypt table line with a new random key, in a buffer the caller wipes:
 * `0 SECTORS crypt aes-xts-plain64 HEXKEY 0 MAJ:MIN 0`. The key is written
 * in hex straight into the buffer (no string holds it) and its own buffer
 * wiped at once.
 */
function cryptTable(sectors: number, device: string): Buffer {
  const key = Buffer.alloc(KEY_BYTES); // not from Buffer's shared pool, which keeps freed bytes around
  randomFillSync(key);
  const head = `0 ${sectors} crypt ${CIPHER} `;
  const tail = ` 0 ${device} 0\n`;
  const table = Buffer.alloc(head.length + KEY_BYTES * 2 + tail.length);
  let at = table.write(head, 0, 'latin1');
  const hex = '0123456789abcdef';
  for (let i = 0; i < KEY_BYTES; i++) {
    table[at++] = hex.charCodeAt(key[i]! >> 4);
    table[at++] = hex.charCodeAt(key[i]! & 15);
  }
  key.fill(0);
  table.write(tail, at, 'latin1');
  return table;
}

async function zeroStart(path: string, size: number): Promise<void> {
  const fh = await fs.open(path, 'r+');
  try {
    await fh.write(Buffer.alloc(Math.min(ZEROED_AT_START, size)), 0, undefined, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Removes the mapping `name` if it exists, and the loop device under it when
 * it was made for it; true if there was one. A device of that name that is
 * not one of ours (another UUID) is refused, never removed. A mapping still
 * open (a domain using it) fails to go: the error says so.
 */
export async function closeCryptMapping(name: string): Promise<boolean> {
  const sys = await mappingSysDir(name);
  if (!sys) return false;
  const uuid = (await fs.readFile(`${sys}/dm/uuid`, 'utf8').catch(() => '')).trim();
  if (!uuid.startsWith(UUID_PREFIX)) throw new Error(`mapping ${name} is not an ephemeral mapping of ours (uuid '${uuid.slice(0, 64)}'); left alone`);
  const under = await fs.readdir(`${sys}/slaves`).catch(() => [] as string[]);
  await runTool('dmsetup', ['remove', '--retry', name]);
  await syncNodeWithoutUdev(name);
  if (uuid.startsWith(LOOP_UUID_PREFIX)) for (const dev of under) if (/^loop[0-9]+$/.test(dev)) await detachLoop(`/dev/${dev}`);
  return true;
}

async function attachLoop(file: string): Promise<string> {
  const out = (await runTool('losetup', ['--find', '--show', '--', file])).trim();
  if (!/^\/dev\/loop[0-9]+$/.test(out)) throw new Error(`losetup named no loop device: '${out.slice(0, 80)}'`);
  return out;
}

async function detachLoop(dev: string): Promise<void> {
  await runTool('losetup', ['--detach', dev]);
}

/**
 * Detaches the loop devices that show `file` (at its real path, deleted or
 * not) and that nothing holds: what a crash between `losetup` and
 * `dmsetup create` leaves. One a mapping or anything else holds is left.
 */
export async function detachStaleLoops(file: string): Promise<number> {
  if (!file.startsWith('/')) return 0;
  const real = await fs.realpath(file).catch(() => file);
  let detached = 0;
  for (const dev of await fs.readdir('/sys/block').catch(() => [] as string[])) {
    if (!/^loop[0-9]+$/.test(dev)) continue;
    // A loop device attached to nothing has no backing_file.
    const shows = (await fs.readFile(`/sys/block/${dev}/loop/backing_file`, 'utf8').catch(() => '')).replace(/\n$/, '');
    if (!shows || (shows !== real && shows !== `${real} (deleted)`)) continue;
    if ((await fs.readdir(`/sys/block/${dev}/holders`).catch(() => ['?'])).length) continue;
    await detachLoop(`/dev/${dev}`);
    detached++;
  }
  return detached;
}
