/**
 * Who holds each domain: the one mechanism that keeps operations on a domain
 * (and on its volumes) from interleaving, in the daemon and in the embedded
 * tools alike (both run the same App).
 *
 * Two ways to hold a domain:
 *
 * - **Changes** (`run`): start, shutdown, kill, removal, property changes,
 *   and every volume operation that changes data or configuration (import,
 *   clone into, revert, resize, clear, Set.*). One at a time per domain, for
 *   the whole operation: an import holds its domain from before its first
 *   byte is read until the import has been committed or rolled back. A
 *   change arriving while another holds the domain waits its turn, unless a
 *   `long` change (a transfer paced by a client, which may stall) holds or
 *   waits for it: then it is refused at once with QubesVMInUseError naming
 *   the domain and that operation, so a stalled client never makes other
 *   callers hang. A `long` change arriving while only short ones hold waits
 *   for them.
 * - **Uses** (`use`): an operation that reads a domain without changing it
 *   (the source of a clone, an export being read, a template or clone source
 *   of a domain being created, a domain a property change is about to refer
 *   to). Uses never wait and never block changes; they keep the domain from
 *   being removed: a removal lists them as users and is refused, and a use
 *   asked for while a removal holds the domain is refused. A use given an
 *   `end` function (an export, which a client that died may never end) does
 *   not keep the domain: its removal ends it (`endUses`) and goes on.
 */
import { QubesVMInUseError } from '../storage/errors.js';
import { KeyedMutex } from '../storage/lock.js';

export interface HoldSpec {
  /** What the operation does, as a refusal names it: `import into volume private`. */
  readonly what: string;
  /** Paced by a client (a streamed import): later changes are refused rather than queued behind it. */
  readonly long?: boolean;
  /** While it holds, uses are refused (a removal). */
  readonly excludesUses?: boolean;
}

interface Use {
  readonly what: string;
  /** Ends the use (and releases it) when the domain is removed. */
  readonly end?: () => Promise<void>;
}

interface Holder {
  readonly spec: HoldSpec;
  /** Holding (else waiting). */
  active: boolean;
}

export class DomainHolds {
  private readonly mutex = new KeyedMutex();
  /** Per domain name: the changes holding or waiting, in order of arrival. */
  private readonly holders = new Map<string, Holder[]>();
  /** Per domain name: what uses it, one entry per use. */
  private readonly uses = new Map<string, Map<symbol, Use>>();

  /**
   * Runs `fn` holding every domain in `names` (taken in sorted order, so two
   * multi-domain changes cannot deadlock). Refused at once, before waiting,
   * when a long change holds or waits for one of them.
   */
  async run<T>(names: readonly string[], spec: HoldSpec, fn: () => Promise<T>): Promise<T> {
    const keys = [...new Set(names)];
    for (const n of keys) {
      const long = this.holders.get(n)?.find((h) => h.spec.long);
      if (long) throw busy(n, long.spec);
    }
    const me: Holder = { spec, active: false };
    for (const n of keys) {
      const list = this.holders.get(n);
      if (list) list.push(me);
      else this.holders.set(n, [me]);
    }
    try {
      return await this.mutex.runAll(keys, () => {
        me.active = true;
        return fn();
      });
    } finally {
      for (const n of keys) {
        const list = this.holders.get(n)!;
        list.splice(list.indexOf(me), 1);
        if (!list.length) this.holders.delete(n);
      }
    }
  }

  /**
   * Records that `what` uses the domain `name` until the returned function
   * is called (calling it again does nothing). Refused while a removal holds
   * the domain. With `end`, the use does not keep the domain from being
   * removed: the removal calls `end` (which must release the use) instead.
   */
  use(name: string, what: string, end?: () => Promise<void>): () => void {
    const holder = this.holders.get(name)?.find((h) => h.active);
    if (holder?.spec.excludesUses) throw busy(name, holder.spec);
    const key = Symbol(what);
    let map = this.uses.get(name);
    if (!map) this.uses.set(name, (map = new Map<symbol, Use>()));
    map.set(key, { what, ...(end ? { end } : {}) });
    return () => {
      const m = this.uses.get(name);
      if (!m?.delete(key)) return;
      if (!m.size) this.uses.delete(name);
    };
  }

  /** What uses the domain now and keeps it from being removed, in the order the uses began. */
  usesOf(name: string): string[] {
    return [...(this.uses.get(name)?.values() ?? [])].filter((u) => !u.end).map((u) => u.what);
  }

  /**
   * Ends, one after the other, the uses of domain `name` that a removal ends
   * (those given an `end`); the first failure is thrown after the others
   * were tried.
   */
  async endUses(name: string): Promise<void> {
    const ends = [...(this.uses.get(name)?.values() ?? [])].flatMap((u) => (u.end ? [u.end] : []));
    const failures: Error[] = [];
    for (const end of ends) {
      try {
        await end();
      } catch (e) {
        failures.push(e instanceof Error ? e : new Error(String(e)));
      }
    }
    if (failures.length) throw failures[0]!;
  }

  /** The changes holding or waiting for the domain, in order of arrival (the holder first). */
  holdersOf(name: string): Array<{ what: string; holding: boolean }> {
    return (this.holders.get(name) ?? []).map((h) => ({ what: h.spec.what, holding: h.active }));
  }
}

function busy(name: string, spec: HoldSpec): QubesVMInUseError {
  return new QubesVMInUseError(`domain ${name} is busy: ${spec.what}`);
}
