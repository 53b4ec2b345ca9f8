/**
 * Events for `admin.Events`: an in-process bus that the model emits on, and
 * the method that streams the bus to one connection.
 */
import { checkEvent, eventPairs, type AdminEvent, type EventPairs } from './protocol/reply.js';
import { eventsMethod as eventsSpec, type MethodSpec } from './dispatch.js';
import type { MethodShape } from './method-shape.js';

export type EventListener = (event: AdminEvent) => void;

export class EventBus {
  private readonly listeners = new Set<EventListener>();

  /**
   * Sends an event to every subscriber. `subject` is the domain name, or
   * empty for global events. Throws TypeError for what cannot be framed
   * (NUL bytes, empty event name or key). A listener that throws is dropped.
   */
  emit(subject: string, event: string, pairs?: EventPairs): void {
    const list = eventPairs(pairs);
    checkEvent(subject, event, list);
    const ev: AdminEvent = { subject, event, pairs: list };
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch {
        this.listeners.delete(l);
      }
    }
  }

  /** Returns the function that unsubscribes. */
  subscribe(listener: EventListener): () => void {
    const own: EventListener = (e) => listener(e);
    this.listeners.add(own);
    return () => {
      this.listeners.delete(own);
    };
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}

export interface EventsMethodOptions {
  /**
   * Refuses a destination (e.g. QubesVMNotFoundError for an unknown domain)
   * before streaming starts: the declaration's `lookupDest` (dest `domain`);
   * without it any destination is taken (dest `any`).
   */
  readonly checkDest?: (dest: string) => void | Promise<void>;
}

/**
 * The `admin.Events` method: first `connection-established` (empty subject,
 * no pairs), then every event of the bus (DEST dom0) or only those whose
 * subject is DEST, until the connection ends.
 */
export function adminEventsMethod(bus: EventBus, opts: EventsMethodOptions = {}): MethodSpec {
  // As Qubes declares it: global, read; no argument is checked (one is ignored, as before).
  const shape: MethodShape = {
    arg: 'any',
    argNames: 'ignored',
    payload: 'none',
    scope: 'global',
    access: 'read',
    ...(opts.checkDest ? { dest: 'domain', lookupDest: opts.checkDest } : { dest: 'any' }),
  };
  return eventsSpec(shape, async (call, send) => {
    if (call.signal.aborted) return;
    const all = call.dest === 'dom0';
    const unsubscribe = bus.subscribe((e) => {
      if (all || e.subject === call.dest) send(e);
    });
    try {
      send({ subject: '', event: 'connection-established', pairs: [] });
      await new Promise<void>((resolve) => {
        if (call.signal.aborted) resolve();
        else call.signal.addEventListener('abort', () => resolve(), { once: true });
      });
    } finally {
      unsubscribe();
    }
  });
}
