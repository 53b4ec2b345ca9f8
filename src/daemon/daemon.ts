/**
 * The admin daemon as a function: opens the runtime of a base directory,
 * serves its methods on the socket, and stops cleanly (stop accepting,
 * finish the calls in flight, save, release the state lock, remove the
 * socket). qubesd.ts wraps it with argument parsing and signals.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { stderrLog, type AdminLog } from '../admin/dispatch.js';
import { loadPolicy } from '../admin/policy.js';
import { AdminServer } from '../admin/server.js';
import { peerCredentialsReader } from '../admin/peer.js';
import type { AccessPolicy } from '../admin/policy.js';
import { internalMethods, type InternalMethods } from '../admin/methods/internal.js';
import { defaultBaseDir, defaultSocketPath, internalSocketPath, openRuntime, type Runtime, type RuntimeOptions } from './runtime.js';

export interface DaemonOptions {
  /** Default: defaultBaseDir(). */
  readonly baseDir?: string;
  /** Default: defaultSocketPath(baseDir). */
  readonly socketPath?: string;
  /**
   * The internal socket (internal.vm.volume.ImportBegin/End, for the import
   * service); default QUBESD_INTERNAL_SOCKET, else beside the admin socket
   * (internalSocketPath: qubesd.sock -> qubesd.internal.sock). Mode 0600.
   */
  readonly internalSocketPath?: string;
  /** An access policy file (see src/admin/README.md); none: DEFAULT_POLICY, only dom0 may call. */
  readonly policyFile?: string;
  /**
   * Group of the socket (a name from /etc/group, or a gid): its members may
   * call as dom0. Default: see defaultSocketGroup().
   */
  readonly socketGroup?: string | number;
  /** storage.conf to load; default defaultStorageConfPath(baseDir) when it exists. */
  readonly storageConf?: string;
  /** Make a new state even if the base directory holds traces of an earlier one (qubesd --init). */
  readonly init?: boolean;
  /** Stack traces in error replies and the log. */
  readonly debug?: boolean;
  readonly log?: AdminLog;
  /** More runtime options (tests: sizes, method options). */
  readonly runtime?: Partial<RuntimeOptions>;
  /** After this long, calls still running at stop are aborted; default 60 s. */
  readonly stopTimeoutMs?: number;
}

