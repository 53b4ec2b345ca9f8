/**
 * The exclusive lock on a state file: only one process (and one App in it)
 * may own qubes.xml at a time. Qubes uses flock(2) on `qubes.xml.lock`;
 * Node has no flock, so this is a lock file next to the state file,
 * `FILE.lock`, created atomically and holding the owner's identity:
 *
 *     PID START\n
 *
 * where START is the process start time from /proc/PID/stat (field 22), so a
 * pid reused by an unrelated process is not mistaken for the owner. The file
 * is made complete under a temporary name and hard-linked into place, so it
 * never exists half-written (link(2) fails with EEXIST when it is taken).
 *
 * A lock file whose owner is dead (no such pid, or a different start time)
 * is stale and reclaimed: it is renamed to a private name, checked to be the
 * very file (inode) found stale, and removed; then the lock is taken as
 * usual. Should another process have replaced the file between the check
 * and the rename, its file is linked back and the lock is refused, so two
 * owners never result. A live owner (this process included: a second App on
 * the same file) makes `acquire` fail with QubesException naming the file
 * and the pid. `release` removes the file only while it is still ours.
 *
 * Unlike flock, the lock is not dropped by the kernel when the owner dies;
 * that is what the stale-owner check is for. Without /proc, liveness is
 * judged by kill(pid, 0) alone.
 */
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fsyncDir, randomSuffix, unlinkIfExists } from '../files/files.js';
import { processAlive } from '../files/process.js';
import { QubesException } from '../storage/errors.js';

export class StateLockedError extends QubesException {}

interface Owner {
  pid: number;
  start: string | null;
}

/** The start time of a process (clock ticks since boot), or null when /proc cannot tell. */
// A start time is digits, never 'gone': the union documents the third answer.
// eslint-disable-next-line @typescript-eslint/no-redundant-type-constituents
async function processStart(pid: number): Promise<string | null | 'gone'> {
  let stat: string;
  try {
    stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') {
      // Either the process is gone or there is no /proc: ask the kernel.
      return processAlive(pid) ? null : 'gone';
    }
    return null;
  }
  // Field 2 (comm) may contain spaces and ')': fields after the last ')' are fixed.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return rest[19] ?? null; // field 22 = index 19 after (pid, comm)
}


function parseOwner(text: string): Owner | null {
  const m = /^([1-9][0-9]{0,9})(?: ([0-9]{1,20}|-))?\n?$/.exec(text);
  if (!m) return null;
  return { pid: Number(m[1]), start: m[2] && m[2] !== '-' ? m[2] : null };
}

/** Whether the owner recorded in a lock file still runs. */
async function ownerAlive(o: Owner): Promise<boolean> {
  const start = await processStart(o.pid);
  if (start === 'gone') return false;
  if (start === null || o.start === null) return processAlive(o.pid);
  return start === o.start;
}

/**
 * Temporary files of acquire and reclaimIfStale that a process killed
 * between making and removing them left beside the lock: `.FILE.lock.PID-HEX`
 * and `FILE.lock.stale-PID-HEX`. Only the lock's owner sweeps them (no other
 * process makes them while it holds the lock, except a reclaimer that read
 * the stale lock just before us: its files carry its pid, alive), and only
 * those whose process is gone. A stale-* file of a live reclaimer may hold
 * our own lock for a moment: it is never touched.
 */
async function sweepLockLeftovers(lockFile: string): Promise<void> {
  const dir = path.dirname(lockFile);
  const base = path.basename(lockFile).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const re = new RegExp(`^(?:\\.${base}\\.|${base}\\.stale-)([1-9][0-9]{0,9})-[0-9a-f]{12}$`);
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  let removed = false;
  for (const name of names) {
    const m = re.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    removed = (await unlinkIfExists(path.join(dir, name))) || removed;
  }
  if (removed) await fsyncDir(dir);
}

export class StateLock {
  private constructor(
    readonly lockFile: string,
    private readonly content: string,
    private released = false,
  ) {}

  /** `FILE.lock` for a state file. */
  static pathFor(stateFile: string): string {
    return `${stateFile}.lock`;
  }

  /** Takes the lock of `stateFile` or throws StateLockedError naming the owner. */
  static async acquire(stateFile: string): Promise<StateLock> {
    const lockFile = StateLock.pathFor(stateFile);
    const dir = path.dirname(lockFile);
    const start = await processStart(process.pid);
    const content = `${process.pid} ${typeof start === 'string' ? start : '-'}\n`;
    for (let attempt = 0; attempt < 5; attempt++) {
      // The pid in the name lets the next owner sweep it if we die before the unlink below.
      const tmp = path.join(dir, `.${path.basename(lockFile)}.${process.pid}-${randomSuffix()}`);
      const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      try {
        await fh.writeFile(content);
        await fh.sync();
      } finally {
        await fh.close();
      }
      try {
        await fs.link(tmp, lockFile);
        await fsyncDir(dir);
        await sweepLockLeftovers(lockFile);
        return new StateLock(lockFile, content);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      } finally {
        await unlinkIfExists(tmp);
      }
      await StateLock.reclaimIfStale(stateFile, lockFile);
    }
    throw new StateLockedError(`state file ${stateFile}: could not take the lock ${lockFile} (it keeps changing hands)`);
  }

  /** Removes a stale lock file; throws StateLockedError when its owner lives. */
  private static async reclaimIfStale(stateFile: string, lockFile: string): Promise<void> {
    let st;
    let text: string;
    try {
      st = await fs.lstat(lockFile);
      text = await fs.readFile(lockFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // released meanwhile: try again
      throw e;
    }
    const owner = parseOwner(text);
    if (!owner)
      throw new StateLockedError(
        `state file ${stateFile} is locked: lock file ${lockFile} has unexpected content; remove it if no qubesd runs`,
      );
    if (await ownerAlive(owner))
      throw new StateLockedError(
        `state file ${stateFile} is in use by process ${owner.pid}${owner.pid === process.pid ? ' (this process)' : ''} (lock file ${lockFile})`,
      );
    const aside = `${lockFile}.stale-${process.pid}-${randomSuffix()}`;
    try {
      await fs.rename(lockFile, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    const moved = await fs.lstat(aside);
    if (moved.ino !== st.ino || moved.dev !== st.dev) {
      // Someone took the lock between our check and the rename: give it back.
      await fs.link(aside, lockFile).catch(() => undefined);
      await unlinkIfExists(aside);
      throw new StateLockedError(`state file ${stateFile} is in use by another process (lock file ${lockFile})`);
    }
    await unlinkIfExists(aside);
  }

  /** Removes the lock file if it is still ours. Idempotent. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const text = await fs.readFile(this.lockFile, 'utf8').catch(() => null);
    if (text === this.content) await unlinkIfExists(this.lockFile);
  }
}
