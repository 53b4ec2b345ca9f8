/**
 * An in-process qubesd for the domain method tests: a QubesApp on a state
 * file in a test directory with a file-reflink pool `default`, the context
 * built the way the daemon's runtime builds it (driver registry without
 * package scan, App events forwarded to the bus), and an AdminServer on a
 * real Unix socket serving `domainMethods(ctx)` and `admin.Events`. Calls
 * go over the socket as raw bytes, so tests see the exact reply bytes.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';
import { AdminClient, AdminServer, EventBus, adminEventsMethod, silentLog, type AdminEvent } from '../../../src/admin/index.js';
import { decodeReply, encodeRequest } from '../../../src/admin/protocol/index.js';
import { domainMethods } from '../../../src/admin/methods/domains.js';
import { allMethods } from '../../../src/admin/methods/index.js';
import type { MethodContext } from '../../../src/admin/methods/context.js';
import { QubesApp, type QubesAppOptions } from '../../../src/domain/app.js';
import { DriverRegistry } from '../../../src/registry/drivers.js';
import type { TestFs } from '../../helpers/filesystems.js';
import { MiB } from '../../helpers/data.js';
import { rawExchange } from '../helpers.js';

export const ROOT_SIZE = 8 * MiB;
export const PRIVATE_SIZE = 4 * MiB;

export interface CallError {
  readonly name: string;
  readonly message: string;
}

export interface Daemon {
  readonly dir: string;
  readonly stateFile: string;
  readonly poolDir: string;
  readonly socketPath: string;
  app: QubesApp;
  ctx: MethodContext;
  client: AdminClient;
  /** The exact reply bytes of one call over the socket. */
  raw(method: string, dest: string, arg?: string, payload?: string | Uint8Array, source?: string): Promise<Buffer>;
  /** The result text of a call that must succeed. */
  ok(method: string, dest: string, arg?: string, payload?: string | Uint8Array): Promise<string>;
  /** The error of a call that must fail. */
  fail(method: string, dest: string, arg?: string, payload?: string | Uint8Array): Promise<CallError>;
  /** Subscribes to admin.Events (DEST dom0 by default); resolves once established. */
  events(dest?: string): Promise<EventLog>;
  /** Stops the server and closes the App, then opens both again from the state file. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface EventLog {
  readonly events: AdminEvent[];
  /** Resolves with the first event (already received or to come) that matches. */
  waitFor(match: (e: AdminEvent) => boolean, timeoutMs?: number): Promise<AdminEvent>;
  close(): Promise<void>;
}

/** `subject event k=v k=v`, for readable assertions. */
export function showEvent(e: AdminEvent): string {
  return [e.subject, e.event, ...e.pairs.map(([k, v]) => `${k}=${v}`)].join(' ');
}

let registry: Promise<DriverRegistry> | undefined;

async function openContext(stateFile: string, opts: DaemonOptions): Promise<MethodContext> {
  registry ??= DriverRegistry.open({ nodeModules: [] });
  const reg = await registry;
  const app = await QubesApp.open({
    stateFile,
    pools: reg,
    sizes: { root: ROOT_SIZE, private: PRIVATE_SIZE },
    ...(opts.writeFile ? { writeFile: opts.writeFile } : {}),
  });
  const bus = new EventBus();
  app.events.on('*', (e) => bus.emit(e.subject, e.event, e.pairs));
  return { app, registry: reg, bus };
}

export interface DaemonOptions {
  /** Serve every method of the daemon (pools, volumes too), not only the domain methods. */
  readonly allMethods?: boolean;
  /** How the App writes its state (a test's seam for failing saves). */
  readonly writeFile?: QubesAppOptions['writeFile'];
}

/** A daemon on `dir` (a fresh directory on the test filesystem). */
export async function startDaemon(tfs: TestFs, dir: string, opts: DaemonOptions = {}): Promise<Daemon> {
  const stateFile = path.join(dir, 'qubes.xml');
  const poolDir = path.join(dir, 'pool');
  // Unix socket paths are short (108 bytes): keep the socket in /tmp.
  const sockDir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-dm-'));
  const socketPath = path.join(sockDir, 'qubesd.sock');

  let ctx = await openContext(stateFile, opts);
  await ctx.app.addPool('file-reflink', 'default', { dir_path: poolDir, setup_check: tfs.reflink });
  let server = await serve(ctx, socketPath, opts);
  const client = new AdminClient({ socketPath, timeoutMs: 60_000 });

  const raw = async (method: string, dest: string, arg = '', payload: string | Uint8Array = '', source = 'dom0') => {
    const req = encodeRequest({ method, arg, source, dest }, payload);
    return (await rawExchange(socketPath, req, { timeoutMs: 60_000 })).data;
  };

  const d: Daemon = {
    dir,
    stateFile,
    poolDir,
    socketPath,
    app: ctx.app,
    ctx,
    client,
    raw,
    async ok(method, dest, arg = '', payload = '') {
      const r = decodeReply(await raw(method, dest, arg, payload));
      if (r.kind !== 'ok') assert.fail(`${method}+${arg} ${dest}: expected success, got ${r.name}: ${r.message}`);
      return r.result.toString('utf8');
    },
    async fail(method, dest, arg = '', payload = '') {
      const r = decodeReply(await raw(method, dest, arg, payload));
      if (r.kind !== 'error') assert.fail(`${method}+${arg} ${dest}: expected an error, got success '${r.result.toString()}'`);
      assert.equal(r.traceback, '', 'no traceback without debug');
      return { name: r.name, message: r.message };
    },
    async events(dest = 'dom0') {
      const events: AdminEvent[] = [];
      const waiters: Array<{ match: (e: AdminEvent) => boolean; resolve: (e: AdminEvent) => void }> = [];
      const handle = client.events(dest, (e) => {
        events.push(e);
        for (const w of [...waiters]) {
          if (w.match(e)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      });
      await handle.established;
      return {
        events,
        waitFor(match, timeoutMs = 10_000) {
          const seen = events.find(match);
          if (seen) return Promise.resolve(seen);
          return new Promise<AdminEvent>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error('event not seen in time')), timeoutMs);
            waiters.push({
              match,
              resolve: (e) => {
                clearTimeout(timer);
                resolve(e);
              },
            });
          });
        },
        async close() {
          handle.close();
          await handle.done;
        },
      };
    },
    async restart() {
      await server.close({ timeoutMs: 5000 });
      await ctx.app.close();
      ctx = await openContext(stateFile, opts);
      d.ctx = ctx;
      d.app = ctx.app;
      server = await serve(ctx, socketPath, opts);
    },
    async stop() {
      await server.close({ timeoutMs: 5000 });
      await ctx.app.close();
      await fs.rm(sockDir, { recursive: true, force: true });
    },
  };
  return d;
}

async function serve(ctx: MethodContext, socketPath: string, opts: DaemonOptions): Promise<AdminServer> {
  const server = new AdminServer({
    socketPath,
    methods: opts.allMethods ? allMethods(ctx) : { ...domainMethods(ctx), 'admin.Events': adminEventsMethod(ctx.bus) },
    log: silentLog,
    lingerMs: 1000,
  });
  await server.listen();
  return server;
}
