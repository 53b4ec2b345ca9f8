/** Steps shared by the domain tools (qvm-create, qvm-clone, qvm-start, qvm-shutdown, qvm-remove). */
import type { QubesClient } from '../../client/index.js';
import { CliError } from './tool.js';

export const DOMAIN_CLASSES = ['AppVM', 'TemplateVM', 'StandaloneVM', 'DispVM'];

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
