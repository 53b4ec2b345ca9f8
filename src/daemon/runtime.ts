/**
 * Everything the admin daemon (and a tool running without one) works on,
 * built from one base directory:
 *
 *   BASE/qubes.xml         the state file (and its lock, qubes.xml.lock; mode 0600)
 *   BASE/backup/           backups of the last good states (state-backups.ts)
 *   BASE/running-domains   which domains run (src/runtime/bookkeeping.ts)
 *   BASE/storage.conf      R3.2 pools, when the file exists (QUBES_STORAGE_CONF names another;
 *                          root on /var/lib/qubes: /etc/qubes/storage.conf)
 *   BASE/pools/default     the first-use `default` pool (createDefaultPool)
 *   BASE/vm-kernels        the kernels of the `linux-kernel` pool a new state gets (createDefaultPool)
 *   BASE/qubesd.sock       the daemon's socket (defaultSocketPath)
 *   BASE/qubesd.internal.sock  its internal socket, beside it (internalSocketPath)
 *
 * `openRuntime` takes the state lock (a second runtime on the same base
 * directory, in this or another process, gets StateLockedError) and holds it
 * until `close()`. A new state is made only in an empty base directory
 * (state-dir.ts says what counts) or with `init`; a state file that is
 * missing there, or cannot be read, refuses the open (StateFileError) with
 * the way to restore it.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { defaultBaseDir, defaultSocketPath, internalSocketPath, defaultInternalSocketPath } from '../admin/paths.js';
import { EventBus } from '../admin/events.js';
import type { MethodTable } from '../admin/dispatch.js';
import { allMethods, type AllMethodsOptions } from '../admin/methods/index.js';
import { QubesApp } from '../domain/app.js';
import type { DomainRunner } from '../domain/runner.js';
import { RUN_STATE_FILE, runState } from '../runtime/bookkeeping.js';
import { LOG_DIR, QEMU_DIR, qemuRuntime, type QemuRuntime } from '../runtime/qemu.js';
import type { RuntimeSetting } from '../runtime/setting.js';
import { exists, fsyncDir, reflinkSupported, sweepAtomicTemps } from '../files/files.js';
import { LinuxKernelPool } from '../drivers/linux-kernel/pool.js';
import { newestKernel } from '../drivers/linux-kernel/versions.js';
import { QubesException } from '../storage/errors.js';
import { sweepEphemeralLeftovers } from '../storage/ephemeral.js';
import { KERNELS_DIR } from '../domain/state-dir.js';
import { DriverRegistry, defaultNodeModulesDirs } from '../registry/drivers.js';
import { defaultStorageConfPath } from '../registry/storage-conf.js';
import { POOL_DIR_MODE } from '../drivers/file-reflink/pool.js';

export interface RuntimeOptions {
  /** Where the state, the default pool and the socket live. */
  readonly baseDir: string;
  /** The state file; default BASE/qubes.xml. */
  readonly stateFile?: string;
  /**
   * storage.conf to load pools from, if it exists; default
   * `defaultStorageConfPath(baseDir)`. `null`: none.
   */
  readonly storageConf?: string | null;
  /** node_modules directories scanned for driver packages; default this project's. */
  readonly nodeModules?: readonly string[];
  /** Make a new state even if the base directory holds traces of an earlier one (qubesd --init). */
  readonly init?: boolean;
  /** Configuration files that may lie in the base directory before the first start (the policy file). */
  readonly configFiles?: readonly string[];
  /**
   * When no pool exists yet, add a file-reflink pool `default` in
   * BASE/pools/default; and when the state is new, the `linux-kernel` pool
   * at BASE/vm-kernels, as Qubes' first start does (addKernelPool).
   */
  readonly createDefaultPool?: boolean;
  /** Gets each notice line for the user (also returned in `notices`). */
  readonly notice?: (line: string) => void;
  /** The hypervisor seam (tests); wins over `domainRuntime`. */
  readonly runner?: DomainRunner;
  /**
   * What runs domains (src/runtime/README.md): `bookkeeping` (default)
   * records the power state only; `qemu` boots them (the daemon only: a
   * tool's process would end its guests with it).
   */
  readonly domainRuntime?: RuntimeSetting;
  /** Sizes of new root and private volumes (default 10 GiB and 2 GiB). */
  readonly sizes?: { readonly root?: number; readonly private?: number };
  /** Options of the method tables (clone token lifetime, import progress step). */
  readonly methods?: AllMethodsOptions;
}

