/**
 * Which installed kernel a new installation boots by default. Qubes' installer
 * lists the kernels directory, keeps the names that start with a digit, and
 * takes the greatest under Python's LooseVersion ordering; here a version
 * counts only when it is complete (vmlinuz and initramfs present, as start
 * and verify require).
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { KERNEL_FILES } from './volume.js';
import type { LinuxKernelPool } from './pool.js';

/**
 * LooseVersion's components: runs of digits (numbers), runs of lower-case
 * letters, and every other single character but '.', which only separates.
 */
function components(version: string): (number | string)[] {
  const out: (number | string)[] = [];
  for (const m of version.matchAll(/(\d+)|([a-z]+)|([^.])/g)) {
    if (m[1] !== undefined) out.push(Number(m[1]));
    else out.push(m[0]);
  }
  return out;
}

/**
 * Orders versions as LooseVersion does: component by component, numbers by
 * value, text by code point, a prefix before what extends it. Where Qubes
 * would fail (a number against text), a number counts as greater.
 */
export function compareKernelVersions(a: string, b: string): number {
  const x = components(a);
  const y = components(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const p = x[i]!;
    const q = y[i]!;
    if (p === q) continue;
    if (typeof p === 'number' && typeof q === 'number') return p < q ? -1 : 1;
    if (typeof p === 'number') return 1;
    if (typeof q === 'number') return -1;
    return p < q ? -1 : 1;
  }
  return x.length - y.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The newest complete kernel of the pool whose name starts with a digit; null if none. */
export async function newestKernel(pool: LinuxKernelPool): Promise<string | null> {
  let best: string | null = null;
  for (const v of await pool.listVolumes()) {
    if (!/^[0-9]/.test(v)) continue;
    if (!(await complete(path.join(pool.dirPath, v)))) continue;
    if (best === null || compareKernelVersions(v, best) > 0) best = v;
  }
  return best;
}

async function complete(dir: string): Promise<boolean> {
  for (const f of KERNEL_FILES) {
    const st = await fs.stat(path.join(dir, f)).catch(() => null);
    if (!st?.isFile()) return false;
  }
  return true;
}
