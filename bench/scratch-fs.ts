// A scratch filesystem for a benchmark scenario: a loop-mounted XFS with
// reflink or ext4 (as root, with its mkfs), else a temporary directory where
// it is, said plainly. Always removed, also on failure or interruption.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';

export interface ScratchFs {
  dir: string;
  kind: string;
  cleanup(): Promise<void>;
}

const PATH = `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin`;
const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { env: { ...process.env, PATH }, stdio: 'pipe' });

interface LoopFs {
  /** mkfs command and its options (the image path is added last). */
  mkfs: [string, ...string[]];
  /** What the scenario's notes say it ran on. */
  kind: string;
}

const XFS: LoopFs = { mkfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'], kind: 'loop-mounted XFS (reflink=1)' };
// One inode per MiB and the tables written at mkfs: no ext4lazyinit thread writing in the background during the run.
const EXT4: LoopFs = {
  mkfs: ['mkfs.ext4', '-q', '-F', '-i', '1048576', '-E', 'lazy_itable_init=0,lazy_journal_init=0'],
  kind: 'loop-mounted ext4 (no reflink)',
};

export function scratchXfs(label: string, sizeGiB: number): Promise<ScratchFs> {
  return scratchLoopFs(label, sizeGiB, XFS);
}

export function scratchExt4(label: string, sizeGiB: number): Promise<ScratchFs> {
  return scratchLoopFs(label, sizeGiB, EXT4);
}

async function scratchLoopFs(label: string, sizeGiB: number, loop: LoopFs): Promise<ScratchFs> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), `qs-bench-${label}-`));
  const rmWork = () => fs.rm(work, { recursive: true, force: true });
  const [mkfs, ...mkfsArgs] = loop.mkfs;
  const canMount = process.getuid?.() === 0 && hasCommand(mkfs);
  if (!canMount) {
    return { dir: work, kind: `directory on ${os.tmpdir()} (not root or no ${mkfs}: not a ${loop.kind})`, cleanup: rmWork };
  }
  const image = path.join(work, 'fs.img');
  const mnt = path.join(work, 'mnt');
  await fs.mkdir(mnt);
  await fs.writeFile(image, '');
  await fs.truncate(image, sizeGiB * 1024 ** 3);
  let mounted = false;
  const cleanup = async () => {
    if (mounted) {
      for (let i = 0; i < 10; i++) {
        try {
          run('umount', [mnt]);
          mounted = false;
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 300));
        }
      }
      if (mounted) run('umount', ['-l', mnt]);
    }
    await rmWork();
  };
  const onSignal = () => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    run(mkfs, [...mkfsArgs, image]);
    run('mount', ['-o', 'loop', image, mnt]);
    mounted = true;
  } catch (e) {
    await cleanup();
    throw e;
  }
  return {
    dir: mnt,
    kind: `${loop.kind}, ${sizeGiB} GiB`,
    cleanup: async () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await cleanup();
    },
  };
}

function hasCommand(cmd: string): boolean {
  try {
    run('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}
