/**
 * QubesClient: the admin API as typed calls. Every call goes through one
 * Transport (a qubesd socket, or embedded in this process), so a program
 * behaves the same either way. Replies come back parsed; an error reply is
 * thrown as the Qubes-named exception the daemon gave (QubesValueError,
 * QubesVMNotFoundError, PermissionDenied, ... from storage/errors), and a
 * failed connection as QubesDaemonCommunicationError.
 *
 * The calls check nothing the daemon checks: a program gets the daemon's
 * own refusal. (The tools check names first to word their errors.)
 */
import { Readable } from 'node:stream';
import type { AdminEvent } from '../admin/protocol/reply.js';
import { errorFromReply, QubesDaemonCommunicationError, ReplyReadBuffers } from '../admin/client.js';
import { ExportStreamDecoder, type ExportRecord } from '../admin/protocol/export-stream.js';
import { QubesVMNotFoundError } from '../storage/errors.js';
import { keyValueLines, keyValueWords, lines, numberOrNull, parseProperty, parsePropertyLine, payloadText, unescapeValue, type PropertyValue } from './replies.js';
import { connect, type ConnectOptions } from './connect.js';
import { socketTransport, type EventsSubscription, type Transport } from './transport.js';
import type { PoolUsageRow } from './usage.js';

export interface DomainEntry {
  readonly name: string;
  /** AdminVM, AppVM, TemplateVM, StandaloneVM, DispVM. */
  readonly klass: string;
  /** Halted, Running, ... */
  readonly state: string;
  readonly uuid: string;
}

/** A domain with its properties and the pool of each volume (admin.vm.ListDetails). */
export interface DomainDetails extends DomainEntry {
  /** As `properties(name)` gives them (admin.vm.property.GetAll), sorted by name. */
  readonly properties: ReadonlyMap<string, PropertyValue>;
  /** Volume name -> its pool, in admin.vm.volume.List order. */
  readonly volumePools: ReadonlyMap<string, string>;
}

export interface DriverEntry {
  readonly driver: string;
  /** The option names its pools take. */
  readonly options: string[];
}

export interface PoolInfo {
  readonly name: string;
  readonly driver: string;
  /** Bytes, where the pool knows them. */
  readonly size: number | null;
  readonly usage: number | null;
  /** Every `key=value` of admin.pool.Info as text, in the reply's order (options, revisions_to_keep, ...). */
  readonly fields: readonly (readonly [string, string])[];
}

export interface VolumeInfo {
  readonly pool: string;
  readonly vid: string;
  readonly size: number;
  readonly usage: number;
  readonly rw: boolean;
  /** The volume it is made from (a template's root), or null. */
  readonly source: string | null;
  readonly path: string;
  readonly saveOnStop: boolean;
  readonly snapOnStart: boolean;
  readonly revisionsToKeep: number;
  readonly ephemeral: boolean;
  /** Null where the volume has no source to be outdated against. */
  readonly isOutdated: boolean | null;
  /** Every `key=value` of admin.vm.volume.Info as text, in the reply's order. */
  readonly fields: ReadonlyMap<string, string>;
}

export interface NewDomain {
  readonly name: string;
  /** AppVM, TemplateVM, StandaloneVM, DispVM. */
  readonly klass: string;
  readonly label: string;
  /** The template (AppVM, DispVM); a class that takes none gets none. */
  readonly template?: string;
  /** All its volumes in this pool. */
  readonly pool?: string;
  /** Some volumes (root, private, volatile, kernel) in given pools; not with `pool`. */
  readonly volumePools?: readonly (readonly [volume: string, pool: string])[];
}

export interface ImportOptions {
  /** The data's length: the volume is resized to it first (ImportWithSize); without it, the data must be the volume's size. */
  readonly size?: number;
  /** Called with the bytes sent so far, after each chunk. */
  readonly onProgress?: (bytesSent: number) => void;
}

/** A volume held for export: read `path`, then end() (idempotent) releases it. */
export interface VolumeExport {
  readonly path: string;
  end(): Promise<void>;
}

