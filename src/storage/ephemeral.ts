/**
 * `ephemeral` volumes, for every driver whose volumes are files or block
 * devices: while the volume runs, what its domain is given (`blockDevice()`,
 * and the `path` of admin.vm.volume.Info) is a dm-crypt mapping of the
 * driver's data with a throw-away key (src/devmapper/crypt.ts), so the data
 * written is unreadable once the domain stops. Volume.start maps it after
 * the driver's own start; Volume.stop (a shutdown, a kill, the undo of a
 * failed start) removes the mapping, and its loop device, before the
 * driver's own stop; Volume.remove too.
 *
 * The mapping's name follows from the volume alone (its pool's driver, name
 * and places, and its vid), so whatever a crashed process left is found
 * again: at the next start or removal of that volume, and when the runtime
 * opens the state (`sweepEphemeralLeftovers`, for the domains not running).
 * It is also how a new process finds the mapping of a volume another one
 * started (a tool that started a domain has exited by the time another
 * asks for its volume's path).
 *
 * Where the host cannot encrypt (no device-mapper, no dm-crypt, no dmsetup,
 * not root), ephemeral=True is refused where it is asked for (a volume's
 * property, a pool's ephemeral_volatile) and a volume that is ephemeral all
 * the same (from qubes.xml or storage.conf) does not start: its data is
 * never written unencrypted while it says it is ephemeral.
 */
import { closeCryptMapping, cryptMappingName, detachStaleLoops, existingMapping, listCryptMappings, openCryptMapping } from '../devmapper/crypt.js';
import { deviceMapperPresent, dmCryptSupport } from '../devmapper/support.js';
import { QubesValueError, StoragePoolException, oneLineReason } from './errors.js';
import type { Volume } from './volume.js';

const names = new WeakMap<Volume, Promise<string>>();

/** Only rw volatile volumes can be ephemeral (the property rules): no other is ever mapped or looked for. */
/** Only a writable volatile volume is ever mapped through dm-crypt. */
export const mappable = (v: Volume): boolean => v.kind === 'volatile' && v.rw;

/**
 * The volume's mapping name: from its pool's driver, name and places (no
 * two pools of this host share those) and its vid, so two states on one
 * host (a test's and the system's) never take each other's mappings.
 */
export function ephemeralMappingName(volume: Volume): Promise<string> {
  let name = names.get(volume);
  if (!name) {
    name = (async () => {
      const places = (await volume.pool.places()).map((p) => (p.kind === 'directory' ? [p.kind, p.path] : [p.kind, p.space, p.prefix]));
      return cryptMappingName(JSON.stringify([volume.pool.driver, volume.pool.name, places, volume.vid]));
    })();
    names.set(volume, name);
  }
  return name;
}

/** Refuses (QubesValueError: `WHAT: this host cannot encrypt ...`) where this host cannot encrypt volumes. */
export async function requireDmCrypt(what: string): Promise<void> {
  const s = await dmCryptSupport();
  if (!s.ok) throw new QubesValueError(`${what}: this host cannot encrypt volumes with dm-crypt (${s.reason})`);
}

/** At start, before the driver's: an ephemeral volume this host cannot encrypt is not started. */
export async function checkCanStartEphemeral(volume: Volume): Promise<void> {
  const s = await dmCryptSupport();
  if (!s.ok)
    throw new StoragePoolException(
      `${volume.where}: cannot start an ephemeral volume: this host cannot encrypt volumes with dm-crypt (${s.reason}); ` +
        'set its ephemeral to False to run it unencrypted',
    );
}

/** After the driver's start: maps the volume's data (its path now) through dm-crypt. */
export async function openEphemeral(volume: Volume): Promise<string> {
  const name = await ephemeralMappingName(volume);
  const backing = await volume.path();
  try {
    return await openCryptMapping(name, backing);
  } catch (e) {
    throw new StoragePoolException(`${volume.where}: cannot encrypt it with dm-crypt: ${oneLineReason(e)}`);
  }
}

/**
 * Removes the volume's mapping and its loop device, if there is one (none
 * can exist without device-mapper: nothing is looked for then); true if
 * there was. `atStart`: also loop devices of its data that a crash left
 * without their mapping.
 */
export async function closeEphemeral(volume: Volume, atStart = false): Promise<boolean> {
  if (!mappable(volume) || !(await deviceMapperPresent())) return false;
  const name = await ephemeralMappingName(volume);
  try {
    const closed = await closeCryptMapping(name);
    if (atStart) await detachStaleLoops(await volume.path());
    return closed;
  } catch (e) {
    throw new StoragePoolException(`${volume.where}: cannot remove its dm-crypt mapping ${name}: ${oneLineReason(e)}`);
  }
}

/** The mapping's device path while the volume is mapped, else null. */
export async function ephemeralDevice(volume: Volume): Promise<string | null> {
  // Only volatile volumes are ever mapped: the others cost nothing here.
  if (!mappable(volume) || !(await deviceMapperPresent())) return null;
  return existingMapping(await ephemeralMappingName(volume));
}

/**
 * Removes the mappings a crashed process left for `volumes` (those of the
 * domains that are not running). Other mappings, ours included (a running
 * domain's, another state's), are left alone. A mapping that cannot go (still
 * open) is reported in `failed`, one line each, and the others still go.
 */
export async function sweepEphemeralLeftovers(volumes: Iterable<Volume>): Promise<{ swept: number; failed: string[] }> {
  const result = { swept: 0, failed: [] as string[] };
  if (!(await deviceMapperPresent())) return result;
  const present = new Set(await listCryptMappings());
  if (present.size === 0) return result;
  for (const v of volumes) {
    if (!mappable(v) || !present.has(await ephemeralMappingName(v))) continue;
    try {
      if (await v.removeEphemeralLeftover()) result.swept++;
    } catch (e) {
      result.failed.push(oneLineReason(e));
    }
  }
  return result;
}
