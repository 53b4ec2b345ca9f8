/**
 * The App's event hook. Every change the admin layer must announce is
 * emitted here as (subject, event, pairs): subject is a domain name, or
 * empty for global events, domain-add / domain-delete included (as Qubes
 * sends them: the stock client refreshes its domain list only then). `pre-` events (domain-pre-start, domain-pre-shutdown) are
 * awaited and a handler that throws vetoes the operation; the others are
 * announcements: a handler's error or rejected promise is ignored.
 *
 * Forwarding to admin.Events is one line:
 * `app.events.on('*', (e) => bus.emit(e.subject, e.event, e.pairs))`.
 */

export interface AppEvent {
  readonly subject: string;
  readonly event: string;
  readonly pairs: Readonly<Record<string, string>>;
}

export type AppEventHandler = (event: AppEvent) => void | Promise<void>;

export class AppEvents {
  private readonly handlers = new Map<string, Set<AppEventHandler>>();

  /** Subscribes to one event name, or to all with '*'. Returns the unsubscribe function. */
  on(event: string, handler: AppEventHandler): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    const own: AppEventHandler = (e) => handler(e);
    set.add(own);
    return () => {
      set!.delete(own);
    };
  }

  private listeners(event: string): AppEventHandler[] {
    return [...(this.handlers.get(event) ?? []), ...(this.handlers.get('*') ?? [])];
  }

  /** Announces an event; handlers cannot stop it. */
  emit(subject: string, event: string, pairs: Record<string, string> = {}): void {
    const e: AppEvent = { subject, event, pairs: { ...pairs } };
    for (const h of this.listeners(event)) {
      try {
        const r = h(e);
        if (r && typeof (r as Promise<void>).catch === 'function') (r as Promise<void>).catch(() => undefined);
      } catch {
        // an announcement cannot fail
      }
    }
  }

  /** Fires a `pre-` event: awaits every handler; the first error is thrown (the operation is refused). */
  async fireVetoable(subject: string, event: string, pairs: Record<string, string> = {}): Promise<void> {
    const e: AppEvent = { subject, event, pairs: { ...pairs } };
    for (const h of this.listeners(event)) await h(e);
  }
}
