/**
 * What the state file's directory says about a missing state file.
 *
 * A new state is made only where no state was before: when the state file
 * is missing, its directory must hold nothing but what a fresh start makes
 * itself. Anything else (pools/, backup/, the journal, running-domains, a
 * volume, any file) is a trace of an earlier state, and making a new one
 * would forget every domain it had while their volumes stay on disk.
 *
 * Not traces (a fresh start makes them, or they hold no state):
 * - the lock `NAME.lock` and its temporaries `.NAME.lock.*`,
 *   `NAME.lock.stale-*` (state-lock.ts);
 * - temporaries of the state file, `.NAME.tmp-HEX` (swept at open anyway);
 * - sockets (the daemon's `qubesd.sock`, also one a killed daemon left);
 * - the configuration files named by the caller (storage.conf: written by
 *   the administrator, possibly before the first start);
 * - the kernels directory `vm-kernels/`: the system installs kernels there
 *   before the first start, which gives the new state its kernel pool
 *   (Qubes' kernel packages fill /var/lib/qubes/vm-kernels before qubes.xml
 *   exists); kernels are no state;
 * - empty directories.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

/** The kernels directory beside the state file (runtime.ts gives a new state its pool there). */
export const KERNELS_DIR = 'vm-kernels';

/** Entries of `stateFile`'s directory that show a state was there (names, directories with a trailing /), sorted. */
export async function earlierStateTraces(stateFile: string, configFiles: readonly string[] = []): Promise<string[]> {
  const dir = path.dirname(stateFile);
  const name = path.basename(stateFile);
  const config = new Set(configFiles.filter((f) => path.dirname(path.resolve(f)) === path.resolve(dir)).map((f) => path.basename(f)));
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const traces: string[] = [];
  for (const e of entries) {
    const n = e.name;
    if (n === name) continue;
    if (n === `${name}.lock` || n.startsWith(`.${name}.lock.`) || n.startsWith(`${name}.lock.stale-`)) continue;
    if (n.startsWith(`.${name}.tmp-`)) continue;
    if (config.has(n)) continue;
    if (e.isSocket()) continue;
    if (n === KERNELS_DIR && e.isDirectory()) continue;
    if (e.isDirectory()) {
      const inside = await fs.readdir(path.join(dir, n)).catch(() => ['?']);
      if (inside.length === 0) continue;
      traces.push(`${n}/`);
      continue;
    }
    traces.push(n);
  }
  return traces.sort();
}
