/**
 * The real filesystems driver tests run on, as prepared by
 * scripts/with-test-fs.sh (`npm test`): a loop-mounted XFS with reflink, a
 * loop-mounted btrfs and a directory on the machine's ext4. A filesystem that
 * is not available is skipped with the reason, never silently passed.
 */
import { after, describe } from 'node:test';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

export type TestFsName = 'xfs' | 'btrfs' | 'ext4';

export interface TestFs {
  name: TestFsName;
  /** A directory on that filesystem, or null when it is not available. */
  root: string | null;
  /** Why the filesystem is not available (tests on it are skipped), or null. */
  skip: string | null;
  /** Whether the filesystem makes reflink copies. */
  reflink: boolean;
}

export interface FsContext {
  /** A fresh directory (mode 0700) on the filesystem, removed after the suite. */
  tempDir(label?: string): Promise<string>;
}

/** statfs(2) f_type of each filesystem (ext2, ext3 and ext4 share one). */
const MAGIC: Record<TestFsName, number> = { xfs: 0x58465342, btrfs: 0x9123683e, ext4: 0xef53 };
const REFLINK: Record<TestFsName, boolean> = { xfs: true, btrfs: true, ext4: false };

async function fromEnv(name: TestFsName): Promise<TestFs> {
  const reflink = REFLINK[name];
  const v = `QS_TEST_${name.toUpperCase()}`;
  const root = process.env[v];
  if (!root) {
    const why = process.env[`${v}_SKIP`] ?? (name === 'ext4' ? undefined : process.env['QS_TEST_FS_SKIP']);
    const skip = `${v} not set: ${why ?? 'run the tests through npm test as root'}`;
    // In CI a missing filesystem fails the test file instead of skipping it.
    if (process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: ${skip}`);
    return { name, root: null, reflink, skip };
  }
  // A wrong directory must fail loudly, not test the wrong filesystem.
  const type = (await fs.statfs(root)).type;
  if (type !== MAGIC[name])
    throw new Error(`${v}=${root} is not on ${name} (statfs type 0x${type.toString(16)})`);
  return { name, root, reflink, skip: null };
}

export const TEST_FILESYSTEMS: TestFs[] = await Promise.all((['xfs', 'btrfs', 'ext4'] as const).map(fromEnv));

/** Makes a fresh, unique directory (mode 0700) under `tfs.root`. */
export async function tempDirOn(tfs: TestFs, label: string): Promise<string> {
  if (tfs.root === null) throw new Error(`no ${tfs.name} test filesystem: ${tfs.skip ?? 'root not set'}`);
  const safe = label.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 48) || 'test';
  const dir = await fs.mkdtemp(path.join(tfs.root, `${safe}-`));
  await fs.chmod(dir, 0o700);
  return dir;
}

/** Removes `dir` and everything in it; a missing `dir` is fine. */
export async function removeTree(dir: string): Promise<void> {
  if (!path.isAbsolute(dir) || path.resolve(dir) === path.parse(dir).root)
    throw new Error(`refusing to remove '${dir}'`);
  await fs.rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/**
 * Declares the suite `${title} [${fs.name}]` once per test filesystem; on a
 * missing filesystem the suite is reported as skipped with the reason. `body`
 * only declares tests and hooks (do the work inside them: on a skipped suite
 * `fs.root` is null); directories from `ctx.tempDir` are removed after the
 * suite, also when tests fail.
 */
export function describeEachFs(title: string, body: (fs: TestFs, ctx: FsContext) => void): void {
  for (const tfs of TEST_FILESYSTEMS) {
    describe(`${title} [${tfs.name}]`, { skip: tfs.skip ?? false }, () => {
      const made: string[] = [];
      after(async () => {
        for (const dir of made.splice(0).reverse()) await removeTree(dir);
      });
      body(tfs, {
        async tempDir(label = 'test') {
          const dir = await tempDirOn(tfs, `${title}-${label}`);
          made.push(dir);
          return dir;
        },
      });
    });
  }
}
