/**
 * internal.vm.volume.ImportBegin / ImportEnd: the daemon's half of an import
 * made through the qrexec service `admin.vm.volume.Import` (or
 * `ImportWithSize`), which is how Qubes' own admin client imports in dom0:
 * it runs the service program with the data on its stdin, and the program
 * asks the daemon for a path (ImportBegin), writes the data there itself,
 * and ends with ImportEnd, whose reply goes back to the client. Served only
 * on the internal socket (qubesd.internal.sock, root and the daemon's user
 * only); the admin socket does not have these methods, nor this socket the
 * admin methods, as in Qubes (qubes/api/internal.py).
 *
 *   ImportBegin  DEST domain, ARG volume, payload: the size in bytes
 *                (ImportWithSize) or empty (Import: the volume's size).
 *                Reply `SIZE PATH`: write exactly SIZE bytes into PATH, an
 *                existing file that reads as zeros (do not create or truncate).
 *   ImportEnd    DEST, ARG as above, payload `ok`, or `fail` NEWLINE message.
 *                Reply: empty when the data is committed; on `fail`,
 *                QubesException `Data import failed: MESSAGE` (old data kept).
 *
 * Not in Qubes, for our own service program (src/qrexec/import-service.ts):
 *
 *   ImportMode   DEST, ARG, payload as ImportBegin. Reply `file`: the
 *                volume's import is a file of this host (ImportBegin's
 *                path, written directly: the data crosses no socket);
 *                `stream SIZE` (SIZE: the bytes the import takes): the driver writes the import into its storage
 *                itself (Volume.writesImportsItself, rbd): a file would be
 *                one more copy, so the service streams the data instead:
 *   ImportData / ImportDataWithSize   DEST, ARG, payload as the admin
 *                socket's admin.vm.volume.Import / ImportWithSize (the data,
 *                after a size line for the latter); the same method runs
 *                (the volume's import writer, its events, the domain held
 *                until the commit or the rollback). Reply as theirs. The
 *                import belongs to the connection: closed before all data
 *                arrived, it is rolled back.
 *
 * All three stand for the original admin call as ImportBegin does (below).
 *
 * The same machinery as the streamed admin.vm.volume.Import
 * (volumes.ts): the volume's importData / importDataEnd (crash-safe; a
 * failed import leaves the old data and no files), the same events
 * (`domain-volume-import-begin`, `domain-volume-import-end`,
 * `volume-imported`; no progress events: the daemon does not see the data),
 * and the domain is held from ImportBegin to ImportEnd as a long change
 * (starts, removals, other changes of it are refused: QubesVMInUseError).
 *
 * ImportBegin stands for the original admin call: the access policy of the
 * admin socket must allow `admin.vm.volume.Import[WithSize]` from the
 * header's SOURCE (the service passes QREXEC_REMOTE_DOMAIN) to DEST, as
 * Qubes fires `admin-permission:admin.vm.volume.Import` there.
 *
 * **An import nobody ends.** Qubes keeps it pending for ever. Here an import
 * belongs to the process that asked for it and to that process's parent
 * (Qubes' own script runs a short-lived qubesd-query for ImportBegin under
 * the script's shell; our service program asks itself, under the client
 * that runs it): once both have exited without ImportEnd, the import is
 * ended as failed (rolled back, `domain-volume-import-end success=False`)
 * and the domain is free again. Checked every `ownerCheckMs` while imports
 * are pending, and before every ImportBegin (so a new import of the same
 * volume right after a killed one goes through). The daemon's stop ends
 * every pending import as failed.
 */
import * as fs from 'node:fs/promises';
import type { Domain } from '../../domain/domain.js';
import { PermissionDenied, QubesException, StoragePoolException } from '../../storage/errors.js';
import type { AdminLog, Caller, MethodTable } from '../dispatch.js';
import { method, streamingMethod, type CallContext } from '../dispatch.js';
import { DEFAULT_POLICY, findAllowingRule, type AccessPolicy } from '../policy.js';
import { decodeUtf8, parseInteger } from '../protocol/validate.js';
import { aboutDomain, destVolume, qbool, type MethodContext } from './context.js';
import { requireHalted, volumePairs } from './volumes.js';

export interface InternalMethodsOptions {
  /** The admin socket's access policy now (reloaded on SIGHUP); undefined: DEFAULT_POLICY. */
  readonly adminPolicy: () => AccessPolicy | undefined;
  /** The admin method table: the policy's class rules match the original method's declaration. */
  readonly adminMethods: MethodTable;
  /** How often the owners of pending imports are looked for; default 1 s. */
  readonly ownerCheckMs?: number;
  /** Where an import ended for its vanished owner is reported. */
  readonly log?: AdminLog;
}