/**
 * An export as openExport gives it: a file of this host to copy (`path`),
 * or the data itself (`data`: `size` bytes, the pieces that are not holes,
 * in increasing order; what no piece covers is zeros). end() releases it,
 * once the copy is done or abandoned: it waits until the daemon has ended
 * the export, except after all the data came (`data`, its pieces read to
 * their end), when it only closes the connection.
 */
export type OpenedExport =
  | { readonly kind: 'path'; readonly path: string; end(): Promise<void> }
  | {
      readonly kind: 'data';
      readonly size: number;
      /** Throws the daemon's error when the export failed, or a cut stream. */
      readonly pieces: AsyncIterable<{ readonly offset: number; readonly bytes: Buffer }>;
      /**
       * Returns a function to call once the caller is done with the bytes of
       * every piece it got until now (written, or copied): their memory may
       * then be read into again. Optional: a caller that keeps pieces never
       * calls it, and its pieces stay as they are.
       */
      releaser(): () => void;
      end(): Promise<void>;
    };

/** The settable options of a pool (admin.pool.Set.*). */
export type PoolSetting = 'revisions_to_keep' | 'ephemeral_volatile';
/** The settable properties of a volume (admin.vm.volume.Set.*). */
export type VolumeSetting = 'rw' | 'revisions_to_keep' | 'ephemeral';

export class QubesClient {
  constructor(readonly transport: Transport) {}

  /** Over the socket of a running qubesd. */
  static overSocket(socketPath: string, opts: { readonly source?: string; readonly timeoutMs?: number } = {}): QubesClient {
    return new QubesClient(socketTransport(socketPath, opts));
  }

  // The runtime (drivers, state) is loaded only when a client runs embedded:
  // a program that talks to a daemon does not load it. connect.ts is
  // imported statically: it loads the runtime itself only when no daemon
  // answers, and an import at call time would be a second round of module
  // loading after start-up (about 10 ms of a tool's start, docs/benchmarks.md).

  /** In this process, on the state in `baseDir` (made there if it is empty); holds its lock until close(). */
  static async embedded(baseDir: string, opts: { readonly notice?: (line: string) => void } = {}): Promise<QubesClient> {
    const { embeddedTransport } = await import('./embedded.js');
    return new QubesClient(await embeddedTransport(baseDir, opts.notice));
  }

  /** As the tools connect: the default qubesd socket if one answers, else embedded on the default base directory. */
  static async connect(opts: ConnectOptions = {}): Promise<QubesClient> {
    return new QubesClient(await connect(opts));
  }

  /** Releases what the transport holds (the state lock, embedded). */
  close(): Promise<void> {
    return this.transport.close();
  }

  private async text(method: string, dest = 'dom0', arg = '', payload: string | Buffer = ''): Promise<string> {
    return (await this.transport.call(method, dest, arg, payload)).toString('utf8');
  }

  private async send(method: string, dest: string, arg = '', payload: string | Buffer = ''): Promise<void> {
    await this.transport.call(method, dest, arg, payload);
  }

  // ---- pools ----

  async pools(): Promise<string[]> {
    return lines(await this.text('admin.pool.List'));
  }

  async poolInfo(pool: string): Promise<PoolInfo> {
    const fields = keyValueLines(await this.text('admin.pool.Info', 'dom0', pool));
    const get = (k: string) => fields.find(([key]) => key === k)?.[1];
    return { name: get('name') ?? pool, driver: get('driver') ?? '', size: numberOrNull(get('size')), usage: numberOrNull(get('usage')), fields };
  }

