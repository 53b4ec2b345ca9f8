/**
 * Whether a process runs, for files named after or holding the pid of the
 * process that made them (locks, temporary files): kill(pid, 0), where EPERM
 * still means it exists (another user's). A pid reused by an unrelated
 * process reads as alive, so what such a check removes is never in use.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