export interface Daemon {
  readonly socketPath: string;
  readonly internalSocketPath: string;
  /** The imports begun on the internal socket and not yet ended. */
  readonly imports: InternalMethods;
  readonly runtime: Runtime;
  readonly server: AdminServer;
  /** Re-reads the policy file (SIGHUP); without one, does nothing. */
  reloadPolicy(): Promise<void>;
  /** Stops accepting, waits for calls in flight, saves, closes the App, removes the socket. Idempotent. */
  stop(): Promise<void>;
}

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const log = opts.log ?? stderrLog;
  const baseDir = path.resolve(opts.baseDir ?? defaultBaseDir());
  const socketPath = path.resolve(opts.socketPath ?? defaultSocketPath(baseDir));
  const internalPath = path.resolve(opts.internalSocketPath ?? (process.env['QUBESD_INTERNAL_SOCKET'] || internalSocketPath(socketPath)));
  if (internalPath === socketPath) throw new Error(`the internal socket cannot be the admin socket (${socketPath})`);
  // The policy first: a bad file must not leave anything half started.
  const policy = opts.policyFile !== undefined ? await loadPolicy(opts.policyFile) : undefined;
  const socketGroup = opts.socketGroup !== undefined ? await groupId(opts.socketGroup) : await defaultSocketGroup();
  // No serving without knowing who calls (fail closed), and no state opened for nothing.
  const peerCredentials = await peerCredentialsReader();
  const runtime = await openRuntime({
    createDefaultPool: true,
    notice: (line) => log.info(line),
    ...opts.runtime,
    ...(opts.init ? { init: true } : {}),
    ...(opts.policyFile !== undefined ? { configFiles: [path.resolve(opts.policyFile)] } : {}),
    baseDir,
    ...(opts.storageConf !== undefined ? { storageConf: opts.storageConf } : {}),
  });
  let server: AdminServer | undefined;
  let internal: AdminServer | undefined;
  let imports: InternalMethods;
  try {
    await fs.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o755 });
    server = new AdminServer({
      socketPath,
      methods: runtime.methods,
      policy,
      log,
      debug: opts.debug ?? false,
      peerCredentials,
      ...(socketGroup !== undefined ? { socketGroup } : {}),
    });
    const admin = server;
    imports = internalMethods(
      { app: runtime.app, registry: runtime.registry, bus: runtime.bus },
      { adminPolicy: () => admin.context.policy, adminMethods: runtime.methods, log },
    );
    // Root and the daemon's user only: these calls stand for admin calls already allowed.
    await fs.mkdir(path.dirname(internalPath), { recursive: true, mode: 0o755 });
    internal = new AdminServer({
      socketPath: internalPath,
      methods: imports.methods,
      policy: INTERNAL_POLICY,
      log,
      debug: opts.debug ?? false,
      peerCredentials,
      socketMode: 0o600,
      adminOnly: true,
    });
    // The admin socket last: once it is announced (`listening on PATH`), the daemon is ready.
    await internal.listen();
    await server.listen();
  } catch (e) {
    await server?.close({ timeoutMs: 0 });
    await internal?.close({ timeoutMs: 0 });
    await runtime.close();
    throw e;
  }
  const admin = server;
  const internalServer = internal;
  let stopping: Promise<void> | undefined;
  return {
    socketPath,
    internalSocketPath: internalPath,
    imports,
    runtime,
    server: admin,
    async reloadPolicy() {
      if (opts.policyFile === undefined) return;
      try {
        admin.setPolicy(await loadPolicy(opts.policyFile));
        log.info(`policy reloaded from ${opts.policyFile}`);
      } catch (e) {
        log.error(`policy not reloaded, the old one stays: ${(e as Error).message}`);
      }
    },
    stop() {
      stopping ??= (async () => {
        try {
          await Promise.all([
            admin.close({ timeoutMs: opts.stopTimeoutMs ?? 60_000 }),
            internalServer.close({ timeoutMs: opts.stopTimeoutMs ?? 60_000 }),
          ]);
        } finally {
          // Imports begun through the service and not ended: rolled back, the old data kept.
          await imports.endAll('qubesd is stopping');
          try {
            await runtime.app.save();
          } catch (e) {
            log.error(`saving the state at stop failed: ${(e as Error).message}`);
          }
          await runtime.close();
        }
      })();
      return stopping;
    },
  };
}

/** The internal socket serves root and the daemon's user only (AdminServer adminOnly); no further rule. */
const INTERNAL_POLICY: AccessPolicy = {
  rules: [{ source: '*', method: '*', dest: '*', line: 0 }],
  relays: [],
  origin: 'the internal socket',
};

/** The group file consulted for group names (local groups only: no NSS, LDAP or the like). */
export const GROUP_FILE = '/etc/group';

/**
 * The socket's group when none is given: for root, `qubes` if that group
 * exists (as on Qubes), else root's group 0; for another user, undefined
 * (the socket keeps the user's own group: it could not give it away).
 */
export async function defaultSocketGroup(groupFile = GROUP_FILE): Promise<number | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  return (await lookupGroup('qubes', groupFile)) ?? 0;
}

/** A gid given as a number or a group name; an unknown name is an error saying so. */
export async function groupId(group: string | number, groupFile = GROUP_FILE): Promise<number> {
  if (typeof group === 'number' || /^[0-9]+$/.test(group)) {
    const gid = Number(group);
    if (!Number.isSafeInteger(gid) || gid > 0xfffffffe) throw new Error(`bad group id ${group}`);
    return gid;
  }
  const gid = await lookupGroup(group, groupFile);
  if (gid === undefined) throw new Error(`no such group: ${JSON.stringify(group)} (not in ${groupFile})`);
  return gid;
}

async function lookupGroup(name: string, groupFile: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await fs.readFile(groupFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  for (const line of text.split('\n')) {
    const [groupName, , gid] = line.split(':');
    if (groupName === name && gid !== undefined && /^[0-9]+$/.test(gid)) return Number(gid);
  }
  return undefined;
}