  /** admin.pool.UsageDetails: its numeric fields (`data_size`, `data_usage`, `metadata_*`, ...). */
  async poolUsageDetails(pool: string): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const [k, v] of keyValueLines(await this.text('admin.pool.UsageDetails', 'dom0', pool))) {
      const n = numberOrNull(v);
      if (n !== null) out[k] = n;
    }
    return out;
  }

  /** Usage rows of `pools` (default: all, in admin.pool.List order), flagged above `threshold` percent (default 90). */
  async poolUsage(opts: { readonly pools?: readonly string[]; readonly threshold?: number } = {}): Promise<PoolUsageRow[]> {
    // The arithmetic of the rows is loaded here: the other calls (and every tool but `qvm-pool usage`) do without it.
    const { DEFAULT_USAGE_THRESHOLD, checkThreshold, poolUsageRow } = await import('./usage.js');
    const threshold = checkThreshold(opts.threshold ?? DEFAULT_USAGE_THRESHOLD);
    const names = opts.pools ?? (await this.pools());
    const rows: PoolUsageRow[] = [];
    for (const pool of names) rows.push(poolUsageRow(pool, await this.poolUsageDetails(pool), threshold));
    return rows;
  }

  async drivers(): Promise<DriverEntry[]> {
    return lines(await this.text('admin.pool.ListDrivers')).map((l) => {
      const [driver, ...options] = l.split(' ').filter((w) => w !== '');
      return { driver: driver!, options };
    });
  }

  /** admin.pool.Add: a pool `name` of `driver` with these options (`dir_path`, `revisions_to_keep`, ...). */
  async addPool(name: string, driver: string, options: Iterable<readonly [string, string | number | boolean]> = []): Promise<void> {
    const payload = [`name=${name}`, ...[...options].map(([k, v]) => `${k}=${payloadText(v)}`)].map((l) => `${l}\n`).join('');
    await this.send('admin.pool.Add', 'dom0', driver, payload);
  }

  async removePool(name: string): Promise<void> {
    await this.send('admin.pool.Remove', 'dom0', name);
  }

  async setPoolOption(pool: string, option: PoolSetting, value: string | number | boolean): Promise<void> {
    await this.send(`admin.pool.Set.${option}`, 'dom0', pool, payloadText(value));
  }

  // ---- domains ----

  async domains(): Promise<DomainEntry[]> {
    return lines(await this.text('admin.vm.List')).map((l) => {
      const [name, ...rest] = l.split(' ');
      const kv = keyValueWords(rest);
      return { name: name!, klass: kv.get('class') ?? '', state: kv.get('state') ?? '', uuid: kv.get('uuid') ?? '' };
    });
  }

  /**
   * Every domain the caller may read (`dest` dom0), or `dest` alone, with
   * its properties and volume pools, in one call (admin.vm.ListDetails, a
   * method of this daemon, not of Qubes). Sorted by name. `only`: the
   * properties wanted (default all): the daemon sends only those.
   */
  async domainDetails(dest = 'dom0', only?: readonly string[]): Promise<DomainDetails[]> {
    // The daemon sends only the properties asked for; the parse still keeps only those (a reply may have more).
    return parseListDetails(await this.listDetailsText(dest, only), only && new Set(only));
  }

  /** The same call, its lines handed to `reader` as they are read (readListDetails): for a listing that keeps a few columns. */
  async readDomainDetails(reader: ListDetailsReader, dest = 'dom0', only?: readonly string[]): Promise<void> {
    readListDetails(await this.listDetailsText(dest, only), reader, only && new Set(only));
  }

  private listDetailsText(dest: string, only: readonly string[] | undefined): Promise<string> {
    return this.text('admin.vm.ListDetails', dest, only?.join('+') ?? '');
  }

  /** The domain's entry; QubesVMNotFoundError (as the daemon words it) if there is none. */
  async domain(name: string): Promise<DomainEntry> {
    const d = (await this.domains()).find((x) => x.name === name);
    if (!d) throw new QubesVMNotFoundError(`no such domain: '${name}'`);
    return d;
  }

  /** Halted, Running, ... */
  async powerState(vm: string): Promise<string> {
    return keyValueWords((await this.text('admin.vm.CurrentState', vm)).trim().split(' ')).get('power_state') ?? 'Halted';
  }

  /** admin.vm.Create.CLASS, or CreateInPool.CLASS when a pool is named. */
  async createDomain(d: NewDomain): Promise<void> {
    const volumePools = d.volumePools ?? [];
    let payload = `name=${d.name} label=${d.label}`;
    if (d.pool !== undefined) payload += ` pool=${d.pool}`;
    for (const [vol, p] of volumePools) payload += ` pool:${vol}=${p}`;
    const inPool = d.pool !== undefined || volumePools.length > 0;
    await this.send(`admin.vm.${inPool ? 'CreateInPool' : 'Create'}.${d.klass}`, 'dom0', d.template ?? '', payload);
  }

  async removeDomain(name: string): Promise<void> {
    await this.send('admin.vm.Remove', name);
  }

  async startDomain(name: string): Promise<void> {
    await this.send('admin.vm.Start', name);
  }

  /** `force`: also when other domains depend on it; `wait`: the reply comes once it is halted. */
  async shutdownDomain(name: string, opts: { readonly force?: boolean; readonly wait?: boolean } = {}): Promise<void> {
    const arg = [opts.force ? 'force' : '', opts.wait ? 'wait' : ''].filter(Boolean).join('+');
    await this.send('admin.vm.Shutdown', name, arg);
  }

  /**
   * Where a copy of `vm` keeps its volumes when no pool is asked for, as the
   * stock client's clone_vm picks them: each volume that is neither a
   * snapshot nor read-only (those go where their source or the kernel is),
   * paired with its pool where that is not the default pool for its name
   * (the global default_pool_NAME; a name without one stays where it is).
   * Sorted by volume name; empty when all are in their default pools.
   */
  async sourcePools(vm: string): Promise<[volume: string, pool: string][]> {
    const globals = new Set(await this.propertyNames('dom0-global'));
    const out: [string, string][] = [];
    for (const vol of (await this.volumes(vm)).sort()) {
      const v = await this.volumeInfo(vm, vol);
      if (v.snapOnStart || !v.rw) continue;
      const key = `default_pool_${vol}`;
      const dflt = globals.has(key) ? parseProperty(await this.text('admin.property.Get', 'dom0', key)).value : v.pool;
      if (dflt !== v.pool) out.push([vol, v.pool]);
    }
    return out;
  }

  /**
   * Copies the data of every volume of `dst` that keeps its data
   * (save_on_stop) from the same-named volume of `src` (CloneFrom/CloneTo).
   * `onVolume` is told of each copy before it starts; its finish() runs after.
   */
  async copyVolumes(src: string, dst: string, onVolume?: (volume: string, size: number) => { finish(): void }): Promise<void> {
    const srcVolumes = new Set(await this.volumes(src));
    for (const vol of await this.volumes(dst)) {
      if (!srcVolumes.has(vol)) continue;
      if (!(await this.volumeInfo(dst, vol)).saveOnStop) continue;
      const ind = onVolume?.(vol, (await this.volumeInfo(src, vol)).size);
      try {
        await this.cloneVolume(src, vol, dst, vol);
      } finally {
        ind?.finish();
      }
    }
  }

  // ---- properties, tags, features, labels ----

  /** The property names of `vm`; `dom0-global` names the global properties. */
  async propertyNames(vm: string): Promise<string[]> {
    return vm === 'dom0-global' ? lines(await this.text('admin.property.List')) : lines(await this.text('admin.vm.property.List', vm));
  }

  async property(vm: string, prop: string): Promise<PropertyValue> {
    return parseProperty(await this.text('admin.vm.property.Get', vm, prop));
  }

  /** All properties (admin.vm.property.GetAll), in the reply's order (sorted by name). */
  async properties(vm: string): Promise<Map<string, PropertyValue>> {
    return new Map(lines(await this.text('admin.vm.property.GetAll', vm)).map(parsePropertyLine));
  }

  async setProperty(vm: string, prop: string, value: string | number | boolean): Promise<void> {
    await this.send('admin.vm.property.Set', vm, prop, payloadText(value));
  }

  async resetProperty(vm: string, prop: string): Promise<void> {
    await this.send('admin.vm.property.Reset', vm, prop);
  }

  async tags(vm: string): Promise<string[]> {
    return lines(await this.text('admin.vm.tag.List', vm));
  }

  async addTag(vm: string, tag: string): Promise<void> {
    await this.send('admin.vm.tag.Set', vm, tag);
  }

  /** Every feature and its value. */
  async features(vm: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const f of lines(await this.text('admin.vm.feature.List', vm))) out.set(f, await this.text('admin.vm.feature.Get', vm, f));
    return out;
  }

  async setFeature(vm: string, feature: string, value: string): Promise<void> {
    await this.send('admin.vm.feature.Set', vm, feature, value);
  }

  async labels(): Promise<string[]> {
    return lines(await this.text('admin.label.List'));
  }

  // ---- volumes ----

  async volumes(vm: string): Promise<string[]> {
    return lines(await this.text('admin.vm.volume.List', vm));
  }

  async volumeInfo(vm: string, volume: string): Promise<VolumeInfo> {
    const fields = new Map(keyValueLines(await this.text('admin.vm.volume.Info', vm, volume)));
    const bool = (k: string) => fields.get(k) === 'True';
    const outdated = fields.get('is_outdated');
    return {
      pool: fields.get('pool') ?? '',
      vid: fields.get('vid') ?? '',
      size: numberOrNull(fields.get('size')) ?? 0,
      usage: numberOrNull(fields.get('usage')) ?? 0,
      rw: bool('rw'),
      source: fields.get('source') || null,
      path: fields.get('path') ?? '',
      saveOnStop: bool('save_on_stop'),
      snapOnStart: bool('snap_on_start'),
      revisionsToKeep: numberOrNull(fields.get('revisions_to_keep')) ?? 0,
      ephemeral: bool('ephemeral'),
      isOutdated: outdated === undefined || outdated === '' ? null : outdated === 'True',
      fields,
    };
  }

  /** The revisions a revert can go back to, oldest first. */
  async revisions(vm: string, volume: string): Promise<string[]> {
    return lines(await this.text('admin.vm.volume.ListSnapshots', vm, volume));
  }

  /** The revisions with the time of the commit that made each (ISO-8601 UTC), oldest first (admin.vm.volume.ListSnapshotTimes, a method of this daemon, not of Qubes). */
  async revisionTimes(vm: string, volume: string): Promise<{ id: string; time: string }[]> {
    return lines(await this.text('admin.vm.volume.ListSnapshotTimes', vm, volume)).map((l) => {
      const sp = l.indexOf(' ');
      return sp < 0 ? { id: l, time: '' } : { id: l.slice(0, sp), time: l.slice(sp + 1) };
    });
  }

  async setVolumeOption(vm: string, volume: string, option: VolumeSetting, value: string | number | boolean): Promise<void> {
    await this.send(`admin.vm.volume.Set.${option}`, vm, volume, payloadText(value));
  }

  async resizeVolume(vm: string, volume: string, size: number): Promise<void> {
    await this.send('admin.vm.volume.Resize', vm, volume, String(size));
  }

  /** Back to `revision`, or to the newest when not given. */
  async revertVolume(vm: string, volume: string, revision?: string): Promise<void> {
    await this.send('admin.vm.volume.Revert', vm, volume, revision ?? '');
  }

  /** Replaces all its data with zeros. */
  async clearVolume(vm: string, volume: string): Promise<void> {
    await this.send('admin.vm.volume.Clear', vm, volume);
  }

  /** Replaces the data of dstVm:dstVolume with a copy of srcVm:srcVolume. */
  async cloneVolume(srcVm: string, srcVolume: string, dstVm: string, dstVolume: string): Promise<void> {
    const token = await this.text('admin.vm.volume.CloneFrom', srcVm, srcVolume);
    await this.send('admin.vm.volume.CloneTo', dstVm, dstVolume, token);
  }

  /** Replaces the data of a volume with `data`, streamed (Import, or ImportWithSize when `size` is given). */
  async importVolume(vm: string, volume: string, data: Readable | AsyncIterable<Uint8Array>, opts: ImportOptions = {}): Promise<void> {
    const { size, onProgress } = opts;
    async function* body(): AsyncGenerator<Buffer> {
      if (size !== undefined) yield Buffer.from(`${size}\n`);
      let sent = 0;
      for await (const c of data) {
        const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
        sent += b.length;
        onProgress?.(sent);
        yield b;
      }
    }
    const method = size === undefined ? 'admin.vm.volume.Import' : 'admin.vm.volume.ImportWithSize';
    await this.transport.callStream(method, vm, volume, Readable.from(body()));
  }

  /** Holds the committed data of a volume for reading at the returned path (admin.vm.volume.Export). */
  async exportVolume(vm: string, volume: string): Promise<VolumeExport> {
    const path = await this.text('admin.vm.volume.Export', vm, volume);
    let ending: Promise<void> | null = null;
    return { path, end: () => (ending ??= this.send('admin.vm.volume.ExportEnd', vm, volume, path)) };
  }

  /**
   * Opens the committed data of a volume for reading. Over a daemon's socket
   * through admin.vm.volume.ExportStream: a volume whose driver reads its own
   * storage (rbd) streams the data over the socket (no file made first);
   * others hand out a file of this host, held while the connection is open.
   * Embedded: Export's path.
   */
  async openExport(vm: string, volume: string): Promise<OpenedExport> {
    if (!this.transport.replyStream) {
      const held = await this.exportVolume(vm, volume);
      // A domain removed meanwhile took its exports with it, as the call's end does over a socket: nothing left to end.
      const end = () =>
        held.end().catch((e: unknown) => {
          if (!(e instanceof QubesVMNotFoundError)) throw e;
        });
      return { kind: 'path', path: held.path, end };
    }
    // After `end` the data is complete: closing then ends nothing the caller waits for (the daemon
    // lets go of its snapshot under the volume's lock, which the next call on the volume waits for).
    let complete = false;
    const buffers = new ReplyReadBuffers();
    const body = this.transport.replyStream('admin.vm.volume.ExportStream', vm, volume, { dontWait: () => complete, buffers });
    const decoder = new ExportStreamDecoder();
    const queue: ExportRecord[] = [];
    /** The next record; null at the end of the stream (checked by the decoder). */
    const next = async (): Promise<ExportRecord | null> => {
      while (queue.length === 0) {
        const r = await body.next();
        queue.push(...(r.done ? decoder.end() : decoder.push(r.value)));
        if (r.done && queue.length === 0) return null;
      }
      const rec = queue.shift()!;
      if (rec.kind === 'error') throw errorFromReply(rec.name, rec.message, rec.traceback);
      if (rec.kind === 'end') complete = true;
      return rec;
    };
    const end = async () => {
      await body.return(undefined);
    };
    try {
      const first = await next();
      if (first?.kind === 'path') return { kind: 'path', path: first.path, end };
      if (first?.kind !== 'size') throw new QubesDaemonCommunicationError('admin.vm.volume.ExportStream: no size or path first');
      async function* pieces(): AsyncGenerator<{ offset: number; bytes: Buffer }> {
        for (let rec = await next(); rec && rec.kind !== 'end'; rec = await next()) {
          if (rec.kind === 'data') yield { offset: rec.offset, bytes: rec.bytes };
        }
      }
      return { kind: 'data', size: first.size, pieces: pieces(), releaser: () => buffers.releaser(), end };
    } catch (e) {
      await end();
      throw e;
    }
  }

  // ---- events ----

  /** admin.Events for `dest` (`dom0`: every domain); `onEvent` gets each event after the subscription is live. */
  events(dest: string, onEvent: (e: AdminEvent) => void): EventsSubscription {
    return this.transport.events(dest, onEvent);
  }
}

