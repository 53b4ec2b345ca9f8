/**
 * admin.vm.volume.*: the volumes of a domain (DEST = domain, ARG = volume
 * name). Each call works through the Volume contract (src/storage/volume.ts),
 * whose methods take the volume's lock; the domain's power state comes from
 * the App. After every change the App's state is saved (the App does not see
 * changes made to volumes directly) and an event is announced on the App's
 * events, which the daemon forwards to admin.Events:
 *
 *   NAME volume-resized    volume= pool= vid= size=
 *   NAME volume-reverted   volume= pool= vid= revision=
 *   NAME volume-imported   volume= pool= vid= size=   (Import, ImportWithSize, Clear)
 *   NAME volume-cloned     volume= pool= vid= size= source=DOMAIN:VOLUME
 *   NAME domain-volume-import-begin     volume= size=
 *   NAME domain-volume-import-progress  volume= size= written=
 *   NAME domain-volume-import-end       volume= success=True|False
 *   NAME volume-set:KEY    volume= value=   (Set.revisions_to_keep, Set.rw, Set.ephemeral)
 *
 * Our additions to the reference: admin.vm.volume.Export (returns the path
 * of a read-only export of the committed data on this host) and
 * admin.vm.volume.ExportEnd (payload: that path) for `qvm-volume export`.
 *
 * Every call that changes a volume holds its domain for its whole duration
 * (`changeVolume`, App.holdDomain, src/domain/holds.ts): an import from
 * before its first byte is read until it is committed or rolled back. A
 * start, shutdown, removal or other volume change of that domain meanwhile
 * waits for a short call and is refused at once (QubesVMInUseError) behind
 * an import, which a client paces. The source of a clone and an export in
 * progress are uses of their domain (App.useDomain): it cannot be removed
 * until a clone ends; an export, which a client that died or quit early
 * may never end, is ended by the removal of its domain instead (its file
 * removed, a later ExportEnd refused as not in progress).
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Domain } from '../../domain/domain.js';
import type { HoldSpec } from '../../domain/holds.js';
import {
  PermissionDenied,
  ProtocolError,
  QubesException,
  QubesValueError,
  QubesVolumeCopyTokenNotFoundError,
  QubesVMNotFoundError,
  QubesVMNotHaltedError,
  storageError,
} from '../../storage/errors.js';
import type { ImportWriter } from '../../storage/import-writer.js';
import type { Volume } from '../../storage/volume.js';
import { createSparseWriter } from '../../files/sparse-writer.js';
import { method, replyStreamMethod, streamingMethod, wireError, type AdminStreamCall, type CallContext, type MethodTable, type ReplyWrite } from '../dispatch.js';
import { exportLine } from '../protocol/export-stream.js';
import { decodeAscii, decodeUtf8, parseBoolean, parseInteger, validateRevisionId } from '../protocol/validate.js';
import { aboutDomain, destDomain, destVolume, qbool, type MethodContext, type ShapeSpec } from './context.js';

export interface VolumeMethodsOptions {
  /** How long a CloneFrom token stays valid; default 10 minutes. */
  readonly cloneTokenTtlMs?: number;
  /** Most unused clone tokens kept (the oldest are dropped); default 1024. */
  readonly maxCloneTokens?: number;
  /** An import announces its progress every this many bytes; default 64 MiB. */
  readonly importProgressBytes?: number;
  /** Clock (tests). */
  readonly now?: () => number;
}

/** The step of import progress events (a file import's zero blocks: src/storage/import-writer.ts). */
export const IMPORT_BLOCK = 4096;
/** `SIZE\n` at the start of an ImportWithSize payload: at most 19 digits. */
const MAX_SIZE_LINE = 20;
const TOKEN_RE = /^[0-9a-f]{32}$/;

interface CloneToken {
  readonly domain: Domain;
  readonly volume: Volume;
  readonly expires: number;
}

interface HeldExport {
  readonly domain: Domain;
  readonly volume: Volume;
  /** Ends the export's use of its domain (App.useDomain). */
  readonly release: () => void;
}

export function volumePairs(v: Volume): Record<string, string> {
  return { volume: v.name, pool: v.pool.name, vid: v.vid };
}

