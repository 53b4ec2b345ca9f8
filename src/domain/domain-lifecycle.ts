/**
 * A domain's life: creating and cloning it (its volumes made between two
 * saves, all or nothing, also across a crash: see finishPending), starting
 * and stopping it, removing it. Each holds or uses the domains it touches
 * (DomainTable) and saves through the App's commits.
 */
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { DomainStorage } from '../storage/domain-storage.js';
import { QubesPropertyValueError, QubesValueError, QubesVMInUseError, QubesVMNotHaltedError, QubesVMNotStartedError } from '../storage/errors.js';
import { printable, type BlockDevice } from '../storage/volume.js';
import { Domain, isDomainClass, makeDomain, type DomainClass, type DomainHost } from './domain.js';
import { withArticle } from './names.js';
import type { DomainTable } from './domain-table.js';
import { checkPoolChoice, cloneVolumeConfigs, newVolumeConfigs, sizedLike, type PoolChoice, type VolumeDefaults } from './domain-volumes.js';
import type { AppEvents } from './events.js';
import type { Pools } from './pools.js';
import type { PropValue } from './properties.js';
import type { DomainRunner } from './runner.js';
import type { PendingChange } from './state-file.js';
import type { StateSaves } from './state-store.js';

const FP = {
  createAfterMark: declareFailpoint('app.create.after-mark'),
  createAfterVolumes: declareFailpoint('app.create.after-volumes'),
  removeAfterMark: declareFailpoint('app.remove.after-mark'),
  removeAfterVolumes: declareFailpoint('app.remove.after-volumes'),
};

export interface CreateDomainOptions extends PoolChoice {
  readonly klass: DomainClass;
  readonly name: string;
  readonly label: string;
  /**
   * AppVM: its TemplateVM (default: default_template). DispVM: its
   * disposable template (default: default_dispvm). StandaloneVM and
   * TemplateVM: a domain whose volumes are copied into the new one.
   */
  readonly template?: string | null;
  /** More properties to set (qvm-create --property), by name. */
  readonly properties?: Readonly<Record<string, PropValue>>;
}

export interface CloneDomainOptions extends PoolChoice {}

/** What a domain's life needs of the App. */
export interface LifecycleContext {
  /** The App: domains are made with it as their host. */
  readonly host: DomainHost;
  readonly domains: DomainTable;
  readonly pools: Pools;
  readonly saves: StateSaves & { storageRan(d: Domain): void };
  readonly events: AppEvents;
  readonly runner: DomainRunner;
  /** Where a new domain's volumes go, and their sizes. */
  readonly volumeDefaults: VolumeDefaults;
}

export class DomainLifecycle {
  constructor(private readonly ctx: LifecycleContext) {}

  // ---- creating, cloning -----------------------------------------------------------------