/**
 * What each line of an admin.vm.ListDetails reply says, handed over as the
 * reply is read (readListDetails): a program that needs a few columns of
 * 1,000 domains keeps those and builds nothing else (qvm-ls).
 */
export interface ListDetailsReader {
  /** A `vm NAME KEY=VALUE...` line: the next domain, numbered from 0 in the reply's order. */
  vm(name: string, klass: string, state: string, uuid: string): void;
  /** A `property NAME PROP VALUE` line of domain number `vm`; `value` as GetAll gives it, escaped (parseProperty(unescapeValue(value))). */
  property(vm: number, prop: string, value: string): void;
  /** A `volume NAME VOLUME pool=POOL...` line of domain number `vm`. */
  volume(vm: number, volume: string, pool: string): void;
}

/**
 * An admin.vm.ListDetails reply, in one pass over its text: no array of
 * lines, no regex per line, nothing kept; the properties not in `only`
 * (when given) skipped without being cut out. A `property` or `volume` line
 * belongs to the last `vm` line of its domain's name before it; lines of
 * no listed domain, and of kinds this client does not know, are skipped.
 */
export function readListDetails(text: string, reader: ListDetailsReader, only?: ReadonlySet<string>): void {
  const byName = new Map<string, number>();
  let count = 0;
  // The domain of the last `vm` line: the lines after it are about it (checked without cutting the name out).
  let current = -1;
  let currentName = '';
  for (let at = 0; at < text.length; ) {
    let nl = text.indexOf('\n', at);
    if (nl < 0) nl = text.length;
    const sp1 = text.indexOf(' ', at);
    if (sp1 > at && sp1 < nl) {
      let sp2 = text.indexOf(' ', sp1 + 1);
      if (sp2 < 0 || sp2 > nl) sp2 = nl;
      if (sp1 - at === 2 && text.startsWith('vm', at)) {
        currentName = text.slice(sp1 + 1, sp2);
        current = count++;
        byName.set(currentName, current);
        reader.vm(currentName, wordValue(text, sp2, nl, 'class'), wordValue(text, sp2, nl, 'state'), wordValue(text, sp2, nl, 'uuid'));
      } else {
        const sameDomain = current >= 0 && sp2 - sp1 - 1 === currentName.length && text.startsWith(currentName, sp1 + 1);
        const d = sameDomain ? current : (byName.get(text.slice(sp1 + 1, sp2)) ?? -1);
        const sp3 = sp2 < nl ? text.indexOf(' ', sp2 + 1) : -1;
        const wordEnd = sp3 < 0 || sp3 > nl ? nl : sp3;
        if (d >= 0 && sp1 - at === 8 && text.startsWith('property', at)) {
          const prop = text.slice(sp2 + 1, wordEnd);
          if (!only || only.has(prop)) reader.property(d, prop, text.slice(Math.min(wordEnd + 1, nl), nl));
        } else if (d >= 0 && sp1 - at === 6 && text.startsWith('volume', at)) {
          reader.volume(d, text.slice(sp2 + 1, wordEnd), wordValue(text, wordEnd, nl, 'pool'));
        }
      }
    }
    at = nl + 1;
  }
}