export function requireHalted(domain: Domain, what: string): void {
  if (domain.isRunning) throw new QubesVMNotHaltedError(`domain ${domain.name} is running; cannot ${what} while it runs`);
}

/** A value of an Info line: None empty, booleans as Qubes prints them. */
const infoValue = (v: string | number | boolean | null): string => (v === null ? '' : typeof v === 'boolean' ? qbool(v) : String(v));

/** admin.vm.volume.Info text: exactly the spec's lines, in order. */
export async function volumeInfoText(volume: Volume): Promise<string> {
  const i = await volume.info();
  const v = infoValue;
  // One template string: Info is the most frequent call (no arrays of pairs per call).
  return (
    `pool=${v(i.pool)}\nvid=${v(i.vid)}\nsize=${v(i.size)}\nusage=${v(i.usage)}\nrw=${v(i.rw)}\n` +
    `source=${v(i.source)}\npath=${v(i.path)}\nsave_on_stop=${v(i.save_on_stop)}\n` +
    `snap_on_start=${v(i.snap_on_start)}\nrevisions_to_keep=${v(i.revisions_to_keep)}\n` +
    `ephemeral=${v(i.ephemeral)}\n` +
    (i.is_outdated === null ? '' : `is_outdated=${v(i.is_outdated)}\n`)
  );
}

