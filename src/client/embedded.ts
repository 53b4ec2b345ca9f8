/**
 * The embedded transport: no daemon, the runtime opened in this process
 * (the state of `baseDir`, its lock held until close()), each call run
 * through the very dispatch the daemon uses (same checks, same reply bytes).
 * On an empty or missing base directory it makes the state (with a pool
 * `default`); where qubes.xml is missing from a base directory that is not
 * empty, `init` is the tools' `qubesd --init`.
 */
import { unwrapReply } from '../admin/client.js';
import { createDispatchContext, runCall, silentLog, type DispatchContext } from '../admin/dispatch.js';
import { openRuntime, type Runtime } from '../daemon/runtime.js';
import type { Transport } from './transport.js';

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
  return {
    kind: 'embedded',
    call: async (m, dest, arg = '', payload = '') =>
      unwrapReply(await runCall(ctx, { method: m, arg, dest }, typeof payload === 'string' ? Buffer.from(payload) : payload)),
    callStream: async (m, dest, arg, payload) => unwrapReply(await runCall(ctx, { method: m, arg, dest }, payload)),
    events(dest, onEvent) {
      const off = rt.bus.subscribe((e) => {
        if (dest === 'dom0' || e.subject === dest) onEvent(e);
      });
      return { established: Promise.resolve(), close: off };
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await rt.close();
    },
  };
}
