/** Steps shared by the domain tools (qvm-create, qvm-clone, qvm-start, qvm-shutdown, qvm-remove). */
import type { Api } from './api.js';
import { CliError } from './tool.js';

export const DOMAIN_CLASSES = ['AppVM', 'TemplateVM', 'StandaloneVM', 'DispVM'];

/** The domain names exist, else an error naming the missing one(s); nothing is done before this check. */
export async function checkDomains(api: Api, names: readonly string[]): Promise<void> {
  const domains = await api.domains();
  const missing = names.filter((n) => !domains.some((d) => d.name === n));
  if (missing.length) throw new CliError(`no such domain: ${missing.map((n) => `'${n}'`).join(', ')}`);
}

/** The pool names exist, else an error naming the missing one(s). */
export async function checkPools(api: Api, names: readonly string[]): Promise<void> {
  if (!names.length) return;
  const known = new Set(await api.pools());
  const missing = [...new Set(names)].filter((n) => !known.has(n));
  if (missing.length) throw new CliError(`no such pool: ${missing.map((n) => `'${n}'`).join(', ')}`);
}

/** The payload of admin.vm.Create / CreateInPool. */
export function createPayload(name: string, label: string, pool: string | undefined, pools: readonly [string, string][]): string {
  let s = `name=${name} label=${label}`;
  if (pool !== undefined) s += ` pool=${pool}`;
  for (const [vol, p] of pools) s += ` pool:${vol}=${p}`;
  return s;
}

/**
 * Copies the data of every volume of `dst` that keeps its data (save_on_stop)
 * from the same-named volume of `src`, through CloneFrom/CloneTo.
 */
export async function cloneVolumes(
  api: Api,
  src: string,
  dst: string,
  onVolume?: (volume: string, size: number) => { finish(): void },
): Promise<void> {
  const srcVolumes = new Set(await api.volumes(src));
  for (const vol of await api.volumes(dst)) {
    if (!srcVolumes.has(vol)) continue;
    const dstInfo = await api.volumeInfo(dst, vol);
    if (dstInfo.get('save_on_stop') !== 'True') continue;
    const srcInfo = await api.volumeInfo(src, vol);
    const ind = onVolume?.(vol, Number(srcInfo.get('size') ?? 0));
    try {
      const token = (await api.transport.call('admin.vm.volume.CloneFrom', src, vol)).toString('utf8');
      await api.transport.call('admin.vm.volume.CloneTo', dst, vol, token);
    } finally {
      ind?.finish();
    }
  }
}

/** Removes a domain made by a step that then failed; a failure here is only reported. */
export async function undoCreate(api: Api, name: string, warn: (m: string) => void): Promise<void> {
  try {
    await api.transport.call('admin.vm.Remove', name);
  } catch (e) {
    warn(`could not remove the half-made domain ${name}: ${(e as Error).message}`);
  }
}
