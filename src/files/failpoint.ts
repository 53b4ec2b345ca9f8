/**
 * Named failpoints in the state-changing steps, for crash tests. Off unless
 * QUBES_STORAGE_FAILPOINTS names them: `name` or `name:N` (the Nth time it is
 * reached), several separated by commas. A matching point kills the process
 * with SIGKILL, as a power cut would, so nothing after it runs.
 */
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
    process.kill(process.pid, 'SIGKILL');
  }
}

/** Failpoint names declared by the code, so tests can iterate over all of them. */
export const FAILPOINTS = new Set<string>();
/** Declares a failpoint name once, at module load, and returns it. */
export function declareFailpoint(name: string): string {
  FAILPOINTS.add(name);
  return name;
}
