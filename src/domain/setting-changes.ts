/**
 * Changes of settings: properties (of a domain, or the global ones), tags
 * and features. Each is checked, applied and saved through one commit
 * (undone if the save fails), then announced with its event. A property
 * change holds its domain (a template or kernel change also the domains
 * based on it, whose volume objects it rebuilds) and uses the domain the
 * new value names, so that it cannot be removed meanwhile.
 */
import { DomainStorage } from '../storage/domain-storage.js';
import { QubesFeatureNotFoundError, QubesPropertyValueError, QubesTagNotFoundError, QubesValueError, QubesVMNotHaltedError } from '../storage/errors.js';
import { printable, type Volume } from '../storage/volume.js';
import { Domain, type DomainHost, type GlobalProperties } from './domain.js';
import type { DomainTable } from './domain-table.js';
import { isTagName } from './names.js';
import { rebuiltVolumeConfigs } from './domain-volumes.js';
import type { AppEvents } from './events.js';
import type { Pools } from './pools.js';
import { propertyText, type PropValue } from './properties.js';
import type { SaveScope } from './state-file.js';
import type { StateSaves } from './state-store.js';

export type PropertyTarget = Domain | GlobalProperties;

/** A volume of `domain` that a change puts in another pool. */
interface VolumeMove {
  readonly domain: Domain;
  readonly from: Volume;
  readonly to: Volume;
}

const FEATURE_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** What setting changes need of the App. */
export interface SettingsContext {
  /** Its labels (a label property's value) and global properties. */
  readonly host: DomainHost;
  readonly domains: DomainTable;
  readonly pools: Pools;
  readonly saves: StateSaves;
  readonly events: AppEvents;
}

export class SettingChanges {
  constructor(private readonly ctx: SettingsContext) {}

  // ---- properties ------------------------------------------------------------------------

  /** Sets a property (typed value); checks, saves, emits property-set:NAME. */
  async setProperty(target: PropertyTarget, name: string, value: PropValue): Promise<void> {
    this.ctx.saves.checkOpen();
    const def = target.propertyDef(name);
    if (def.computed || def.writeOnce)
      throw new QubesPropertyValueError(`${target.holderName}: property ${name} cannot be changed`);
    const refersTo = def.type === 'vm' && typeof value === 'string' ? value : null;
    await this.onTarget(target, name, refersTo, async () => {
      if (target instanceof Domain) this.checkHalted(target, name, def.haltedOnly ?? false);
      const before = propertyText(target.prop(name));
      target.checkProperty(name, value);
      await this.commitProperty(target, name, () => target.storeProperty(name, value));
      this.ctx.events.emit(subjectOf(target), `property-set:${name}`, { name, newvalue: propertyText(value), oldvalue: before });
    });
  }

  /**
   * A commit step changing one property: `change` stores the new value and
   * returns the old, then the storage that follows the property is rebuilt;
   * the step's undo (or its own failure) puts the old value back.
   */
  private propertyChange(
    target: PropertyTarget,
    name: string,
    change: () => ReturnType<PropertyTarget['clearProperty']>,
  ): () => () => void {
    return () => {
      const old = change();
      try {
        const undoStorage = this.refreshStorage(target, name);
        return () => {
          undoStorage();
          target.restoreProperty(name, old);
        };
      } catch (e) {
        target.restoreProperty(name, old);
        throw e;
      }
    };
  }

  /**
   * Applies and saves a property change. A template change can move snapshot
   * volumes to the pool of their new source (Qubes takes a snapshot's pool
   * from its source): those are made in their new pool before the save (a
   * pool that refuses leaves everything as it was), removed there again if
   * the save fails, and the old ones leave their pool once it succeeded.
   */
  private async commitProperty(target: PropertyTarget, name: string, change: () => ReturnType<PropertyTarget['clearProperty']>): Promise<void> {
    const step = this.propertyChange(target, name, change);
    const moves = this.plannedMoves(target, name, step);
    const made: Volume[] = [];
    try {
      for (const m of moves) {
        await m.to.create();
        made.push(m.to);
      }
      await this.ctx.saves.commit(step, this.propertyScope(target, name));
    } catch (e) {
      for (const v of made.reverse()) await v.remove().catch(() => undefined);
      throw e;
    }
    for (const m of moves) {
      // The saved state names the new volume; what the old pool held for this
      // snapshot (a directory, stale working files) is debris now.
      const now = m.domain.storage.volumes.get(m.to.name);
      if (now?.pool === m.to.pool) await m.from.remove().catch(() => undefined);
      else await m.to.remove().catch(() => undefined);
    }
  }