  /**
   * Creates a domain with its class's volume set. Nothing is left behind on
   * failure: volumes made are removed, the state is saved only after every
   * volume exists, and a failed save removes the volumes again.
   */
  async create(o: CreateDomainOptions): Promise<Domain> {
    const { host, domains, pools } = this.ctx;
    this.ctx.saves.checkOpen();
    if (!isDomainClass(o.klass) || o.klass === 'AdminVM')
      throw new QubesValueError(`cannot create a domain of class '${printable(String(o.klass))}'`);
    domains.checkNewName(o.name);
    const label = host.labels.get(o.label).name;
    checkPoolChoice(o);
    const rule = Domain.templateRule(o.klass);
    let template: Domain | null = null;
    let copyFrom: Domain | null = null;
    if (rule !== 'none') {
      const tName = o.template ?? (host.globals.prop(rule === 'TemplateVM' ? 'default_template' : 'default_dispvm') as string | null);
      if (!tName) throw new QubesValueError(`${withArticle(o.klass)} needs a template and no default is set`);
      template = domains.usable(tName);
    } else if (o.template) {
      copyFrom = domains.usable(o.template);
      if (copyFrom.klass === 'AdminVM') throw new QubesValueError('cannot copy the volumes of dom0');
    }
    const qid = domains.nextQid();
    const d = makeDomain(o.klass, host, { name: o.name, qid });
    d.storeProperty('label', label);
    if (template) {
      d.checkProperty('template', template.name);
      d.storeProperty('template', template.name);
    }
    for (const [k, v] of Object.entries(o.properties ?? {})) {
      const def = d.propertyDef(k);
      if (def.writeOnce || def.computed || k === 'template') throw new QubesPropertyValueError(`property ${k} cannot be given here`);
      d.checkProperty(k, v);
      d.storeProperty(k, v);
    }
    let configs = newVolumeConfigs(d, o, this.ctx.volumeDefaults);
    if (copyFrom) configs = sizedLike(configs, copyFrom);
    const storage = DomainStorage.init({ domain: d, volumes: configs, template: template?.storage ?? null }, (n) => pools.forVolume(n));
    // Everything above is synchronous: the name, qid and the domains used are reserved atomically.
    const uses = [template?.name, copyFrom?.name].filter((x): x is string => !!x);
    const release = domains.useNamed(uses, `${o.name} (being created from it)`);
    domains.reserved.set(o.name, { qid, storage });
    try {
      d.storage = storage;
      await this.makeVolumes(d, () => (copyFrom ? storage.createAsClone(copyFrom.storage) : storage.create()));
    } finally {
      domains.reserved.delete(o.name);
      release();
    }
    this.announceNewDomain(d);
    return d;
  }

