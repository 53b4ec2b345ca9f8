/**
 * Which volumes a domain gets, and in which pools: a new domain's set (its
 * class's, pools per the caller's choice and the default_pool* settings), a
 * clone's (its source's), the set rebuilt after a template or kernel change.
 */
import { realSource } from '../storage/domain-storage.js';
import { QubesValueError } from '../storage/errors.js';
import { checkPoolName, type Pool } from '../storage/pool.js';
import { defaultVolumeConfigs } from '../storage/volume-sets.js';
import { printable, type VolumeConfig } from '../storage/volume.js';
import type { Domain, GlobalProperties } from './domain.js';

/** pool=P for all volumes, or pool:VOLUME=P per volume (not both). */
export interface PoolChoice {
  readonly pool?: string;
  readonly pools?: Readonly<Record<string, string>>;
}

/** What the volume plans need of the App: the global defaults, the sizes of new volumes, the pools. */
export interface VolumeDefaults {
  readonly globals: GlobalProperties;
  readonly sizes: { readonly root: number; readonly private: number };
  /** The pool of a name; throws QubesValueError if none. */
  pool(name: string): Pool;
}

const VOLUME_NAMES = ['root', 'private', 'volatile', 'kernel'] as const;

/** A choice's own checks: not both forms, names well-formed. */
export function checkPoolChoice(o: PoolChoice): void {
  if (o.pool !== undefined && o.pools !== undefined && Object.keys(o.pools).length)
    throw new QubesValueError('pool= and pool:VOLUME= cannot be given together');
  if (o.pool !== undefined) checkPoolName(o.pool);
  for (const [vol, p] of Object.entries(o.pools ?? {})) {
    if (!(VOLUME_NAMES as readonly string[]).includes(vol) && !/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(vol))
      throw new QubesValueError(`invalid volume name '${printable(vol)}'`);
    checkPoolName(p);
  }
}

/** The volume configs of a new domain: the class's set, pools per the choice and the defaults. */
export function newVolumeConfigs(d: Domain, choice: PoolChoice, app: VolumeDefaults): VolumeConfig[] {
  const g = app.globals;
  const tpl = d.template;
  const pick = (vol: 'root' | 'private' | 'volatile'): string => {
    const p = choice.pools?.[vol] ?? choice.pool ?? String(g.prop(`default_pool_${vol}`) ?? '');
    if (!p) throw new QubesValueError(`no pool for volume ${vol} of ${d.name}: add a pool or set default_pool`);
    return p;
  };
  const kernelVersion = d.hasProperty('kernel') ? String(d.prop('kernel') ?? '') : '';
  const kernelPool = choice.pools?.['kernel'] ?? String(g.prop('default_pool_kernel') ?? '');
  const sizes = {
    root: tpl?.storage.volumes.get('root')?.size ?? app.sizes.root,
    private: d.klass === 'DispVM' ? (tpl?.storage.volumes.get('private')?.size ?? app.sizes.private) : app.sizes.private,
  };
  const configs = defaultVolumeConfigs(
    d.klass,
    // As in Qubes, the kernel volume is there whenever there is a kernel pool, its vid the kernel ('' for none).
    { root: pick('root'), private: pick('private'), volatile: pick('volatile'), kernel: kernelPool || null },
    sizes,
  );
  for (const c of configs) {
    if (c.snap_on_start && choice.pools?.[c.name] === undefined) {
      const src = tpl?.storage.volumes.get(c.name);
      if (src) c.pool = realSource(src).pool.name;
    }
    if (c.name === 'kernel') c.vid = kernelVersion;
  }
  checkPoolChoiceNames(choice, configs, app);
  return configs;
}

/** A clone's volumes: its source's, moved to the pools chosen (a snapshot stays with its source). */
export function cloneVolumeConfigs(src: Domain, choice: PoolChoice, app: VolumeDefaults): VolumeConfig[] {
  const configs: VolumeConfig[] = [];
  for (const v of src.storage.volumes.values()) {
    const c = v.config();
    delete c.vid;
    delete c.source;
    const explicit = choice.pools?.[v.name];
    if (explicit !== undefined) c.pool = explicit;
    else if (v.snap_on_start) c.pool = v.source ? realSource(v).pool.name : c.pool;
    else if (choice.pool !== undefined && v.name !== 'kernel') c.pool = choice.pool;
    if (v.name === 'kernel') c.vid = v.vid;
    configs.push(c);
  }
  checkPoolChoiceNames(choice, configs, app);
  return configs;
}

function checkPoolChoiceNames(choice: PoolChoice, configs: VolumeConfig[], app: VolumeDefaults): void {
  for (const vol of Object.keys(choice.pools ?? {}))
    if (!configs.some((c) => c.name === vol))
      throw new QubesValueError(`pool:${printable(vol)}: the domain has no volume ${printable(vol)} (volumes: ${configs.map((c) => c.name).join(', ')})`);
  for (const c of configs) app.pool(c.pool);
}

/** Sizes of a copy follow its source's volumes. */
export function sizedLike(configs: VolumeConfig[], src: Domain): VolumeConfig[] {
  return configs.map((c) => {
    const v = src.storage.volumes.get(c.name);
    return v && c.save_on_stop ? { ...c, size: v.size } : c;
  });
}

/**
 * A domain's volumes after a change of its `template` or `kernel` (or of
 * one up its chain): sources are found again, and a snapshot goes where its
 * source is, taking its size when the source is another (as Qubes does on a
 * template change, whatever pool it was in before); the kernel volume
 * follows the kernel property (its vid the new kernel, '' for none, as in
 * Qubes; added where a domain had none and now names a kernel).
 */
export function rebuiltVolumeConfigs(d: Domain, globals: GlobalProperties): VolumeConfig[] {
  const configs: VolumeConfig[] = [];
  for (const v of d.storage.volumes.values()) {
    const c = v.config();
    delete c.source;
    const src = v.snap_on_start ? d.template?.storage.volumes.get(v.name) : undefined;
    if (src) {
      const now = realSource(src);
      const was = v.source ? realSource(v) : null;
      c.pool = now.pool.name;
      if (!was || was.pool.name !== now.pool.name || was.vid !== now.vid) c.size = now.size;
    }
    if (v.name === 'kernel') c.vid = String(d.prop('kernel') ?? '');
    configs.push(c);
  }
  const kernel = String(d.prop('kernel') ?? '');
  const kpool = String(globals.prop('default_pool_kernel') ?? '');
  if (kernel && kpool && !d.storage.volumes.has('kernel'))
    configs.push({ name: 'kernel', pool: kpool, vid: kernel, rw: false, snap_on_start: false, save_on_stop: false, size: 0 });
  return configs;
}