  /**
   * The volumes a property change would move to another pool, found by
   * applying the change's step and undoing it at once (nothing is saved).
   */
  private plannedMoves(target: PropertyTarget, name: string, step: () => () => void): VolumeMove[] {
    if (!(target instanceof Domain) || (name !== 'template' && name !== 'kernel')) return [];
    const affected = [target, ...this.ctx.domains.dependents(target)];
    const before = new Map(affected.map((d) => [d, d.storage]));
    const undo = step();
    const moves: VolumeMove[] = [];
    try {
      for (const d of affected)
        for (const [vname, to] of d.storage.volumes) {
          const from = before.get(d)!.volumes.get(vname);
          if (from && from.pool !== to.pool) moves.push({ domain: d, from, to });
        }
    } finally {
      undo();
    }
    return moves;
  }

  /** Sets a property from its wire text (True/False, digits, names; '' is None for vm properties). */
  async setPropertyFromText(target: PropertyTarget, name: string, raw: string): Promise<void> {
    const def = target.propertyDef(name);
    const value = def.type === 'label' ? this.ctx.host.labels.get(raw).name : target.parseProperty(name, raw);
    await this.setProperty(target, name, value);
  }

  /** Back to the default; emits property-reset:NAME. */
  async resetProperty(target: PropertyTarget, name: string): Promise<void> {
    this.ctx.saves.checkOpen();
    const def = target.propertyDef(name);
    if (def.computed || def.writeOnce)
      throw new QubesPropertyValueError(`${target.holderName}: property ${name} cannot be reset`);
    const dfltRef = def.type === 'vm' ? target.propertyDefault(name) : null;
    await this.onTarget(target, name, typeof dfltRef === 'string' ? dfltRef : null, async () => {
      if (target instanceof Domain) this.checkHalted(target, name, def.haltedOnly ?? false);
      if (!target.isPropertySet(name)) return;
      const before = propertyText(target.prop(name));
      const old = target.clearProperty(name);
      try {
        const dflt = target.propertyDefault(name);
        if (dflt !== undefined && dflt !== null) target.checkProperty(name, dflt);
        else if (def.type === 'vm' && !def.allowNone) throw new QubesPropertyValueError(`${target.holderName}: property ${name} has no default`);
      } finally {
        target.restoreProperty(name, old);
      }
      await this.commitProperty(target, name, () => target.clearProperty(name));
      this.ctx.events.emit(subjectOf(target), `property-reset:${name}`, { name, oldvalue: before });
    });
  }

  /**
   * Runs a property change: holding the domain (for template and kernel also
   * the domains based on it, whose volume objects are rebuilt), and using the
   * domain the new value refers to, so that it cannot be removed meanwhile.
   */
  private async onTarget<T>(target: PropertyTarget, name: string, refersTo: string | null, fn: () => Promise<T>): Promise<T> {
    const { domains } = this.ctx;
    const release = refersTo === null ? () => undefined : domains.useNamed([refersTo], `${target.holderName} (setting ${name})`);
    try {
      if (!(target instanceof Domain)) return await fn();
      const also = name === 'template' || name === 'kernel' ? domains.dependents(target) : [];
      return await domains.hold(target, { what: `change of property ${name}` }, fn, also);
    } finally {
      release();
    }
  }

  private checkHalted(d: Domain, name: string, haltedOnly: boolean): void {
    if (!haltedOnly) return;
    const running = [d, ...this.ctx.domains.dependents(d)].filter((x) => x.isRunning);
    if (running.length)
      throw new QubesVMNotHaltedError(`cannot change ${name} of ${d.name} while ${running.map((x) => x.name).join(', ')} running`);
  }

