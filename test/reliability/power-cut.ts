/**
 * The power-loss campaign's own filesystem: a sparse image on the root
 * filesystem, a loop device, a mount point under a fresh mkdtemp directory.
 * `cut()` shuts the filesystem down without flushing its log (what was not
 * made durable is lost, as in a power cut: xfstests' way), `remount()`
 * unmounts and mounts again (log recovery). Only what this object made is
 * ever unmounted or detached; `dispose()` (also on process exit and on
 * SIGINT/SIGTERM) removes all of it.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export type PowerCutFs = 'xfs' | 'ext4';

const PATH = `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin`;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, PATH } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error?.message ?? (r.stderr.trim() || `exit ${r.status}`)}`);
  return r.stdout.trim();
}

const live = new Set<LoopFs>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const l of live) l.disposeSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      for (const l of live) l.disposeSync();
      process.kill(process.pid, sig);
    });
}

export class LoopFs {
  /** The mkdtemp directory holding the image and the mount point. */
  readonly work: string;
  readonly image: string;
  readonly mnt: string;
  private dev: string | null = null;
  private mounted = false;

  private constructor(readonly kind: PowerCutFs, work: string) {
    this.work = work;
    this.image = path.join(work, `${kind}.img`);
    this.mnt = path.join(work, 'mnt');
  }

  /** Makes, formats and mounts a new filesystem of `sizeMiB`. */
  static create(kind: PowerCutFs, sizeMiB = 512): LoopFs {
    const l = new LoopFs(kind, fs.mkdtempSync(path.join(os.tmpdir(), `qs-powercut-${kind}-`)));
    hookExit();
    live.add(l);
    try {
      fs.mkdirSync(l.mnt);
      fs.closeSync(fs.openSync(l.image, 'w'));
      fs.truncateSync(l.image, sizeMiB * 1024 * 1024);
      if (kind === 'xfs') run('mkfs.xfs', ['-q', '-m', 'reflink=1', l.image]);
      else run('mkfs.ext4', ['-q', '-F', l.image]);
      l.dev = run('losetup', ['--find', '--show', l.image]);
      l.mount();
    } catch (e) {
      l.disposeSync();
      throw e;
    }
    return l;
  }

  private mount(): void {
    run('mount', [this.dev!, this.mnt]);
    this.mounted = true;
  }

  /** The power cut: the filesystem stops, its unflushed log is lost. Once down, it stays down (EIO): nothing to do. */
  cut(): void {
    const r = spawnSync('xfs_io', ['-x', '-c', 'shutdown', this.mnt], { encoding: 'utf8', env: { ...process.env, PATH } });
    if (r.status !== 0 && !/Input\/output error/.test(r.stderr)) throw new Error(`xfs_io shutdown ${this.mnt}: ${r.error?.message ?? r.stderr.trim()}`);
  }

  /** The reboot: unmount (retrying while a killed process still lets go), mount again: log recovery. */
  remount(): void {
    this.unmount();
    this.mount();
  }

  private unmount(): void {
    if (!this.mounted) return;
    for (let n = 0; ; n++) {
      const r = spawnSync('umount', [this.mnt], { encoding: 'utf8', env: { ...process.env, PATH } });
      if (r.status === 0) break;
      if (n >= 50) throw new Error(`umount ${this.mnt}: ${r.stderr.trim()}`);
      spawnSync('sleep', ['0.1']);
    }
    this.mounted = false;
  }

  /** Unmounts, detaches and removes everything made here; safe to call twice. */
  disposeSync(): void {
    if (!live.has(this)) return;
    live.delete(this);
    try {
      this.unmount();
    } catch {
      spawnSync('umount', ['-l', this.mnt], { env: { ...process.env, PATH } });
      this.mounted = false;
    }
    if (this.dev) spawnSync('losetup', ['-d', this.dev], { env: { ...process.env, PATH } });
    this.dev = null;
    fs.rmSync(this.work, { recursive: true, force: true });
  }
}