export function volumeMethods(ctx: MethodContext, opts: VolumeMethodsOptions = {}): MethodTable {
  const { app } = ctx;
  const now = opts.now ?? Date.now;
  const ttl = opts.cloneTokenTtlMs ?? 10 * 60_000;
  const maxTokens = opts.maxCloneTokens ?? 1024;
  const progressStep = Math.max(IMPORT_BLOCK, opts.importProgressBytes ?? 64 * 1024 * 1024);
  /** token -> the volume it names; a Map keeps insertion order, oldest first. */
  const tokens = new Map<string, CloneToken>();
  /** export path -> its volume, while the caller reads it. */
  const exports = new Map<string, HeldExport>();

  const emit = (domain: Domain, event: string, pairs: Record<string, string>): void => app.events.emit(domain.name, event, pairs);

  /**
   * Runs a change of the call's volume holding its domain; `what` names it
   * in refusals (`import into volume private`). The volume is looked up again
   * once held: a change that ran before (a template change) may have rebuilt it.
   */
  async function changeVolume<T>(
    call: CallContext,
    what: (volume: string) => string,
    fn: (domain: Domain, volume: Volume) => Promise<T>,
    spec: Omit<HoldSpec, 'what'> = {},
  ): Promise<T> {
    const { domain, volume } = destVolume(ctx, call);
    return app.holdDomain(domain, { ...spec, what: what(volume.name) }, () => fn(domain, destVolume(ctx, call).volume));
  }

  /** A property change of a volume, saved; undone in memory when the save fails. */
  async function changeProperty(domain: Domain, volume: Volume, key: string, apply: () => () => void, value: string): Promise<void> {
    const undo = apply();
    try {
      await app.save(domain);
    } catch (e) {
      undo();
      throw e;
    }
    emit(domain, `volume-set:${key}`, { volume: volume.name, value });
  }

  /** Ends the export at `path` (ExportEnd, or the removal of its domain): its file goes, its use of the domain ends. */
  async function endExport(path: string): Promise<void> {
    const held = exports.get(path);
    if (!held) return;
    exports.delete(path);
    try {
      await held.volume.exportEnd(path);
    } finally {
      held.release();
    }
  }

  function dropExpiredTokens(): void {
    const t = now();
    for (const [k, v] of tokens) if (v.expires <= t) tokens.delete(k);
    while (tokens.size >= maxTokens) tokens.delete(tokens.keys().next().value!);
  }

  /**
   * Reads the import payload into the volume's import writer (a file of
   * `size` bytes, sparse, or the driver's own storage: Volume.importWriter),
   * leaving zero blocks unwritten. Receiving and writing overlap: the
   * sparse writer keeps up to the writer's pendingBytes of writes in flight
   * and the payload is paused (and through it the socket) while it is full.
   */
  async function writeImport(
    call: CallContext,
    domain: Domain,
    volume: Volume,
    sink: ImportWriter,
    size: number,
    payload: Readable,
    first: Buffer,
  ): Promise<void> {
    const writer = createSparseWriter(sink, {
      blockBytes: sink.blockBytes,
      maxWriteBytes: sink.writeBytes,
      maxPendingBytes: sink.pendingBytes,
      syncEveryBytes: sink.syncEveryBytes,
    });
    let nextProgress = progressStep;
    const take = (chunk: Buffer): boolean => {
      if (writer.position + chunk.length > size)
        throw new QubesValueError(`${volume.where}: the data is larger than the expected ${size} bytes`);
      const more = writer.push(chunk);
      const at = writer.position;
      if (at >= nextProgress && at < size) {
        emit(domain, 'domain-volume-import-progress', { volume: volume.name, size: String(size), written: String(at - (at % progressStep)) });
        nextProgress = at - (at % progressStep) + progressStep;
      }
      return more;
    };
    try {
      if (first.length) take(first);
      await new Promise<void>((resolve, reject) => {
        let done = false;
        const finish = (err?: unknown) => {
          if (done) return;
          done = true;
          payload.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
          call.signal.removeEventListener('abort', onAbort);
          payload.pause();
          if (err === undefined) resolve();
          else reject(err as Error);
        };
        const onData = (c: Buffer | Uint8Array) => {
          try {
            if (take(Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.length))) return;
          } catch (e) {
            return finish(e);
          }
          payload.pause();
          writer.drained().then(() => done || payload.resume(), finish);
        };
        const cutOff = () => finish(new QubesValueError(`${volume.where}: the import was cut off`));
        const onEnd = () => finish();
        const onError = cutOff;
        const onClose = cutOff; // closed without 'end': destroyed
        const onAbort = cutOff;
        if (call.signal.aborted || payload.destroyed) return cutOff();
        call.signal.addEventListener('abort', onAbort);
        payload.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
        payload.resume();
      });
      await writer.finish();
      if (writer.position !== size)
        throw new QubesValueError(`${volume.where}: got ${writer.position} bytes of data, expected ${size}`);
      // The rest reads as zeros, all of it durable (importDataEnd would do it too; here its errors are this call's).
      await sink.finish();
    } finally {
      await writer.settle();
    }
  }

  /** Held from before the payload is read until the import is committed or rolled back: a client paces it, hence `long`. */
  function importCall(call: AdminStreamCall, withSize: boolean): Promise<void> {
    return changeVolume(call, (v) => `import into volume ${v}`, (domain, volume) => importInto(call, domain, volume, withSize), { long: true });
  }

  async function importInto(call: AdminStreamCall, domain: Domain, volume: Volume, withSize: boolean): Promise<void> {
    requireHalted(domain, `import into volume ${volume.name}`);
    let size = volume.size;
    let first: Buffer = Buffer.alloc(0);
    if (withSize) ({ size, rest: first } = await readSizeLine(call.payload));
    const sink = await volume.importWriter(size);
    emit(domain, 'domain-volume-import-begin', { volume: volume.name, size: String(size) });
    let ok = false;
    try {
      // Writing the data is this method's own write path: its OS errors (ENOSPC...) are mapped here.
      await writeImport(call, domain, volume, sink, size, call.payload, first).catch((e: unknown) => {
        throw storageError(`${volume.where}: import failed`, e, sink.file ?? undefined);
      });
      await volume.importDataEnd(true);
      ok = true;
    } catch (e) {
      if (!ok) await volume.importDataEnd(false).catch(() => undefined);
      throw e;
    } finally {
      emit(domain, 'domain-volume-import-end', { volume: volume.name, success: qbool(ok) });
    }
    await app.save(domain);
    emit(domain, 'volume-imported', { ...volumePairs(volume), size: String(volume.size) });
  }

  /** A call on the volume the argument names, of the domain DEST names. */
  const onVolume = (s: Pick<ShapeSpec, 'access' | 'payload'>) =>
    aboutDomain(ctx, { ...s, scope: 'local', arg: 'required', argNames: 'volume', checkArg: (h) => { destVolume(ctx, h); } });

  return {
    'admin.vm.volume.List': method(aboutDomain(ctx, { scope: 'local', access: 'read' }), async (call) => {
      const domain = destDomain(ctx, call);
      // The order of the domain's volume config (root, private, volatile, kernel), as Qubes answers.
      return [...domain.storage.volumes.keys()].map((n) => `${n}\n`).join('');
    }),

    'admin.vm.volume.Info': method(onVolume({ access: 'read' }), async (call) => {
      const { volume } = destVolume(ctx, call);
      return volumeInfoText(volume);
    }),

    'admin.vm.volume.ListSnapshots': method(onVolume({ access: 'read' }), async (call) => {
      const { volume } = destVolume(ctx, call);
      return (await volume.revisions()).map((r) => `${r.id}\n`).join('');
    }),

    // Not in Qubes (its ListSnapshots gives ids only): each revision with the time of the commit that made it, for a page that shows when.
    'admin.vm.volume.ListSnapshotTimes': method(onVolume({ access: 'read' }), async (call) => {
      const { volume } = destVolume(ctx, call);
      return (await volume.revisions()).map((r) => `${r.id} ${r.time}\n`).join('');
    }),

    'admin.vm.volume.Revert': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      destVolume(ctx, call);
      // An empty payload reverts to the newest revision.
      const revision = call.payload.length ? validateRevisionId(decodeAscii(call.payload, 'revision')) : undefined;
      await changeVolume(call, (v) => `revert of volume ${v}`, async (domain, volume) => {
        requireHalted(domain, `revert volume ${volume.name}`);
        const target = revision ?? (await volume.revisions()).at(-1)?.id;
        await volume.revert(target);
        await app.save(domain);
        emit(domain, 'volume-reverted', { ...volumePairs(volume), revision: target ?? '' });
      });
    }),

    'admin.vm.volume.Resize': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      destVolume(ctx, call);
      const size = parseInteger(call.payload, { min: 0, what: 'size' });
      await changeVolume(call, (v) => `resize of volume ${v}`, async (domain, volume) => {
        // No force flag in the protocol: the client guards a shrink (qvm-volume resize -f), the volume's rules refuse what the driver cannot do.
        await volume.resize(size, { force: true });
        await app.save(domain);
        emit(domain, 'volume-resized', { ...volumePairs(volume), size: String(volume.size) });
      });
    }),

    'admin.vm.volume.Clear': method(onVolume({ access: 'write' }), async (call) => {
      destVolume(ctx, call);
      await changeVolume(call, (v) => `clear of volume ${v}`, async (domain, volume) => {
        requireHalted(domain, `clear volume ${volume.name}`);
        const size = volume.size;
        await volume.importData(size);
        await volume.importDataEnd(true);
        await app.save(domain);
        emit(domain, 'volume-imported', { ...volumePairs(volume), size: String(volume.size) });
      });
    }),

    // Write, as in Qubes: the token lets the caller copy the data into a domain it may change.
    'admin.vm.volume.CloneFrom': method(onVolume({ access: 'write' }), async (call) => {
      const { domain, volume } = destVolume(ctx, call);
      dropExpiredTokens();
      const token = randomBytes(16).toString('hex');
      tokens.set(token, { domain, volume, expires: now() + ttl });
      return token;
    }),

    'admin.vm.volume.CloneTo': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      const text = decodeAscii(call.payload, 'token');
      // Qubes looks any token up: one that cannot be a token is not found either.
      if (!TOKEN_RE.test(text)) throw new QubesVolumeCopyTokenNotFoundError('no pending clone for that token: a clone token is 32 hexadecimal digits');
      // Used up by any CloneTo naming it, whatever happens next.
      const entry = tokens.get(text);
      tokens.delete(text);
      if (!entry || entry.expires <= now()) throw new QubesVolumeCopyTokenNotFoundError('no pending clone for that token: unknown, already used or expired');
      destVolume(ctx, call);
      const from = entry.domain;
      const gone = () => new QubesValueError(`the source volume ${from.name}:${entry.volume.name} no longer exists`);
      await changeVolume(call, (v) => `clone into volume ${v}`, async (domain, volume) => {
        if (app.findDomain(from.name) !== from) throw gone();
        // The source domain is used (not held) while its data is copied: it
        // may start or change meanwhile (the copy is of its committed data,
        // taken at once), but not be removed.
        let release: () => void;
        try {
          release = from === domain ? () => undefined : app.useDomain(from, `clone of volume ${entry.volume.name} into ${domain.name}:${volume.name}`);
        } catch (e) {
          if (e instanceof QubesVMNotFoundError) throw gone();
          throw e;
        }
        try {
          // The volume as it now is (a template change may have rebuilt the objects since CloneFrom).
          const src = from.storage.volumes.get(entry.volume.name);
          if (!src || src.vid !== entry.volume.vid || src.pool !== entry.volume.pool) throw gone();
          requireHalted(domain, `clone into volume ${volume.name}`);
          await volume.importVolume(src);
          await app.save(domain);
        } finally {
          release();
        }
        emit(domain, 'volume-cloned', {
          ...volumePairs(volume),
          size: String(volume.size),
          source: `${from.name}:${entry.volume.name}`,
        });
      });
    }),

    'admin.vm.volume.Set.revisions_to_keep': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      destVolume(ctx, call);
      const n = parseInteger(call.payload, { allowNegative: true, min: -1, what: 'revisions_to_keep' });
      await changeVolume(call, (v) => `change of revisions_to_keep of volume ${v}`, async (domain, volume) => {
        const old = volume.config().revisions_to_keep ?? null;
        await changeProperty(domain, volume, 'revisions_to_keep', () => {
          volume.setRevisionsToKeep(n);
          return () => volume.setRevisionsToKeep(old);
        }, String(n));
      });
    }),

    'admin.vm.volume.Set.rw': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      destVolume(ctx, call);
      const rw = parseBoolean(call.payload, 'rw');
      await changeVolume(call, (v) => `change of rw of volume ${v}`, async (domain, volume) => {
        requireHalted(domain, `change rw of volume ${volume.name}`);
        const old = volume.rw;
        await changeProperty(domain, volume, 'rw', () => {
          volume.setRw(rw);
          return () => volume.setRw(old);
        }, qbool(rw));
      });
    }),

    'admin.vm.volume.Set.ephemeral': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      destVolume(ctx, call);
      const e = parseBoolean(call.payload, 'ephemeral');
      await changeVolume(call, (v) => `change of ephemeral of volume ${v}`, async (domain, volume) => {
        // Refused where this host cannot encrypt (no dm-crypt): recording it would promise what start cannot keep.
        await volume.checkEphemeral(e);
        const old = volume.config().ephemeral ?? null;
        await changeProperty(domain, volume, 'ephemeral', () => {
          volume.setEphemeral(e);
          return () => volume.setEphemeral(old);
        }, qbool(e));
      });
    }),

    'admin.vm.volume.Import': streamingMethod(onVolume({ access: 'write', payload: 'streaming' }), async (call) => {
      await importCall(call, false);
    }),

    'admin.vm.volume.ImportWithSize': streamingMethod(onVolume({ access: 'write', payload: 'streaming' }), async (call) => {
      await importCall(call, true);
    }),

    // Write, as CloneFrom: it hands out the volume's data.
    'admin.vm.volume.Export': method(onVolume({ access: 'write' }), async (call) => {
      const { domain, volume } = destVolume(ctx, call);
      // A use of the domain until ExportEnd, which a client that died or
      // quit never sends: removing the domain ends the export instead.
      let making: Promise<string> | null = null;
      const release = app.useDomain(domain, `export of volume ${volume.name}`, async () => {
        const path = await making?.catch(() => null);
        if (path) await endExport(path);
      });
      try {
        making = volume.export();
        const path = await making;
        exports.set(path, { domain, volume, release });
        return path;
      } catch (e) {
        release();
        throw e;
      }
    }),

    // Write, as Export. The reply's format: src/admin/protocol/export-stream.ts.
    'admin.vm.volume.ExportStream': replyStreamMethod(onVolume({ access: 'write' }), async (call, write) => {
      const { domain, volume } = destVolume(ctx, call);
      // Ends with the connection (the client closed it or went away), or
      // with the removal of the domain, which does not wait for a client.
      const stop = new AbortController();
      const onClientGone = () => stop.abort();
      call.signal.addEventListener('abort', onClientGone, { once: true });
      let exporting: Promise<void> = Promise.resolve();
      const release = app.useDomain(domain, `export of volume ${volume.name}`, async () => {
        stop.abort();
        await exporting.catch(() => undefined);
      });
      try {
        exporting = volume.readsExportsItself ? streamExport(volume, write, stop.signal) : holdExportPath(volume, write, stop.signal);
        await exporting;
      } finally {
        call.signal.removeEventListener('abort', onClientGone);
        release();
      }
    }),

    'admin.vm.volume.ExportEnd': method(onVolume({ access: 'write', payload: 'bounded' }), async (call) => {
      const { domain, volume } = destVolume(ctx, call);
      const path = decodeUtf8(call.payload, 'export path');
      const held = exports.get(path);
      // The same domain and volume name: the volume object may have been rebuilt since (a template change).
      if (!held || held.domain !== domain || held.volume.name !== volume.name)
        throw new PermissionDenied(`not an export of volume ${volume.name} in progress: ${JSON.stringify(path.slice(0, 200))}`);
      await endExport(path);
    }),
  };
}