export interface Runtime {
  readonly baseDir: string;
  readonly app: QubesApp;
  readonly registry: DriverRegistry;
  /** admin.Events: every App event is forwarded here. */
  readonly bus: EventBus;
  /** Every admin method, for an AdminServer or runCall. */
  readonly methods: MethodTable;
  /** Lines for the user (the default pool lacks reflink, no backup of the state could be taken). */
  readonly notices: readonly string[];
  /** Saves nothing by itself: releases the state lock and stops forwarding events. Idempotent. */
  close(): Promise<void>;
}

// Re-exported: where the daemon and tools look by default (paths.ts, kept light for the tools).
export { defaultBaseDir, defaultSocketPath, internalSocketPath, defaultInternalSocketPath };

export async function openRuntime(opts: RuntimeOptions): Promise<Runtime> {
  const baseDir = path.resolve(opts.baseDir);
  await fs.mkdir(baseDir, { recursive: true, mode: 0o750 });
  const registry = await DriverRegistry.open({ nodeModules: opts.nodeModules ?? defaultNodeModulesDirs() });
  const confFile = opts.storageConf === undefined ? defaultStorageConfPath(baseDir) : opts.storageConf;
  const useConf = confFile !== null && (await exists(confFile));
  const notices: string[] = [];
  const notice = (line: string): void => {
    notices.push(line);
    opts.notice?.(line);
  };
  const qemu: QemuRuntime | null =
    !opts.runner && opts.domainRuntime?.kind === 'qemu' ? await qemuRuntime({ baseDir, ...opts.domainRuntime.qemu, notice }) : null;
  // Without a hypervisor runner, power state is recorded in the base directory (src/runtime/bookkeeping.ts).
  const power = opts.runner || qemu ? null : runState(baseDir);
  const app = await QubesApp.open({
    stateFile: opts.stateFile ?? path.join(baseDir, 'qubes.xml'),
    pools: registry,
    runner: opts.runner ?? qemu?.runner ?? power!.runner,
    notice,
    ...(opts.init ? { init: true } : {}),
    ...(opts.configFiles ? { configFiles: opts.configFiles } : {}),
    ...(opts.sizes ? { sizes: opts.sizes } : {}),
    ...(useConf ? { storageConf: { file: confFile, context: { registry, baseDir } } } : {}),
    baseDir,
    // What the runtime keeps in the base directory: no pool may be at, in or around it.
    baseKeeps: ['qubesd.sock', 'qubesd.internal.sock', RUN_STATE_FILE, 'storage.conf', QEMU_DIR, LOG_DIR],
  });
  const bus = new EventBus();
  const stopForwarding = app.events.on('*', (e) => bus.emit(e.subject, e.event, e.pairs));
  try {
    // Guests of the qemu runtime (they outlive qubesd) are not seen by bookkeeping: refused, not shown Halted under them.
    if (power) await refuseRecordedGuests(baseDir);
    // Written only under the state lock, which the App now holds: a temporary left is a crash's.
    if (power) await sweepAtomicTemps(path.join(baseDir, RUN_STATE_FILE));
    await power?.restore(app);
    // Guests an earlier daemon left running: their domains are Running again.
    await qemu?.adopt(app, notice);
    if (power || qemu) {
      // dm-crypt mappings of ephemeral volumes a crashed process left (their domains do not run): removed, keys gone.
      const halted = app.domainList().filter((d) => !d.isRunning);
      const { failed } = await sweepEphemeralLeftovers(halted.flatMap((d) => [...d.storage.volumes.values()]));
      for (const line of failed) notice(line);
    }
    if (opts.createDefaultPool && app.pools().length === 0) {
      const line = await addDefaultPool(app, path.join(baseDir, 'pools', 'default'));
      if (line) notice(line);
    }
    if (opts.createDefaultPool && app.madeNewState) {
      const line = await addKernelPool(app, path.join(baseDir, KERNELS_DIR));
      if (line) notice(line);
    }
  } catch (e) {
    stopForwarding();
    await app.close();
    throw e;
  }
  const methods = allMethods({ app, registry, bus }, opts.methods);
  let closing: Promise<void> | undefined;
  return {
    baseDir,
    app,
    registry,
    bus,
    methods,
    notices,
    close() {
      closing ??= (async () => {
        // Guests outlive the daemon (as VMs outlive qubesd under Xen): the next one finds them again.
        qemu?.close();
        stopForwarding();
        await app.close();
      })();
      return closing;
    },
  };
}

