/**
 * What the page shows, read through the client library (so through the
 * daemon's admin methods and its policy, as any caller): pools with their
 * usage rows, domains (admin.vm.ListDetails, one call), each pool's volumes
 * a page at a time, and the usage history. admin.Events keeps it current:
 * a domain starting or stopping changes its state in place, a volume event
 * (commit, import, resize, revert, clone, create, remove) re-reads the pool
 * usage, and a pool whose usage crosses the threshold is announced. Every
 * change goes to the listeners (the page's event streams).
 */
import type { AdminEvent } from '../admin/protocol/reply.js';
import { poolUsageRow, type DomainDetails, type EventsSubscription, type PoolUsageRow, type QubesClient } from '../client/index.js';
import { PermissionDenied } from '../storage/errors.js';
import { forEachLimit } from '../files/concurrency.js';
import type { UsageHistory, UsagePoint } from './history.js';

export interface PoolView {
  readonly name: string;
  readonly driver: string;
  readonly row: PoolUsageRow;
}

export interface DomainView {
  readonly name: string;
  readonly klass: string;
  state: string;
  readonly template: string;
  /** The pools of its volumes, each once, in volume order. */
  readonly pools: readonly string[];
  /** Volume name -> pool. */
  readonly volumes: readonly (readonly [string, string])[];
}

export interface VolumeView {
  readonly domain: string;
  readonly volume: string;
  readonly size: number | null;
  readonly usage: number | null;
  /** Oldest first; `time` is empty where the caller may read only the ids (admin.vm.volume.ListSnapshots). */
  readonly revisions: readonly { readonly id: string; readonly time: string }[];
  /** Why the volume could not be read (refused by the policy, gone meanwhile), else absent. */
  readonly error?: string;
}

/** A change for the page: `pools`, `domain`, `domains`, `volume`, `threshold`, `history`, `daemon` (the events stream lost or back). */
export interface Change {
  readonly type: string;
  readonly data: unknown;
}

const VOLUME_EVENTS = new Set([
  'domain-volume-committed',
  'domain-volume-created',
  'domain-volume-removed',
  'volume-imported',
  'volume-resized',
  'volume-reverted',
  'volume-cloned',
]);
const DOMAIN_LIST_EVENTS = new Set(['domain-add', 'domain-delete']);
const POOL_EVENTS = new Set(['pool-add', 'pool-delete']);
/** Coalesces bursts of events (a start of many domains, a commit of several volumes) into one re-read. */
const DEBOUNCE_MS = 150;
/** How long to wait before subscribing again to a daemon that went away. */
const RESUBSCRIBE_MS = 1000;

export class WebModel {
  pools: PoolView[] = [];
  domains: DomainView[] = [];
  private byName = new Map<string, DomainView>();
  private readonly listeners = new Set<(c: Change) => void>();
  private subscription: EventsSubscription | undefined;
  private sampler: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private closed = false;
  /** Serialises the re-reads of each kind, so answers cannot arrive out of order. */
  private readonly chains = new Map<string, Promise<void>>();

  constructor(
    readonly client: QubesClient,
    readonly threshold: number,
    readonly history: UsageHistory,
    readonly sampleMs: number,
    readonly log: (line: string) => void,
  ) {}