  /**
   * What a property change touches in the state file: a global one may
   * change what any domain saves; a domain's template or kernel also
   * rebuilds the volumes of the domains based on it (refreshStorage).
   */
  private propertyScope(target: PropertyTarget, name: string): () => SaveScope {
    if (!(target instanceof Domain)) return () => 'all';
    if (name !== 'template' && name !== 'kernel') return () => new Set([target]);
    return () => new Set([target, ...this.ctx.domains.dependents(target)]);
  }

  /**
   * After a change of `template` or `kernel`, rebuilds the volume objects of
   * the domain and of those based on it (sources and kernel versions follow);
   * returns the undo. Throws (changing nothing) when they cannot be built.
   */
  private refreshStorage(target: PropertyTarget, name: string): () => void {
    if (!(target instanceof Domain) || (name !== 'template' && name !== 'kernel')) return () => undefined;
    const affected = [target, ...this.ctx.domains.dependents(target)].sort((a, b) => a.templateChain().length - b.templateChain().length);
    const old = new Map(affected.map((d) => [d, d.storage]));
    try {
      for (const d of affected) {
        const configs = rebuiltVolumeConfigs(d, this.ctx.host.globals);
        d.storage = DomainStorage.init({ domain: d, volumes: configs, template: d.template?.storage ?? null }, (n) => this.ctx.pools.forVolume(n));
      }
    } catch (e) {
      for (const [d, s] of old) d.storage = s;
      throw e;
    }
    return () => {
      for (const [d, s] of old) d.storage = s;
    };
  }

  // ---- tags and features -------------------------------------------------------------------

  async addTag(d: Domain, tag: string): Promise<void> {
    this.ctx.saves.checkOpen();
    if (!isTagName(tag)) throw new QubesValueError(`invalid tag '${printable(tag)}'`);
    if (d.tags.has(tag)) return;
    await this.ctx.saves.commit(() => {
      d.tags.add(tag);
      return () => d.tags.delete(tag);
    }, new Set([d]));
    this.ctx.events.emit(d.name, `domain-tag-add:${tag}`, { tag });
  }

  async removeTag(d: Domain, tag: string): Promise<void> {
    this.ctx.saves.checkOpen();
    if (!d.tags.has(tag)) throw new QubesTagNotFoundError(`domain ${d.name} has no tag '${printable(tag)}'`);
    await this.ctx.saves.commit(() => {
      d.tags.delete(tag);
      return () => d.tags.add(tag);
    }, new Set([d]));
    this.ctx.events.emit(d.name, `domain-tag-delete:${tag}`, { tag });
  }

  async setFeature(d: Domain, feature: string, value: string): Promise<void> {
    this.ctx.saves.checkOpen();
    if (!FEATURE_RE.test(feature)) throw new QubesValueError(`invalid feature name '${printable(feature)}'`);
    if (/[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(value) || value.length > 4096) throw new QubesValueError(`invalid value for feature ${feature}`);
    const old = d.features.get(feature);
    await this.ctx.saves.commit(() => {
      d.features.set(feature, value);
      return () => (old === undefined ? d.features.delete(feature) : d.features.set(feature, old));
    }, new Set([d]));
    this.ctx.events.emit(d.name, `domain-feature-set:${feature}`, { feature, value, ...(old !== undefined ? { oldvalue: old } : {}) });
  }

  async removeFeature(d: Domain, feature: string): Promise<void> {
    this.ctx.saves.checkOpen();
    const old = d.features.get(feature);
    if (old === undefined) throw new QubesFeatureNotFoundError(`domain ${d.name} has no feature '${printable(feature)}'`);
    await this.ctx.saves.commit(() => {
      d.features.delete(feature);
      return () => d.features.set(feature, old);
    }, new Set([d]));
    this.ctx.events.emit(d.name, `domain-feature-delete:${feature}`, { feature });
  }
}

function subjectOf(target: PropertyTarget): string {
  return target instanceof Domain ? target.name : '';
}
