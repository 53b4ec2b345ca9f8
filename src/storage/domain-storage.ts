/**
 * The storage of one domain: its volumes by name, and the operations that
 * act on all of them. Creation is all-or-nothing; snap_on_start volumes get
 * their real source by walking the template chain (TemplateVM -> AppVM ->
 * DispVM: the first volume up the chain that has no source itself).
 */
import { QubesException, QubesValueError } from './errors.js';
import type { Pool } from './pool.js';
import type { DomainRef, Volume, VolumeConfig } from './volume.js';

export type PoolLookup = (name: string) => Pool;

export interface DomainStorageSpec {
  readonly domain: DomainRef;
  /** Volume configs, one per volume name. */
  readonly volumes: readonly VolumeConfig[];
  /** The template's storage: where snap_on_start volumes find their source. */
  readonly template?: DomainStorage | null;
}

/** Follows `source` links up to the volume that has none. */
export function realSource(volume: Volume): Volume {
  let v = volume;
  for (let hops = 0; v.source; hops++) {
    if (hops > 64) throw new QubesValueError(`volume ${volume.vid}: source chain too long (a loop?)`);
    v = v.source;
  }
  return v;
}

/** Runs `fn` on every volume, all attempted; throws the first error after all settled. */
async function eachVolume(volumes: Iterable<Volume>, fn: (v: Volume) => Promise<unknown>): Promise<Volume[]> {
  const list = [...volumes];
  const results = await Promise.allSettled(list.map(fn));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return list;
}

/**
 * Runs `op` on every volume at once; if any fails, `undo` runs on those that
 * succeeded and the first error is thrown.
 */
async function allOrUndo(
  volumes: Iterable<Volume>,
  op: (v: Volume) => Promise<unknown>,
  undo: (v: Volume) => Promise<unknown>,
): Promise<void> {
  const list = [...volumes];
  const results = await Promise.allSettled(list.map(op));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (!failed) return;
  await Promise.allSettled(list.filter((_, i) => results[i]!.status === 'fulfilled').map(undo));
  throw failed.reason;
}

export class DomainStorage {
  readonly domain: DomainRef;
  readonly volumes: ReadonlyMap<string, Volume>;

  constructor(domain: DomainRef, volumes: Map<string, Volume>) {
    this.domain = domain;
    this.volumes = volumes;
  }

  /** Makes the volume objects (nothing on disk), resolving sources through the template. */
  static init(spec: DomainStorageSpec, pools: PoolLookup): DomainStorage {
    const volumes = new Map<string, Volume>();
    for (const cfg of spec.volumes) {
      if (volumes.has(cfg.name))
        throw new QubesValueError(`domain ${spec.domain.name}: volume ${cfg.name} given twice`);
      let source: Volume | null = null;
      if (cfg.snap_on_start) {
        const t = spec.template?.volumes.get(cfg.name);
        if (!t)
          throw new QubesValueError(
            `domain ${spec.domain.name}: volume ${cfg.name} is a snapshot but the domain has no template with a ${cfg.name} volume`,
          );
        source = realSource(t);
      }
      const { source: _vid, pool: poolName, ...rest } = cfg;
      const pool = pools(poolName);
      volumes.set(cfg.name, pool.initVolume(spec.domain, { ...rest, source }));
    }
    return new DomainStorage(spec.domain, volumes);
  }

  get(name: string): Volume {
    const v = this.volumes.get(name);
    if (!v) throw new QubesValueError(`domain ${this.domain.name} has no volume ${name}`);
    return v;
  }

  /** Creates every volume; if one fails, the ones made are removed again. */
  async create(): Promise<void> {
    await allOrUndo(this.volumes.values(), (v) => v.create(), (v) => v.remove());
  }

  /** Checks every volume can start. */
  async verify(): Promise<void> {
    await eachVolume(this.volumes.values(), (v) => v.verify());
  }

  /**
   * Starts every volume; if one fails, the started ones are stopped again
   * (a save_on_stop volume then commits data its domain never saw changed).
   */
  async start(): Promise<void> {
    await this.verify();
    await allOrUndo(this.volumes.values(), (v) => v.start(), (v) => v.stop());
  }

  /** Stops every volume (all are attempted even if one fails). */
  async stop(): Promise<void> {
    await eachVolume(this.volumes.values(), (v) => v.stop());
  }

  /** Removes every volume (all are attempted even if one fails). */
  async remove(): Promise<void> {
    await eachVolume(this.volumes.values(), (v) => v.remove());
  }

  /**
   * Copies the data of `src`'s volumes into this domain's volumes of the same
   * name that keep data (save_on_stop); snapshots and volatile volumes have
   * nothing of their own to copy. Works across pools.
   */
  async cloneFrom(src: DomainStorage): Promise<void> {
    const pairs: [Volume, Volume][] = [];
    for (const [name, dst] of this.volumes) {
      if (!dst.save_on_stop) continue;
      const from = src.volumes.get(name);
      if (!from) continue;
      pairs.push([dst, from]);
    }
    await eachVolume(
      pairs.map(([d]) => d),
      (d) => d.importVolume(pairs.find(([x]) => x === d)![1]),
    );
  }

  /** Creates the volumes and fills them from `src`; on failure nothing is left. */
  async createAsClone(src: DomainStorage): Promise<void> {
    await this.create();
    try {
      await this.cloneFrom(src);
    } catch (e) {
      await this.remove().catch(() => undefined);
      throw e instanceof QubesException ? e : new QubesException(String(e));
    }
  }
}