/** An admin.vm.ListDetails reply as DomainDetails (readListDetails, each domain's properties and volume pools in maps). */
export function parseListDetails(text: string, only?: ReadonlySet<string>): DomainDetails[] {
  const out: { name: string; klass: string; state: string; uuid: string; properties: Map<string, PropertyValue>; volumePools: Map<string, string> }[] = [];
  readListDetails(
    text,
    {
      vm: (name, klass, state, uuid) => void out.push({ name, klass, state, uuid, properties: new Map(), volumePools: new Map() }),
      property: (vm, prop, value) => void out[vm]!.properties.set(prop, parseProperty(unescapeValue(value))),
      volume: (vm, volume, pool) => void out[vm]!.volumePools.set(volume, pool),
    },
    only,
  );
  return out;
}

/** The value of the word `KEY=VALUE` of `text` between `from` (a space or the line's start) and `to`, '' if none; the last one counts, as keyValueWords. */
function wordValue(text: string, from: number, to: number, key: string): string {
  let found = '';
  for (let at = from; at < to; ) {
    const start = text.charCodeAt(at) === 0x20 ? at + 1 : at;
    let end = text.indexOf(' ', start);
    if (end < 0 || end > to) end = to;
    if (end - start > key.length && text.charCodeAt(start + key.length) === 0x3d && text.startsWith(key, start)) found = text.slice(start + key.length + 1, end);
    at = end;
  }
  return found;
}
