/**
 * The domains of the state: the ones listed, the names and qids reserved by
 * creates in flight (whose volumes are being made: saved with a 'create'
 * mark, not listed yet), the ones being removed; and who holds or uses each
 * (holds.ts). Names and qids are reserved synchronously, so two creates of
 * one name cannot both succeed.
 */
import type { DomainStorage } from '../storage/domain-storage.js';
import { QubesException, QubesVMAlreadyExistsError, QubesVMNotFoundError } from '../storage/errors.js';
import { printable } from '../storage/volume.js';
import { checkDomainName, type Domain, type GlobalProperties } from './domain.js';
import { DomainHolds, type HoldSpec } from './holds.js';
import type { PendingChange } from './state-file.js';

/**
 * Highest qid handed out. Qubes stops at 254 (its network addressing); storage
 * has no such limit, and hosts of thousands of domains are a goal here.
 */
export const MAX_QID = 65535;

/** A create in flight: its qid, and its storage once built (its volumes count as the pools' users). */
export interface Reservation {
  readonly qid: number;
  storage: DomainStorage | null;
}

export class DomainTable {
  /** The domains listed, by name (dom0 included). */
  readonly listed = new Map<string, Domain>();
  /** Names taken by creates in flight. */
  readonly reserved = new Map<string, Reservation>();
  /** Domains saved with a 'remove' mark, their volumes going. */
  readonly removing = new Set<Domain>();
  /** Domains whose volumes are being made (saved with a 'create' mark, not listed yet). */
  readonly creating = new Map<string, Domain>();
  /** Who holds or uses each domain, keyed by name (holds.ts). */
  private readonly holds = new DomainHolds();

  constructor(
    private readonly globals: GlobalProperties,
    private readonly checkOpen: () => void,
  ) {}

  /** Every domain, dom0 included, sorted by name. */
  list(): Domain[] {
    return [...this.listed.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** A domain by name or `uuid:UUID`; QubesVMNotFoundError if none. */
  get(spec: string): Domain {
    const d = spec.startsWith('uuid:')
      ? [...this.listed.values()].find((x) => x.uuid === spec.slice(5))
      : this.listed.get(spec);
    if (!d) throw new QubesVMNotFoundError(`no such domain: '${printable(spec)}'`);
    return d;
  }

  /** Whether d is one of the domains the state holds (listed, or being created). */
  isSaved(d: Domain): boolean {
    return this.listed.get(d.name) === d || this.creating.get(d.name) === d;
  }

  pendingOf(d: Domain): PendingChange | null {
    if (this.creating.get(d.name) === d) return 'create';
    if (this.removing.has(d)) return 'remove';
    return null;
  }

  /** A committed domain not being removed. */
  usable(name: string): Domain {
    const d = this.get(name);
    if (this.removing.has(d)) throw new QubesVMNotFoundError(`domain ${name} is being removed`);
    return d;
  }

  checkNewName(name: string): void {
    checkDomainName(name);
    if (this.listed.has(name) || this.reserved.has(name)) throw new QubesVMAlreadyExistsError(`domain ${name} already exists`);
  }

  nextQid(): number {
    const used = new Set<number>([...this.listed.values()].map((d) => d.qid));
    for (const r of this.reserved.values()) used.add(r.qid);
    for (let q = 1; q <= MAX_QID; q++) if (!used.has(q)) return q;
    throw new QubesException(`no free qid: at most ${MAX_QID} domains`);
  }

  /** Domains whose template chain contains d. */
  dependents(d: Domain): Domain[] {
    return [...this.listed.values()].filter((x) => x !== d && x.templateChain().includes(d));
  }

  /** Who uses a domain: template of, clone source of, default of, netvm of; what reads it now (use). */
  usersOf(d: Domain): string[] {
    const users: string[] = [];
    const name = d.name;
    for (const other of this.listed.values()) {
      if (other === d) continue;
      for (const [p, v] of other.setValues()) {
        if (v === name && other.propertyDef(p).type === 'vm' && other.prop(p) === name) users.push(`${other.name} (${p})`);
      }
    }
    for (const p of this.globals.setPropertyNames()) {
      if (this.globals.propertyDef(p).type === 'vm' && this.globals.prop(p) === d.name) users.push(`global property ${p}`);
    }
    users.push(...this.holds.usesOf(d.name));
    return users;
  }

  // ---- holding and using (holds.ts) ----------------------------------------------------

  /**
   * Runs `fn` holding the domain `d` (and `also`) against every other change
   * of it (see holds.ts: waits behind short changes, refused at once behind a
   * long one). Inside, `d` is still the domain of its name and not being
   * removed (else QubesVMNotFoundError): a caller that waited finds it as it
   * now is (e.g. its volume objects, rebuilt by a template change).
   */
  async hold<T>(d: Domain, spec: HoldSpec, fn: () => Promise<T>, also: readonly Domain[] = []): Promise<T> {
    this.checkOpen();
    return this.holds.run([d.name, ...also.map((x) => x.name)], spec, async () => {
      if (this.listed.get(d.name) !== d || this.removing.has(d))
        throw new QubesVMNotFoundError(`no such domain: '${printable(d.name)}'`);
      return fn();
    });
  }

  /**
   * Records that `what` reads the domain `d` (without changing it) until the
   * returned function is called: it cannot be removed meanwhile (its removal
   * lists `what` among its users), unless `end` is given: then its removal
   * calls `end` first (holds.ts). Refused while it is being removed.
   */
  use(d: Domain, what: string, end?: () => Promise<void>): () => void {
    this.checkOpen();
    if (this.listed.get(d.name) !== d || this.removing.has(d))
      throw new QubesVMNotFoundError(`no such domain: '${printable(d.name)}'`);
    return this.holds.use(d.name, what, end);
  }

  /** Ends the uses of `d` that its removal ends (exports); see holds.ts. */
  endUses(d: Domain): Promise<void> {
    return this.holds.endUses(d.name);
  }

  /** Uses several domains by name (no check that they exist: the caller's checks follow); one release for all. */
  useNamed(names: readonly string[], what: string): () => void {
    const releases: Array<() => void> = [];
    try {
      for (const n of names) releases.push(this.holds.use(n, what));
    } catch (e) {
      for (const r of releases) r();
      throw e;
    }
    return () => releases.forEach((r) => r());
  }

  /** The changes holding or waiting for domain `name`, the holder first (`import into volume private`). */
  holdersOf(name: string): Array<{ what: string; holding: boolean }> {
    return this.holds.holdersOf(name);
  }
}