/** The client is gone (a write found the connection closed), or the export was ended. */
function exportCut(volume: Volume, signal: AbortSignal): QubesException {
  return new QubesException(
    signal.aborted ? `the export of volume ${volume.name} was ended (its client went away, or its domain is being removed)` : `the client of the export of volume ${volume.name} went away`,
  );
}

/**
 * The data itself, read by the driver (exportInto): `size`, the data records,
 * then `end` or `error`. `end` goes out as soon as the data is complete: the
 * client finishes its side while the driver lets go of its snapshot.
 */
async function streamExport(volume: Volume, write: ReplyWrite, signal: AbortSignal): Promise<void> {
  const send = async (bytes: Buffer) => {
    if (signal.aborted || !(await write(bytes))) throw exportCut(volume, signal);
  };
  let begun = false;
  let ended = false;
  try {
    await volume.exportInto(
      {
        begin: async (size) => {
          begun = true;
          await send(exportLine.size(size));
        },
        data: async (offset, bytes) => {
          await send(exportLine.data(offset, bytes.length));
          await send(bytes);
        },
        end: async () => {
          ended = true;
          await send(exportLine.end());
        },
      },
      signal,
    );
  } catch (e) {
    // After `size` the reply is under way: the error travels as a record (before it, as the reply).
    // After `end` the client has all of it: a failure of the driver's clean-up is only logged.
    if (begun && !ended && !signal.aborted) {
      const { name, message } = wireError(e);
      await write(exportLine.error(name, message));
    }
    throw e;
  }
}