  /**
   * Copies a domain: its properties (but name, qid, uuid), tags, features and
   * the data of its volumes, into a new domain of the same class, optionally
   * in other pools. All-or-nothing like create.
   */
  async clone(srcName: string, dstName: string, o: CloneDomainOptions = {}): Promise<Domain> {
    const { domains, pools } = this.ctx;
    this.ctx.saves.checkOpen();
    const src = domains.usable(srcName);
    if (src.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be cloned');
    domains.checkNewName(dstName);
    checkPoolChoice(o);
    const qid = domains.nextQid();
    const d = makeDomain(src.klass, this.ctx.host, { name: dstName, qid });
    for (const p of src.setPropertyNames()) {
      const def = src.propertyDef(p);
      if (def.writeOnce || def.computed) continue;
      d.storeProperty(p, src.prop(p));
    }
    for (const t of src.tags) d.tags.add(t);
    for (const [k, v] of src.features) d.features.set(k, v);
    const template = d.template;
    const configs = cloneVolumeConfigs(src, o, this.ctx.volumeDefaults);
    const storage = DomainStorage.init({ domain: d, volumes: configs, template: template?.storage ?? null }, (n) => pools.forVolume(n));
    const release = domains.useNamed([src.name, ...(template ? [template.name] : [])], `${dstName} (being created from it)`);
    domains.reserved.set(dstName, { qid, storage });
    try {
      d.storage = storage;
      await this.makeVolumes(d, () => storage.createAsClone(src.storage));
    } finally {
      domains.reserved.delete(dstName);
      release();
    }
    this.announceNewDomain(d);
    return d;
  }

  /**
   * Makes a new domain's volumes between two saves: first the domain with a
   * 'create' mark (so a crash midway is rolled back at the next start, see
   * finishPending), then the domain itself. Any failure removes the volumes
   * and the mark.
   */
  private async makeVolumes(d: Domain, make: () => Promise<void>): Promise<void> {
    const { saves, domains } = this.ctx;
    const only = new Set([d]);
    await saves.commit(() => {
      domains.creating.set(d.name, d);
      return () => domains.creating.delete(d.name);
    }, only);
    failpoint(FP.createAfterMark);
    let made = false;
    try {
      await make(); // on failure it removes what it made, and nothing else
      made = true;
      failpoint(FP.createAfterVolumes);
      await saves.commit(() => {
        domains.creating.delete(d.name);
        domains.listed.set(d.name, d);
        return () => {
          domains.listed.delete(d.name);
          domains.creating.set(d.name, d);
        };
      }, only);
    } catch (e) {
      if (made) await d.storage.remove().catch(() => undefined);
      await saves.commit(() => {
        domains.creating.delete(d.name);
        return () => domains.creating.set(d.name, d);
      }, only).catch(() => undefined); // a mark left behind is rolled back at the next start
      domains.creating.delete(d.name);
      throw e;
    }
  }

  /**
   * Finishes what a crash interrupted, from the write-ahead marks: a domain
   * marked 'create' or 'remove' has its volumes removed and leaves the state.
   * A domain whose volumes cannot be removed keeps its mark (tried again at
   * the next start) and stays out of use.
   */
  async finishPending(marks: ReadonlyMap<Domain, PendingChange>): Promise<void> {
    const { domains } = this.ctx;
    for (const [d, change] of marks) {
      if (change === 'create') {
        domains.listed.delete(d.name);
        domains.creating.set(d.name, d);
      } else {
        domains.removing.add(d);
      }
    }
    for (const [d, change] of marks) {
      try {
        await d.storage.remove();
      } catch (e) {
        this.ctx.events.emit('dom0', 'domain-pending-unfinished', { vm: d.name, change, reason: (e as Error).message });
        continue;
      }
      await this.ctx.saves.commit(() => {
        domains.creating.delete(d.name);
        domains.removing.delete(d);
        domains.listed.delete(d.name);
        return () => undefined;
      }, new Set([d]));
    }
  }

  private announceNewDomain(d: Domain): void {
    for (const v of d.storage.volumes.values())
      this.ctx.events.emit(d.name, 'domain-volume-created', { volume: v.name, pool: v.pool.name, vid: v.vid });
    this.ctx.events.emit('', 'domain-add', { vm: d.name });
  }

  // ---- removing --------------------------------------------------------------------------

  /**
   * Removes a halted domain that nothing uses: the exports of its volumes
   * are ended (a failure there refuses the removal), the state is saved
   * without it, then its volumes are removed (a failure there leaves the
   * domain removed and is reported as a `domain-remove-incomplete` event).
   */
  async remove(name: string): Promise<void> {
    const { saves, domains, events } = this.ctx;
    saves.checkOpen();
    const d = domains.get(name);
    if (d.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be removed');
    await domains.hold(d, { what: 'removal', excludesUses: true }, async () => {
      if (d.isRunning) throw new QubesVMNotHaltedError(`domain ${name} is running; shut it down first`);
      const users = domains.usersOf(d);
      if (users.length) throw new QubesVMInUseError(`domain ${name} is in use by: ${users.join(', ')}`);
      // Exports a client never ended (it died, or quit early) go with the domain; no new one can begin now.
      await domains.endUses(d);
      // Saved with a 'remove' mark first: a crash while the volumes go is finished at the next start.
      await saves.commit(() => {
        domains.removing.add(d);
        return () => domains.removing.delete(d);
      }, new Set([d]));
      failpoint(FP.removeAfterMark);
      let removed = true;
      try {
        await d.storage.remove();
        failpoint(FP.removeAfterVolumes);
        for (const v of d.storage.volumes.values())
          events.emit(name, 'domain-volume-removed', { volume: v.name, pool: v.pool.name, vid: v.vid });
      } catch (e) {
        removed = false;
        events.emit('dom0', 'domain-remove-incomplete', { vm: name, reason: (e as Error).message });
      }
      try {
        await saves.commit(() => {
          domains.listed.delete(name);
          domains.removing.delete(d);
          return () => {
            domains.listed.set(name, d);
            domains.removing.add(d);
          };
        }, new Set([d]));
      } catch (e) {
        // The mark stays in the file: the next start finishes the removal.
        if (removed) throw e;
      }
    });
    events.emit('', 'domain-delete', { vm: name });
  }

  // ---- power -----------------------------------------------------------------------------

  /**
   * Starts a domain: domain-pre-start (a handler may refuse), the storage
   * (snapshots taken of the templates' committed data, working copies,
   * volatile images), then the runner with the block devices; Running.
   * Starting a running domain does nothing (as in Qubes). A template need not
   * run: its domains see what it last committed.
   */
  async start(name: string): Promise<void> {
    const { saves, domains, events, runner } = this.ctx;
    saves.checkOpen();
    const d = domains.get(name);
    if (d.klass === 'AdminVM') return;
    let started = false;
    await domains.hold(d, { what: 'start' }, async () => {
      if (d.isRunning) return;
      // Every template up the chain must still be there (it cannot be removed while d exists).
      d.templateChain();
      await events.fireVetoable(name, 'domain-pre-start');
      try {
        await d.storage.start();
      } finally {
        saves.storageRan(d);
      }
      try {
        const disks = new Map<string, BlockDevice>();
        for (const [n, v] of d.storage.volumes) {
          const dev = await v.blockDevice();
          // No path, nothing to attach (a kernel volume naming no kernel: the domain boots its own, as in Qubes).
          if (dev.path) disks.set(n, dev);
        }
        await runner.start(d, disks);
      } catch (e) {
        await d.storage.stop().catch(() => undefined);
        throw e;
      }
      d.powerState = 'Running';
      started = true;
    });
    if (started) events.emit(name, 'domain-start');
  }

  /** Stops a running domain (shut down, or killed: no domain-pre-shutdown), then its storage (save_on_stop volumes commit). */
  async stop(name: string, kill: boolean): Promise<void> {
    const { saves, domains, runner } = this.ctx;
    saves.checkOpen();
    const d = domains.get(name);
    if (d.klass === 'AdminVM') throw new QubesValueError('dom0 cannot be stopped');
    let storageError: unknown = null;
    await domains.hold(d, { what: kill ? 'kill' : 'shutdown' }, async () => {
      if (!d.isRunning) throw new QubesVMNotStartedError(`domain ${name} is not running`);
      if (!kill) await this.ctx.events.fireVetoable(name, 'domain-pre-shutdown');
      if (kill) await runner.kill(d);
      else await runner.shutdown(d);
      storageError = await this.stopStorage(d);
    });
    await this.afterStop(d, storageError);
  }

  /**
   * A domain the runner reports stopped by itself (its guest powered off,
   * its qemu died): under the domain's hold, if it is still Running here and
   * the runner no longer runs it (a shutdown, kill or new start may have
   * come first), its storage stops as for a shutdown, and domain-shutdown
   * is sent. A storage error is thrown after the event, as stop does.
   */
  async exited(name: string): Promise<void> {
    const { domains, runner } = this.ctx;
    const d = domains.listed.get(name);
    if (!d) return;
    try {
      this.ctx.saves.checkOpen();
    } catch {
      return; // the App closed (a daemon stopping kills its guests first)
    }
    let stopped = false;
    let storageError: unknown = null;
    await domains.hold(d, { what: 'shutdown' }, async () => {
      if (!d.isRunning || (runner.isRunning?.(d) ?? true)) return;
      storageError = await this.stopStorage(d);
      stopped = true;
    });
    if (stopped) await this.afterStop(d, storageError);
  }

  /** Halted, then the storage stopped (save_on_stop volumes commit, announced); returns the storage's error, if any. */
  private async stopStorage(d: Domain): Promise<unknown> {
    d.powerState = 'Halted';
    try {
      await d.storage.stop();
      for (const v of d.storage.volumes.values())
        if (v.save_on_stop) this.ctx.events.emit(d.name, 'domain-volume-committed', { volume: v.name, pool: v.pool.name, vid: v.vid });
      return null;
    } catch (e) {
      return e;
    } finally {
      this.ctx.saves.storageRan(d);
      // The runner's record of the run (a qemu's pid file) goes only now: stopped or reported.
      await this.ctx.runner.stopped?.(d).catch(() => undefined);
    }
  }

  private async afterStop(d: Domain, storageError: unknown): Promise<void> {
    this.ctx.events.emit(d.name, 'domain-shutdown');
    if (storageError) throw storageError as Error;
    if (d.klass === 'DispVM' && d.prop('auto_cleanup') === true) await this.remove(d.name);
  }
}
