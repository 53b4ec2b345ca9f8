/**
 * The admin API calls the tools make, parsed into plain values. Everything
 * goes through one Transport, so the tools behave the same over the socket
 * and in-process.
 */
import type { Readable } from 'node:stream';
import { QubesVMNotFoundError } from '../../storage/errors.js';
import { lines, parseKeyValueLines } from './output.js';
import type { EventsSubscription, Transport } from './transport.js';
import type { AdminEvent } from '../../admin/protocol/reply.js';

export interface DomainEntry {
  readonly name: string;
  readonly klass: string;
  readonly state: string;
  readonly uuid: string;
}

export interface PropertyValue {
  readonly isDefault: boolean;
  readonly type: string;
  readonly value: string;
}

export interface DriverEntry {
  readonly driver: string;
  readonly options: string[];
}

export class Api {
  constructor(readonly transport: Transport) {}

  async text(method: string, dest = 'dom0', arg = '', payload: string | Buffer = ''): Promise<string> {
    return (await this.transport.call(method, dest, arg, payload)).toString('utf8');
  }

  // ---- pools ----
  async pools(): Promise<string[]> {
    return lines(await this.text('admin.pool.List'));
  }
  async poolInfo(pool: string): Promise<[string, string][]> {
    return parseKeyValueLines(await this.text('admin.pool.Info', 'dom0', pool));
  }
  async poolUsage(pool: string): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const [k, v] of parseKeyValueLines(await this.text('admin.pool.UsageDetails', 'dom0', pool))) {
      const n = Number(v);
      if (v !== '' && Number.isFinite(n)) out[k] = n;
    }
    return out;
  }
  async drivers(): Promise<DriverEntry[]> {
    return lines(await this.text('admin.pool.ListDrivers')).map((l) => {
      const [driver, ...options] = l.split(' ').filter((w) => w !== '');
      return { driver: driver!, options };
    });
  }

  // ---- domains ----
  async domains(): Promise<DomainEntry[]> {
    return lines(await this.text('admin.vm.List')).map((l) => {
      const [name, ...rest] = l.split(' ');
      const kv = Object.fromEntries(rest.map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]));
      return { name: name!, klass: kv['class'] ?? '', state: kv['state'] ?? '', uuid: kv['uuid'] ?? '' };
    });
  }
  /** The domain's entry; QubesVMNotFoundError (as the daemon words it) if there is none. */
  async domain(name: string): Promise<DomainEntry> {
    const all = await this.domains();
    const d = all.find((x) => x.name === name);
    if (!d) throw new QubesVMNotFoundError(`no such domain: '${name}'`);
    return d;
  }
  async powerState(vm: string): Promise<string> {
    const kv = Object.fromEntries(
      (await this.text('admin.vm.CurrentState', vm)).trim().split(' ').map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]),
    );
    return kv['power_state'] ?? 'Halted';
  }

  // ---- properties ----
  async propertyNames(vm: string): Promise<string[]> {
    return lines(await this.text(vm === 'dom0-global' ? 'admin.property.List' : 'admin.vm.property.List', vm === 'dom0-global' ? 'dom0' : vm));
  }
  async property(vm: string, prop: string): Promise<PropertyValue> {
    return parseProperty(await this.text('admin.vm.property.Get', vm, prop));
  }
  /** admin.vm.property.GetAll, unescaped, in the reply's order (sorted). */
  async allProperties(vm: string): Promise<Map<string, PropertyValue>> {
    const out = new Map<string, PropertyValue>();
    for (const line of lines(await this.text('admin.vm.property.GetAll', vm))) {
      const sp = line.indexOf(' ');
      const name = line.slice(0, sp);
      const rest = line.slice(sp + 1).replace(/\\\\|\\n/g, (m) => (m === '\\n' ? '\n' : '\\'));
      out.set(name, parseProperty(rest));
    }
    return out;
  }
  async setProperty(vm: string, prop: string, value: string): Promise<void> {
    await this.transport.call('admin.vm.property.Set', vm, prop, value);
  }
  async resetProperty(vm: string, prop: string): Promise<void> {
    await this.transport.call('admin.vm.property.Reset', vm, prop);
  }
  async tags(vm: string): Promise<string[]> {
    return lines(await this.text('admin.vm.tag.List', vm));
  }
  async features(vm: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const f of lines(await this.text('admin.vm.feature.List', vm))) out.set(f, await this.text('admin.vm.feature.Get', vm, f));
    return out;
  }
  async labels(): Promise<string[]> {
    return lines(await this.text('admin.label.List'));
  }

  // ---- volumes ----
  async volumes(vm: string): Promise<string[]> {
    return lines(await this.text('admin.vm.volume.List', vm));
  }
  async volumeInfo(vm: string, volume: string): Promise<Map<string, string>> {
    return new Map(parseKeyValueLines(await this.text('admin.vm.volume.Info', vm, volume)));
  }
  async revisions(vm: string, volume: string): Promise<string[]> {
    return lines(await this.text('admin.vm.volume.ListSnapshots', vm, volume));
  }
  async importStream(vm: string, volume: string, method: string, payload: Readable): Promise<void> {
    await this.transport.callStream(method, vm, volume, payload);
  }

  events(dest: string, onEvent: (e: AdminEvent) => void): EventsSubscription {
    return this.transport.events(dest, onEvent);
  }
}

/** `default=True type=T VALUE` */
export function parseProperty(text: string): PropertyValue {
  const m = /^default=(True|False) type=(\S+) ?([\s\S]*)$/.exec(text);
  if (!m) return { isDefault: false, type: 'str', value: text };
  return { isDefault: m[1] === 'True', type: m[2]!, value: m[3]! };
}
