/**
 * The embedded transport: no daemon, the runtime opened in this process
 * (the state of `baseDir`, its lock held until close()), each call run
 * through the very dispatch the daemon uses (same checks, same reply bytes).
 * On an empty or missing base directory it makes the state (with a pool
 * `default`); where qubes.xml is missing from a base directory that is not
 * empty, `init` is the tools' `qubesd --init`.
 *
 * close() ends what is in flight as a daemon ends the calls of a dropped
 * connection: a streamed import is cut off (the volume keeps its old data,
 * the import file is removed), every call is waited for, and only then is
 * the state closed and its lock released. A tool interrupted mid-import
 * (Ctrl-C) thus leaves what a daemon would: the old volume and no debris.
 */
import type { Readable } from 'node:stream';
import { QubesDaemonCommunicationError, unwrapReply } from '../admin/client.js';
import { createDispatchContext, runCall, silentLog, type DispatchContext, type InProcessRequest } from '../admin/dispatch.js';
import { openRuntime, type Runtime } from '../daemon/runtime.js';
import type { Transport } from './transport.js';

/** For connect.ts, which loads this file only when it runs embedded. */
export { StateLockedError } from '../domain/state-lock.js';

/** Calls run in this process on the state in `baseDir` (its lock held until close()). */
export async function embeddedTransport(baseDir: string, notice?: (line: string) => void, init = false): Promise<Transport> {
  const rt: Runtime = await openRuntime({
    baseDir,
    createDefaultPool: true,
    ...(init ? { init: true } : {}),
    ...(notice ? { notice } : {}),
  });
  const ctx: DispatchContext = createDispatchContext({ methods: rt.methods, log: silentLog });
  let closed = false;
  /** Calls in flight: what close() aborts and waits for. */
  const inFlight = new Set<{ readonly abort: AbortController; readonly done: Promise<unknown>; readonly payload?: Readable }>();
  const run = async (req: InProcessRequest, payload: Buffer | Readable): Promise<Buffer> => {
    if (closed) throw new QubesDaemonCommunicationError('the embedded client is closed');
    const abort = new AbortController();
    const done = runCall(ctx, req, payload, abort.signal);
    const entry = { abort, done, ...(Buffer.isBuffer(payload) ? {} : { payload }) };
    inFlight.add(entry);
    try {
      return unwrapReply(await done);
    } finally {
      inFlight.delete(entry);
    }
  };
  return {
    kind: 'embedded',
    call: (m, dest, arg = '', payload = '') => run({ method: m, arg, dest }, typeof payload === 'string' ? Buffer.from(payload) : payload),
    callStream: (m, dest, arg, payload) => run({ method: m, arg, dest }, payload),
    events(dest, onEvent) {
      const off = rt.bus.subscribe((e) => {
        if (dest === 'dom0' || e.subject === dest) onEvent(e);
      });
      return { established: Promise.resolve(), close: off };
    },
    close: async () => {
      if (closed) return;
      closed = true;
      const calls = [...inFlight];
      for (const c of calls) {
        c.abort.abort();
        c.payload?.destroy(); // as a dropped connection ends the payload
      }
      await Promise.allSettled(calls.map((c) => c.done));
      await rt.close();
    },
  };
}
