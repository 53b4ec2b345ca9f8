/**
 * The small loop-mounted filesystems that scripts/with-test-fs.sh makes for
 * tests that fill a filesystem to the last block (QS_TEST_SMALL_XFS, 320M,
 * reflink; QS_TEST_SMALL_EXT4, 48M, no reflink), and how to fill one.
 *
 * Test files run in parallel, and a file that fills one of these would make
 * another's writes fail: a suite declared with describeEachSmallFs holds the
 * filesystem for itself (an exclusive lock file on it, taken before its
 * first test, released after its last; a dead holder's lock is taken over).
 */
import { after, before, describe } from 'node:test';
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { processAlive } from '../../src/files/process.js';
import { MiB } from './data.js';

export interface SmallFs {
  /** `small-xfs` or `small-ext4`. */
  name: string;
  /** A directory on it (the mount point), or undefined when it is missing. */
  root: string | undefined;
  reflink: boolean;
}

export const SMALL_FILESYSTEMS: SmallFs[] = [
  { name: 'small-xfs', env: 'QS_TEST_SMALL_XFS', reflink: true },
  { name: 'small-ext4', env: 'QS_TEST_SMALL_EXT4', reflink: false },
].map(({ name, env, reflink }) => {
  const root = process.env[env];
  // In CI a missing filesystem fails the test file instead of skipping it.
  if (!root && process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: ${env} not set`);
  return { name, root, reflink };
});

const LOCK = '.qs-test-exclusive';


/** Takes the filesystem at `root` for this process: waits while another live process holds it. */
export async function holdFs(root: string): Promise<void> {
  const lock = path.join(root, LOCK);
  for (;;) {
    try {
      const fh = await fs.open(lock, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number((await fs.readFile(lock, 'utf8').catch(() => '')).trim());
    // An empty file is a holder between its open and its write: wait for it too.
    if (Number.isSafeInteger(holder) && holder > 0 && !processAlive(holder)) await fs.rm(lock, { force: true });
    else await new Promise((r) => setTimeout(r, 200));
  }
}

export async function releaseFs(root: string): Promise<void> {
  const lock = path.join(root, LOCK);
  if ((await fs.readFile(lock, 'utf8').catch(() => '')).trim() === String(process.pid)) await fs.rm(lock, { force: true });
}

/**
 * Declares `${title} [small-xfs]` and `[small-ext4]`, each holding its
 * filesystem for the whole suite; skipped with the reason where it is missing.
 */
export function describeEachSmallFs(title: string, body: (small: SmallFs & { root: string }) => void): void {
  for (const small of SMALL_FILESYSTEMS) {
    const skip = small.root ? false : `${title}: ${small.name} not set up: run through scripts/with-test-fs.sh as root`;
    describe(`${title} [${small.name}]`, { skip }, () => {
      if (!small.root) return;
      const root = small.root;
      before(() => holdFs(root));
      after(() => releaseFs(root));
      body({ ...small, root });
    });
  }
}

/**
 * Fills the filesystem of `dir` with data until the kernel refuses a single
 * block: files written with non-zero data until ENOSPC, again in a new file
 * after each close (XFS hands back its speculative preallocation at close),
 * until a new file takes less than 64 KiB (or cannot even be made). Adds the
 * files to `into` (remove them to free the space). Quick when already full.
 * With `slack`, that many bytes are then freed again: new files can be made
 * (as on most full disks), writing MiBs of data still cannot.
 */
export async function fillFilesystem(dir: string, into: string[], slack = 0): Promise<void> {
  await fillData(dir, into);
  if (slack > 0) {
    const big = into[0]!;
    const { size } = await fs.stat(big);
    await fs.truncate(big, Math.max(0, size - slack));
  }
}

async function fillData(dir: string, into: string[]): Promise<void> {
  for (let round = 0; round < 20; round++) {
    const file = path.join(dir, `filler-${into.length}`);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(file, 'wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return; // not even an inode left
      throw e;
    }
    into.push(file);
    let pos = 0;
    try {
      for (const chunk of [MiB, 64 * 1024, 4096, 512]) {
        const buf = Buffer.alloc(chunk, 0x5a);
        for (;;) {
          try {
            const { bytesWritten } = await fh.write(buf, 0, chunk, pos);
            pos += bytesWritten;
            if (bytesWritten < chunk) break;
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
            throw e;
          }
        }
      }
      await fh.sync().catch(() => undefined);
    } finally {
      await fh.close();
    }
    if (pos < 64 * 1024) return;
  }
  throw new Error(`could not fill the filesystem of ${dir}`);
}

/** Removes the files `fillFilesystem` made (and empties the list). */
export async function unfill(files: string[]): Promise<void> {
  for (const f of files.splice(0)) await fs.rm(f, { force: true });
}
