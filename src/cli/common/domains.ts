/** Steps shared by the domain tools (qvm-create, qvm-clone, qvm-start, qvm-shutdown, qvm-remove). */
import type { QubesClient } from '../../client/index.js';
import { UsageError } from './args.js';
import { CliError } from './tool.js';

export const DOMAIN_CLASSES = ['AppVM', 'TemplateVM', 'StandaloneVM', 'DispVM'];

/** Volumes a `--pool VOLUME=POOL` may name. */
export const POOL_VOLUMES = ['root', 'private', 'volatile', 'kernel'];

/** The `--pool VOLUME=POOL` arguments (qvm-create, qvm-clone) as pairs; a malformed one is a command-line mistake. */
export function volumePoolArgs(list: readonly string[]): [volume: string, pool: string][] {
  return list.map((v) => {
    const eq = v.indexOf('=');
    if (eq <= 0 || eq === v.length - 1) throw new UsageError(`--pool expects VOLUME=POOL, got '${v}'`);
    const vol = v.slice(0, eq);
    if (!POOL_VOLUMES.includes(vol)) throw new UsageError(`--pool ${v}: no volume '${vol}' (volumes: ${POOL_VOLUMES.join(', ')})`);
    return [vol, v.slice(eq + 1)];
  });
}

/** The domain names exist, else an error naming the missing one(s); nothing is done before this check. */
export async function checkDomains(qubes: QubesClient, names: readonly string[]): Promise<void> {
  const domains = await qubes.domains();
  const missing = names.filter((n) => !domains.some((d) => d.name === n));
  if (missing.length) throw new CliError(`no such domain: ${missing.map((n) => `'${n}'`).join(', ')}`);
}

/** The pool names exist, else an error naming the missing one(s). */
export async function checkPools(qubes: QubesClient, names: readonly string[]): Promise<void> {
  if (!names.length) return;
  const known = new Set(await qubes.pools());
  const missing = [...new Set(names)].filter((n) => !known.has(n));
  if (missing.length) throw new CliError(`no such pool: ${missing.map((n) => `'${n}'`).join(', ')}`);
}

/** Removes a domain made by a step that then failed; a failure here is only reported. */
export async function undoCreate(qubes: QubesClient, name: string, warn: (m: string) => void): Promise<void> {
  try {
    await qubes.removeDomain(name);
  } catch (e) {
    warn(`could not remove the half-made domain ${name}: ${(e as Error).message}`);
  }
}