/** The export's file on this host (export()): its path, held until the connection ends. */
async function holdExportPath(volume: Volume, write: ReplyWrite, signal: AbortSignal): Promise<void> {
  const path = await volume.export();
  try {
    if (signal.aborted || !(await write(exportLine.path(path)))) return;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  } finally {
    await volume.exportEnd(path);
  }
}

/**
 * Reads `SIZE\n` from the start of the payload; returns the size and the data
 * bytes that came with it. Leaves the payload paused.
 */
function readSizeLine(payload: Readable): Promise<{ size: number; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let head: Buffer = Buffer.alloc(0);
    const malformed = () => new ProtocolError('ImportWithSize: the payload must start with the size and a newline');
    const finish = (err: unknown, value?: { size: number; rest: Buffer }) => {
      payload.pause();
      payload.off('data', onData).off('end', onEnd).off('error', onEnd).off('close', onEnd);
      if (value) resolve(value);
      else reject(err);
    };
    const onData = (c: Buffer | Uint8Array) => {
      head = Buffer.concat([head, c]);
      const nl = head.indexOf(0x0a);
      if (nl < 0) {
        if (head.length > MAX_SIZE_LINE) finish(malformed());
        return;
      }
      if (nl > MAX_SIZE_LINE) return finish(malformed());
      try {
        finish(undefined, { size: parseInteger(head.subarray(0, nl), { min: 0, what: 'size' }), rest: head.subarray(nl + 1) });
      } catch (e) {
        finish(e);
      }
    };
    const onEnd = () => finish(malformed());
    if (payload.destroyed) return onEnd();
    payload.on('data', onData).on('end', onEnd).on('error', onEnd).on('close', onEnd);
    payload.resume();
  });
}
