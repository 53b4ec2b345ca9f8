/**
 * Backups of the state file: the last good states, in `backup/` beside it,
 * as Qubes keeps /var/lib/qubes/backup/qubes-DATE.xml (Qubes copies qubes.xml
 * there at every boot and never removes one).
 *
 * Here a backup is taken each time a state file is opened and loaded
 * without error (after a journal found was folded in, so the copy is
 * complete on its own) and each time an App closes (the state it leaves),
 * unless the newest backup already holds the same bytes: in effect one per
 * daemon run or per tool run that changed something, and one at a start
 * that finds a state changed since (a crash, a hand edit). The newest
 * `keep` are kept, older ones removed.
 *
 * - Named `STEM-ISO8601.xml` (`qubes-2026-12-02T03:51:04.123Z.xml`, UTC, so
 *   names sort by age), mode 0600 in a directory of mode 0700.
 * - Crash-safe: written under a temporary name (`.STEM-backup.tmp-HEX`,
 *   created 0600), fsynced, linked into place (never over another backup),
 *   directory fsynced. A crash leaves a whole backup or none, and at most a
 *   temporary that the next open sweeps.
 * - A copy of bytes, not a hard link: a link shares the inode, so an
 *   in-place edit or truncation of the state file (`> qubes.xml`) would
 *   damage the backup with it.
 * - Never at the expense of a save: a backup is skipped (with a notice)
 *   when the filesystem would keep less than twice the state's size plus
 *   8 MiB free after it, room for the next full rewrite; and a save that
 *   fails for lack of space or quota removes backups, oldest first, and
 *   tries again before it gives up (QubesApp). A backup failing for any
 *   reason only costs the backup (a notice), never the open.
 */
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fsyncDir, lstatOrNull, randomSuffix, sweepAtomicTemps, unlinkIfExists, writeAll } from '../files/files.js';
import { StateDocument } from './state-file.js';

/** Backups kept by default: ten starts of the daemon, or ten runs of the tools after changes. */
export const DEFAULT_STATE_BACKUPS = 10;

/** Free space a backup must leave beyond twice the state's size. */
const BACKUP_RESERVE_BYTES = 8 * 1024 * 1024;

export function backupDirFor(stateFile: string): string {
  return path.join(path.dirname(stateFile), 'backup');
}