export interface InternalMethods {
  readonly methods: MethodTable;
  /** `DOMAIN:VOLUME` of every import begun and not ended. */
  pending(): string[];
  /** Ends every pending import as failed (the daemon stops); resolves once each is rolled back. */
  endAll(reason: string): Promise<void>;
}

/** A process as /proc knows it: the pid and its start time, so a reused pid is not taken for it. */
interface ProcessId {
  readonly pid: number;
  readonly start: string;
}

interface Outcome {
  readonly success: boolean;
  readonly message: string;
}

interface PendingImport {
  readonly domain: Domain;
  readonly volume: string;
  readonly owners: readonly ProcessId[];
  end(outcome: Outcome): void;
  /** Settles once the import is committed or rolled back (rejects with what ImportEnd answers). */
  done: Promise<void>;
}

/** `SIZE\n` of Qubes' script has no newline; one is accepted. */
const SIZE_RE = /\n$/;

/** The size an ImportWithSize-shaped payload names (`SIZE\n`); undefined for Import's empty one. */
function requestedSize(payload: Buffer): number | undefined {
  return payload.length ? parseInteger(decodeUtf8(payload, 'size').replace(SIZE_RE, ''), { min: 0, what: 'size of new data' }) : undefined;
}

export function internalMethods(ctx: MethodContext, opts: InternalMethodsOptions): InternalMethods {
  const { app } = ctx;
  const pending = new Map<string, PendingImport>();
  const checkMs = opts.ownerCheckMs ?? 1000;
  let timer: NodeJS.Timeout | undefined;
  let sweeping: Promise<void> | undefined;

  const key = (domain: Domain, volume: string): string => `${domain.name}:${volume}`;
  const emit = (domain: Domain, event: string, pairs: Record<string, string>): void => app.events.emit(domain.name, event, pairs);

  const watch = (): void => {
    if (pending.size === 0) {
      clearInterval(timer);
      timer = undefined;
    } else if (!timer) {
      timer = setInterval(() => void sweep(), checkMs);
      timer.unref();
    }
  };

  /** Ends a pending import with `outcome`; it leaves the list at once (a second ImportEnd finds nothing). */
  const finish = (k: string, p: PendingImport, outcome: Outcome): Promise<void> => {
    if (pending.get(k) === p) pending.delete(k);
    watch();
    p.end(outcome);
    return p.done;
  };

  /** Ends the imports whose owners have all exited. */
  function sweep(): Promise<void> {
    sweeping ??= (async () => {
      for (const [k, p] of [...pending]) {
        if ((await Promise.all(p.owners.map(alive))).some(Boolean)) continue;
        if (pending.get(k) !== p) continue;
        const who = p.owners.map((o) => o.pid).join(', ');
        opts.log?.warn(`import into ${k} ended as failed: its caller (pid ${who}) exited without internal.vm.volume.ImportEnd`);
        await finish(k, p, { success: false, message: `the import service (pid ${who}) exited without ending the import` }).catch(() => undefined);
      }
    })().finally(() => (sweeping = undefined));
    return sweeping;
  }

  const onVolume = aboutDomain(ctx, {
    scope: 'local',
    access: 'write',
    arg: 'required',
    argNames: 'volume',
    payload: 'bounded',
    checkArg: (h) => {
      destVolume(ctx, h);
    },
  });

  /** The admin policy must allow the admin call this internal call stands for. */
  const allowOriginal = (call: CallContext, original: string): void => {
    const policy = opts.adminPolicy() ?? DEFAULT_POLICY;
    const q = { source: call.source, method: original, arg: call.arg, dest: call.dest, shape: opts.adminMethods[original]?.shape };
    if (!findAllowingRule(policy, q)) throw new PermissionDenied(`${original} is not allowed for ${call.source} by ${policy.origin}`);
  };

  /** An admin import method run for an internal call (the same handler, its payload the data). */
  const adminImport = (original: 'admin.vm.volume.Import' | 'admin.vm.volume.ImportWithSize') =>
    streamingMethod(onVolumeStream, async (call) => {
      allowOriginal(call, original);
      const spec = opts.adminMethods[original];
      if (spec?.kind !== 'streaming') throw new QubesException(`${original} is not a streaming method here`);
      return spec.handler(call);
    });

  const onVolumeStream = aboutDomain(ctx, {
    scope: 'local',
    access: 'write',
    arg: 'required',
    argNames: 'volume',
    payload: 'streaming',
    checkArg: (h) => {
      destVolume(ctx, h);
    },
  });

  const methods: MethodTable = {
    'internal.vm.volume.ImportMode': method(onVolume, async (call) => {
      allowOriginal(call, call.payload.length ? 'admin.vm.volume.ImportWithSize' : 'admin.vm.volume.Import');
      const volume = destVolume(ctx, call).volume;
      if (!volume.writesImportsItself) return 'file';
      const size = requestedSize(call.payload) ?? volume.size;
      return `stream ${size}`;
    }),

    'internal.vm.volume.ImportData': adminImport('admin.vm.volume.Import'),
    'internal.vm.volume.ImportDataWithSize': adminImport('admin.vm.volume.ImportWithSize'),

    'internal.vm.volume.ImportBegin': method(onVolume, async (call) => {
      const original = call.payload.length ? 'admin.vm.volume.ImportWithSize' : 'admin.vm.volume.Import';
      allowOriginal(call, original);
      const requested = requestedSize(call.payload);
      // A killed service's import must not stand in the way of the next one.
      await sweep();
      const owners = await ownersOf(call.caller);
      const { domain, volume } = destVolume(ctx, call);
      let begun!: (reply: string) => void;
      const begunReply = new Promise<string>((resolve) => (begun = resolve));
      let end!: (o: Outcome) => void;
      const outcome = new Promise<Outcome>((resolve) => (end = resolve));
      const entry: PendingImport = { domain, volume: volume.name, owners, end, done: Promise.resolve() };
      const k = key(domain, volume.name);
      entry.done = app.holdDomain(domain, { what: `import into volume ${volume.name}`, long: true }, async () => {
        // Looked up again once held: a change before may have rebuilt the volume objects.
        const vol = destVolume(ctx, call).volume;
        requireHalted(domain, `import into volume ${vol.name}`);
        const size = requested ?? vol.size;
        const path = await vol.importData(size);
        emit(domain, 'domain-volume-import-begin', { volume: vol.name, size: String(size) });
        pending.set(k, entry);
        watch();
        begun(`${size} ${path}`);
        const o = await outcome;
        let ok = false;
        try {
          // On failure this drops the new data (and its file), keeping the old.
          await vol.importDataEnd(o.success);
          ok = o.success;
        } finally {
          emit(domain, 'domain-volume-import-end', { volume: vol.name, success: qbool(ok) });
        }
        if (!o.success) throw new QubesException(`Data import failed: ${o.message}`);
        await app.save(domain);
        emit(domain, 'volume-imported', { ...volumePairs(vol), size: String(vol.size) });
      });
      // Whoever ends it awaits `done`; this only keeps a rejection from going unhandled.
      entry.done.catch(() => undefined);
      return Promise.race([
        begunReply,
        entry.done.then(() => {
          throw new Error('the import ended before it began');
        }),
      ]);
    }),

    'internal.vm.volume.ImportEnd': method(onVolume, async (call) => {
      const { domain, volume } = destVolume(ctx, call);
      const k = key(domain, volume.name);
      const p = pending.get(k);
      if (!p || p.domain !== domain)
        throw new StoragePoolException(`${volume.where}: no import in progress (internal.vm.volume.ImportBegin comes first)`);
      const success = call.payload.equals(OK);
      const text = call.payload.toString('utf8');
      const nl = text.indexOf('\n');
      await finish(k, p, { success, message: nl < 0 ? '' : text.slice(nl + 1) });
    }),
  };

  return {
    methods,
    pending: () => [...pending.keys()],
    async endAll(reason) {
      await Promise.all([...pending].map(([k, p]) => finish(k, p, { success: false, message: reason }).catch(() => undefined)));
    },
  };
}

const OK = Buffer.from('ok');

/** The caller and its parent (not init), as /proc knows them now; in-process calls: none (never abandoned). */
async function ownersOf(caller: Caller | undefined): Promise<ProcessId[]> {
  if (caller?.pid === undefined || caller.pid === process.pid) return [{ pid: process.pid, start: 'self' }];
  const me = await processId(caller.pid);
  if (!me) return [];
  const parent = me.ppid > 1 ? await processId(me.ppid) : null;
  return parent ? [me.id, parent.id] : [me.id];
}

async function alive(p: ProcessId): Promise<boolean> {
  if (p.start === 'self') return true;
  const now = await processId(p.pid);
  return now !== null && now.id.start === p.start;
}

/** Pid, start time and parent from /proc/PID/stat; null when gone or a zombie (exited, not yet reaped). */
async function processId(pid: number): Promise<{ id: ProcessId; ppid: number } | null> {
  let text: string;
  try {
    text = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: the fields after the last ')' are fixed.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  if (state === 'Z' || state === 'X' || fields.length < 20) return null;
  return { id: { pid, start: fields[19]! }, ppid: Number(fields[1]) };
}