  onChange(fn: (c: Change) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(type: string, data: unknown): void {
    for (const l of this.listeners) l({ type, data });
  }

  /** Subscribes to events first (so nothing between the first read and the subscription is missed), then reads everything and samples once. */
  async start(): Promise<void> {
    await this.subscribe();
    await Promise.all([this.readDomains(), this.serial('pools', () => this.sample())]);
    const tick = () => {
      this.sampler = setTimeout(() => {
        void this.serial('pools', () => this.sample()).finally(() => {
          if (!this.closed) tick();
        });
      }, this.sampleMs);
    };
    tick();
  }

  private async subscribe(): Promise<void> {
    const sub = this.client.events('dom0', (e) => this.onEvent(e));
    this.subscription = sub;
    await sub.established;
    // A daemon that stops or restarts ends the stream: subscribe again, then read everything (what changed meanwhile was not seen).
    const lost = () => {
      if (this.closed || this.subscription !== sub) return;
      this.log('admin.Events ended; subscribing again');
      this.emit('daemon', { connected: false });
      this.resubscribe();
    };
    sub.ended?.then(lost, lost);
  }

  private resubscribe(): void {
    this.retry = setTimeout(() => {
      this.subscribe()
        .then(async () => {
          this.emit('daemon', { connected: true });
          await Promise.all([this.serial('domains', () => this.readDomains()), this.serial('pools', async () => void (await this.readPools()))]);
        })
        .catch(() => {
          this.subscription?.close();
          if (!this.closed) this.resubscribe();
        });
    }, RESUBSCRIBE_MS);
  }

  close(): void {
    this.closed = true;
    this.subscription?.close();
    clearTimeout(this.sampler);
    clearTimeout(this.retry);
    for (const t of this.pending.values()) clearTimeout(t);
  }

  private serial(kind: string, fn: () => Promise<void>): Promise<void> {
    const next = (this.chains.get(kind) ?? Promise.resolve()).then(fn).catch((e: unknown) => this.log(`${kind}: ${(e as Error).message}`));
    this.chains.set(kind, next);
    return next;
  }

  private later(kind: string, fn: () => Promise<void>): void {
    if (this.closed || this.pending.has(kind)) return;
    this.pending.set(
      kind,
      setTimeout(() => {
        this.pending.delete(kind);
        void this.serial(kind, fn);
      }, DEBOUNCE_MS),
    );
  }

  private onEvent(e: AdminEvent): void {
    if (e.event === 'connection-established') return;
    const pairs = Object.fromEntries(e.pairs);
    if (e.event === 'domain-start' || e.event === 'domain-shutdown') {
      const d = this.byName.get(e.subject);
      // The daemon's word, not a guess: its state is read again.
      if (d) this.later(`state:${d.name}`, () => this.readState(d));
      return;
    }
    if (DOMAIN_LIST_EVENTS.has(e.event)) {
      this.later('domains', () => this.readDomains());
      this.later('pools', async () => void (await this.readPools()));
      return;
    }
    if (VOLUME_EVENTS.has(e.event)) {
      this.emit('volume', { domain: e.subject, volume: pairs['volume'] ?? '', event: e.event });
      this.later('pools', async () => void (await this.readPools()));
      return;
    }
    if (POOL_EVENTS.has(e.event)) this.later('pools', async () => void (await this.readPools()));
  }

  private async readState(d: DomainView): Promise<void> {
    const state = await this.client.powerState(d.name);
    if (state === d.state) return;
    d.state = state;
    this.emit('domain', { name: d.name, state });
  }

  /** All domains the caller may read, with class, state, template and the pools of their volumes. */
  async readDomains(): Promise<void> {
    const details = await this.client.domainDetails('dom0', ['template']);
    this.domains = details.map(domainView);
    this.byName = new Map(this.domains.map((d) => [d.name, d]));
    this.emit('domains', { total: this.domains.length });
  }

  /** Each pool's driver and usage row; a pool crossing the threshold (either way) is announced. */
  async readPools(): Promise<PoolUsageRow[]> {
    const names = await this.client.pools();
    const views: PoolView[] = [];
    for (const name of names) {
      const [info, details] = await Promise.all([this.client.poolInfo(name), this.client.poolUsageDetails(name)]);
      views.push({ name, driver: info.driver, row: poolUsageRow(name, details, this.threshold) });
    }
    const before = new Map(this.pools.map((p) => [p.name, p.row.above]));
    this.pools = views;
    this.emit('pools', this.poolsReply());
    for (const p of views) {
      const was = before.get(p.name) ?? [];
      for (const part of ['data', 'metadata'] as const) {
        const now = p.row.above.includes(part);
        if (now !== was.includes(part)) {
          this.emit('threshold', { pool: p.name, part, above: now, percent: p.row[part]?.percent ?? null, threshold: this.threshold });
          if (now) this.log(`pool ${p.name}: ${part} ${p.row[part]?.percent}% used (threshold ${this.threshold}%)`);
        }
      }
    }
    return views.map((v) => v.row);
  }

  /** One history point per pool (the usage read now), saved. */
  private async sample(): Promise<void> {
    const rows = await this.readPools();
    const added: Record<string, UsagePoint> = this.history.add(Date.now(), rows);
    await this.history.save();
    this.emit('history', added);
  }

  poolsReply(): { threshold: number; pools: PoolView[] } {
    return { threshold: this.threshold, pools: this.pools };
  }

  /** A page of the domains whose name contains `q`. */
  domainPage(offset: number, limit: number, q: string): { total: number; offset: number; items: DomainView[] } {
    const all = q ? this.domains.filter((d) => d.name.includes(q)) : this.domains;
    return { total: all.length, offset, items: all.slice(offset, offset + limit) };
  }

  /** With their times where the policy allows ListSnapshotTimes, else the ids alone (ListSnapshots). */
  private async revisions(domain: string, volume: string): Promise<{ id: string; time: string }[]> {
    try {
      return await this.client.revisionTimes(domain, volume);
    } catch (e) {
      if (!(e instanceof PermissionDenied)) throw e;
      return (await this.client.revisions(domain, volume)).map((id) => ({ id, time: '' }));
    }
  }

  /** A page of the volumes of `pool` (by domain, then volume), each read now: size, usage, revisions. */
  async volumePage(pool: string, offset: number, limit: number): Promise<{ total: number; offset: number; items: VolumeView[] } | null> {
    if (!this.pools.some((p) => p.name === pool)) return null;
    const all: [string, string][] = [];
    for (const d of this.domains) for (const [vol, p] of d.volumes) if (p === pool) all.push([d.name, vol]);
    const page = all.slice(offset, offset + limit);
    const items: VolumeView[] = new Array<VolumeView>(page.length);
    // Two calls per volume, a few volumes at a time: one page must not flood the daemon.
    await forEachLimit([...page.keys()], 8, async (i) => {
      const [domain, volume] = page[i]!;
      try {
        const [info, revisions] = await Promise.all([this.client.volumeInfo(domain, volume), this.revisions(domain, volume)]);
        items[i] = { domain, volume, size: info.size, usage: info.usage, revisions };
      } catch (e) {
        items[i] = { domain, volume, size: null, usage: null, revisions: [], error: (e as Error).message };
      }
    });
    return { total: all.length, offset, items };
  }
}

function domainView(d: DomainDetails): DomainView {
  const volumes = [...d.volumePools];
  return {
    name: d.name,
    klass: d.klass,
    state: d.state,
    template: d.properties.get('template')?.value ?? '',
    pools: [...new Set(volumes.map(([, p]) => p))],
    volumes,
  };
}