/**
 * Refuses a bookkeeping runtime (the embedded tools, `qubesd --runtime
 * bookkeeping`) on a base directory whose qemu runtime recorded guests
 * (BASE/qemu/NAME.pid): those guests may still be writing their volumes, or
 * be owed their storage stop, which only the qemu runtime sees and does;
 * under bookkeeping their domains would look Halted and could be started
 * or changed under them.
 */
async function refuseRecordedGuests(baseDir: string): Promise<void> {
  const names = (await fs.readdir(path.join(baseDir, QEMU_DIR)).catch(() => [] as string[]))
    .filter((n) => n.endsWith('.pid'))
    .map((n) => n.slice(0, -'.pid'.length))
    .sort();
  if (names.length === 0) return;
  throw new QubesException(
    `${path.join(baseDir, QEMU_DIR)} records guests of the qemu runtime (${names.join(', ')}), which this runtime (bookkeeping) cannot see: ` +
      `use qubesd with the qemu runtime (it finds them again, or finishes their stop), not the tools without a daemon`,
  );
}

/**
 * Adds the first-use pool `default` (file-reflink) in `dir`: setup_check=True
 * where the filesystem makes reflink copies, else setup_check=False and a
 * notice line saying so (returned).
 */
async function addDefaultPool(app: QubesApp, dir: string): Promise<string | null> {
  await fs.mkdir(dir, { recursive: true, mode: POOL_DIR_MODE });
  const reflink = await reflinkSupported(dir);
  await app.addPool('file-reflink', 'default', { dir_path: dir, setup_check: reflink });
  if (reflink) return null;
  return (
    `note: the filesystem of ${dir} cannot make reflink copies; the default pool uses full sparse copies ` +
    `(setup_check=False): starts and clones are slower and use more space`
  );
}

/**
 * The kernels directory's mode when made here: that of the base directory's
 * other directories. Qubes ships it root:qubes 2770 so that its `qubes` group
 * may install kernels; no such group is assumed here, and nothing the daemon
 * makes carries setuid/setgid bits (test/security/modes.test.ts).
 */
export const KERNELS_DIR_MODE = POOL_DIR_MODE;
const KERNEL_POOL = 'linux-kernel';

/**
 * A new state's kernel pool, as Qubes makes at its first start: the pool
 * `linux-kernel` (driver linux-kernel) at `dir`, made (durably) when
 * missing; default_pool_kernel set to it; and, when a kernel is installed
 * there, default_kernel set to the newest (newestKernel: Qubes' installer
 * rule). Only for a new state: an existing one is never changed behind its
 * user's back. Each step is its own crash-safe save, in an order whose every
 * prefix is a working state (the pool is found as the kernel pool even
 * before default_pool_kernel names it). Where the pool cannot be added (a
 * storage.conf pool of that name or in that place), a notice line says why
 * (returned) and the state goes on without it.
 */
async function addKernelPool(app: QubesApp, dir: string): Promise<string | null> {
  if (app.hasPool(KERNEL_POOL)) return `note: no kernel pool made: a pool named ${KERNEL_POOL} already exists`;
  let pool;
  let made = false;
  try {
    made = await makeDirDurably(dir, KERNELS_DIR_MODE);
    if (made) await fs.chmod(dir, KERNELS_DIR_MODE);
    pool = await app.addPool('linux-kernel', KERNEL_POOL, { dir_path: dir });
  } catch (e) {
    // The directory made for the pool goes with it (it is empty: nobody else knows it yet).
    if (made) await fs.rmdir(dir).catch(() => undefined);
    if (!(e instanceof QubesException)) throw e;
    return `note: no kernel pool made at ${dir}: ${e.message}`;
  }
  await app.setProperty(app.globals, 'default_pool_kernel', KERNEL_POOL);
  const newest = pool instanceof LinuxKernelPool ? await newestKernel(pool) : null;
  if (newest !== null) await app.setProperty(app.globals, 'default_kernel', newest);
  return null;
}

/** mkdir `dir` (its parent must exist) and fsync the parent; false if it was there. */
async function makeDirDurably(dir: string, mode: number): Promise<boolean> {
  try {
    await fs.mkdir(dir, { mode });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  await fsyncDir(path.dirname(dir));
  return true;
}