/** `p` as one shell word (the restore commands are meant to be pasted). */
function shellWord(p: string): string {
  return /^[A-Za-z0-9_/.:@%+=,-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export class StateBackups {
  readonly dir: string;
  private readonly stem: string;
  private readonly nameRe: RegExp;

  constructor(
    readonly stateFile: string,
    /** How many to keep (0: take none). */
    readonly keep: number,
  ) {
    this.dir = backupDirFor(stateFile);
    this.stem = path.basename(stateFile).replace(/\.xml$/, '');
    this.nameRe = new RegExp(`^${escapeRe(this.stem)}-\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z\\.xml$`);
  }

  /** The backups (full paths), newest first. */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
      throw e;
    }
    return names
      .filter((n) => this.nameRe.test(n))
      .sort()
      .reverse()
      .map((n) => path.join(this.dir, n));
  }

  /** Removes temporaries of backups a crash left (call under the state lock). */
  async sweepTemps(): Promise<string[]> {
    return sweepAtomicTemps(this.tempBase());
  }

  private tempBase(): string {
    return path.join(this.dir, `${this.stem}-backup`);
  }

  /**
   * Copies the state file as it is now into a new backup, unless the newest
   * one holds the same bytes, then removes the backups beyond `keep`.
   * `current`: the file's bytes, when the caller has them as they are now
   * (read at open; it is not read again). Returns a line for the user when
   * no backup could be taken (never throws).
   */
  async take(current?: Buffer): Promise<string | null> {
    if (this.keep <= 0) return null;
    let tmp: string | null = null;
    try {
      const data = current ?? (await fs.readFile(this.stateFile));
      const newest = (await this.list())[0];
      if (newest && (await holdsBytes(newest, data))) return null;
      const room = await fs.statfs(path.dirname(this.stateFile));
      const free = room.bavail * room.bsize;
      const need = 3 * data.length + BACKUP_RESERVE_BYTES;
      if (free < need)
        return `note: no backup of ${this.stateFile} taken: ${free} bytes free on its filesystem, a backup is made only with ${need} (three times the state, and 8 MiB) free, so that saves keep their room`;
      const made = await this.ensureDir();
      if (made) return made;
      tmp = `${path.join(this.dir, `.${this.stem}-backup`)}.tmp-${randomSuffix()}`;
      const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      try {
        await writeAll(fh, data, 0);
        await fh.sync();
      } finally {
        await fh.close();
      }
      // link, not rename: never replaces a backup of the same millisecond.
      for (let t = Date.now(); ; t++) {
        try {
          await fs.link(tmp, path.join(this.dir, `${this.stem}-${new Date(t).toISOString()}.xml`));
          break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
      }
      await unlinkIfExists(tmp);
      tmp = null;
      for (const old of (await this.list()).slice(this.keep)) await unlinkIfExists(old);
      await fsyncDir(this.dir);
      return null;
    } catch (e) {
      if (tmp) await unlinkIfExists(tmp).catch(() => undefined);
      return `note: no backup of ${this.stateFile} taken: ${(e as Error).message}`;
    }
  }

  /** Makes the backup directory (0700) if missing; a line for the user when something else is in its place. */
  private async ensureDir(): Promise<string | null> {
    const st = await lstatOrNull(this.dir);
    if (st) return st.isDirectory() ? null : `note: no backup of ${this.stateFile} taken: ${this.dir} is not a directory`;
    await fs.mkdir(this.dir, { mode: 0o700 });
    await fsyncDir(path.dirname(this.dir));
    return null;
  }

  /** Removes the oldest backup (to give a save its room); false when there is none. */
  async dropOldest(): Promise<boolean> {
    const all = await this.list();
    const oldest = all[all.length - 1];
    if (!oldest) return false;
    await unlinkIfExists(oldest);
    await fsyncDir(this.dir);
    return true;
  }

  /** The newest backup that reads and parses as a state file, or null. */
  async newestReadable(maxBytes: number): Promise<string | null> {
    for (const file of await this.list()) {
      try {
        const st = await fs.stat(file);
        if (!st.isFile() || st.size > maxBytes) continue;
        StateDocument.parse(await fs.readFile(file, 'utf8'), file);
        return file;
      } catch {
        // damaged too: try the next older one
      }
    }
    return null;
  }

  /**
   * How to get a state back, for the error that refuses to open one: the
   * newest readable backup and the commands to put it in place, or what to
   * do without one.
   */
  async restoreAdvice(maxBytes: number, journalFile: string): Promise<string> {
    const f = this.stateFile;
    const backup = await this.newestReadable(maxBytes);
    const aside = [f, journalFile];
    const present: string[] = [];
    for (const p of aside) if (await lstatOrNull(p).catch(() => null)) present.push(p);
    const moveAside = present.map((p) => `mv ${shellWord(p)} ${shellWord(`${p}.broken`)}; `).join('');
    const fresh =
      `To start with a new, empty state instead (the volumes stay on disk, unlisted), ${present.length ? `move ${present.join(' and ')} aside and ` : ''}` +
      `start with --init (qubesd --init; the tools: QUBES_STORAGE_INIT=1).`;
    if (!backup)
      return `No readable backup in ${this.dir}: put back ${f} from a copy of your own. ${fresh}`;
    return (
      `To go back to the newest readable backup, ${backup} (changes made after it are lost), with no qubesd or tool running: ` +
      `${moveAside}cp -p ${shellWord(backup)} ${shellWord(f)}  (older backups: ${this.dir}). ${fresh}`
    );
  }
}

/** Bytes compared at a time (a state of 10,000 domains is ~10 MB: not read into one more buffer of its size). */
const COMPARE_CHUNK = 1024 * 1024;

/** Whether `file` holds exactly `data` (compared a chunk at a time; false when it cannot be read). */
async function holdsBytes(file: string, data: Buffer): Promise<boolean> {
  let fh;
  try {
    fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch {
    return false;
  }
  try {
    if ((await fh.stat()).size !== data.length) return false;
    const buf = Buffer.allocUnsafe(Math.min(COMPARE_CHUNK, data.length));
    for (let at = 0; at < data.length; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, data.length - at), at);
      if (bytesRead === 0 || !buf.subarray(0, bytesRead).equals(data.subarray(at, at + bytesRead))) return false;
      at += bytesRead;
    }
    return true;
  } catch {
    return false;
  } finally {
    await fh.close();
  }
}
