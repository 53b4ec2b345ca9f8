/**
 * Named failpoints in the state-changing steps, for crash tests. Off unless
 * QUBES_STORAGE_FAILPOINTS names them: `name` or `name:N` (the Nth time it is
 * reached), several separated by commas. A matching point kills the process
 * with SIGKILL, so nothing after it runs.
 *
 * QUBES_STORAGE_FAILPOINT_ACTION=shutdown:MOUNTPOINT makes it a power cut:
 * before the SIGKILL, the filesystem at MOUNTPOINT is shut down without
 * flushing its log (`xfs_io -x -c shutdown`, the FS_IOC_SHUTDOWN ioctl with
 * NOLOGFLUSH, on XFS and ext4), so whatever was not made durable is lost
 * once it is mounted again, as after a power cut. For the power-loss
 * campaign (test/reliability/power-cut.ts); root only.
 *
 * QUBES_STORAGE_FAILPOINT_ACTION=stop stops the process there instead
 * (SIGSTOP; it goes on after a SIGCONT): a deterministic "in progress" for
 * tests that interrupt a step midway.
 */
import { spawnSync } from 'node:child_process';

const spec = parse(process.env['QUBES_STORAGE_FAILPOINTS'] ?? '');
const hits = new Map<string, number>();
/** Every failpoint name reached so far in this process (for tests that list them). */
export const reached = new Set<string>();

function parse(s: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const part of s.split(',').map((x) => x.trim()).filter(Boolean)) {
    const [name, n] = part.split(':');
    m.set(name!, n ? Number(n) : 1);
  }
  return m;
}

export function failpoint(name: string): void {
  if (process.env['QUBES_STORAGE_FAILPOINT_TRACE']) reached.add(name);
  if (spec.size === 0) return;
  const want = spec.get(name);
  if (want === undefined) return;
  const n = (hits.get(name) ?? 0) + 1;
  hits.set(name, n);
  if (n === want) {
    if (process.env['QUBES_STORAGE_FAILPOINT_TRACE']) process.stderr.write(`failpoint ${name} hit\n`);
    if (process.env['QUBES_STORAGE_FAILPOINT_ACTION'] === 'stop') {
      // Stopped there (SIGSTOP) until a SIGCONT: a step caught in progress, for tests that interrupt it.
      process.kill(process.pid, 'SIGSTOP');
      return;
    }
    crashNow();
  }
}

/** Dies as a failpoint does: SIGKILL, after a power cut of the filesystem when QUBES_STORAGE_FAILPOINT_ACTION asks for one. */
export function crashNow(): never {
  cutPowerIfAsked();
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable: SIGKILL did not stop the process');
}

/** The power cut of QUBES_STORAGE_FAILPOINT_ACTION=shutdown:MOUNTPOINT, if set; else nothing. */
export function cutPowerIfAsked(): void {
  const action = process.env['QUBES_STORAGE_FAILPOINT_ACTION'] ?? '';
  if (action.startsWith('shutdown:')) {
    const r = spawnSync('xfs_io', ['-x', '-c', 'shutdown', action.slice('shutdown:'.length)], {
      stdio: 'ignore',
      env: { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` },
    });
    if (r.status !== 0) process.stderr.write(`failpoint: shutdown of ${action.slice(9)} failed (${r.error?.message ?? `exit ${r.status}`})\n`);
  }
}

/** Failpoint names declared by the code, so tests can iterate over all of them. */
export const FAILPOINTS = new Set<string>();
/** Declares a failpoint name once, at module load, and returns it. */
export function declareFailpoint(name: string): string {
  FAILPOINTS.add(name);
  return name;
}
