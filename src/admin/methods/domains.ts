/**
 * Admin API methods on domains: listing, creating, removing, power, plus
 * (joined from their own files) properties, labels, tags and features, and
 * the few calls qvm-clone makes besides those (firewall, notes, device
 * classes), answered for a system that keeps none of them.
 *
 * Reply formats (exact bytes; facts from qubes-core-admin `qubes/api/admin.py`):
 * - admin.vm.List: `NAME class=CLASS state=STATE uuid=UUID\n` sorted by name;
 *   DEST dom0 lists every domain, any other DEST only itself; for a caller
 *   other than dom0, only the domains the policy lets it call admin.vm.List
 *   on (see listedDomains).
 * - admin.vm.CurrentState: `mem=0 mem_static_max=0 cputime=0 power_state=S`
 *   (no newline; no hypervisor here, so the counters are 0).
 * - admin.vm.Create.CLASS / CreateInPool.CLASS (DEST dom0, ARG the template
 *   or empty): payload `name=N label=L` (+ `pool=P` or `pool:VOLUME=P` for
 *   CreateInPool, VOLUME one of root private volatile kernel). Unknown or
 *   repeated key, missing name or label, pool= with pool:VOLUME=, a label
 *   that is all digits or has characters outside `[A-Za-z0-9_.-]`, a
 *   pool:VOLUME the reference does not know -> ProtocolError; unknown label
 *   -> QubesLabelNotFoundError; a name taken -> QubesVMAlreadyExistsError;
 *   a template for a class that takes none -> QubesValueError; an unknown
 *   template -> QubesVMNotFoundError (all as Qubes answers; the whole list
 *   is in ../error-classes.md). The new domain gets the tag `created-by-SOURCE`.
 * - admin.vm.Remove: dom0 or a domain installed_by_rpm -> QubesVMInUseError;
 *   running -> QubesVMNotHaltedError; used by others -> QubesVMInUseError.
 * - admin.vm.Start / Shutdown[+force|+wait|+force+wait] / Kill: empty reply.
 *   dom0: start -> QubesVMNotHaltedError, shutdown/kill -> QubesVMError.
 *   Starting a running domain does nothing; stopping a halted one is
 *   QubesVMNotStartedError.
 * - admin.vm.ListDetails (ours, not Qubes'): what admin.vm.List,
 *   admin.vm.property.GetAll, admin.vm.volume.List and the `pool` of each
 *   admin.vm.volume.Info give, for every domain (DEST dom0) or DEST alone, in
 *   one reply; see listDetailsText.
 */
import { DOMAIN_CLASSES, type Domain, type DomainClass } from '../../domain/domain.js';
import { isTagName } from '../../domain/names.js';
import {
  PermissionDenied,
  ProtocolError,
  QubesLabelNotFoundError,
  QubesNotImplementedError,
  QubesValueError,
  QubesVMAlreadyExistsError,
  QubesVMError,
  QubesVMInUseError,
  QubesVMNotFoundError,
  QubesVMNotHaltedError,
} from '../../storage/errors.js';
import { printable } from '../../storage/volume.js';
import { method, type AdminCall, type MethodTable } from '../dispatch.js';
import { decodeAscii, parseKeyValues, validateDomainName, validatePoolName } from '../protocol/validate.js';
import { aboutDomain, destDomain, globalCall, type MethodContext } from './context.js';
import { labelMethods } from './labels.js';
import { propertyGetAllText, propertyMethods } from './properties.js';
import { tagFeatureMethods } from './tags-features.js';

/** Classes that admin.vm.Create.* makes (dom0 is never created). */
export const CREATABLE_CLASSES: readonly DomainClass[] = DOMAIN_CLASSES.filter((c) => c !== 'AdminVM');

/** Volumes a `pool:VOLUME=` key may name (the reference's fixed list). */
const POOL_VOLUMES: ReadonlySet<string> = new Set(['root', 'private', 'volatile', 'kernel']);
const LABEL_NAME_RE = /^[A-Za-z0-9_.-]+$/;

/** The line admin.vm.List gives for one domain. */
export function vmListLine(d: Domain): string {
  return `${d.name} class=${d.klass} state=${d.powerState} uuid=${d.uuid}\n`;
}

/** Whether the policy lets the call's source make METHOD on DEST (with ARG); see CallContext.mayCall. */
type MayCall = (method: string, dest: string, arg?: string) => boolean;

/**
 * The domains admin.vm.List answers with: every domain for DEST dom0, else
 * DEST alone; for a caller other than dom0, only those on which the policy
 * lets it call admin.vm.List (as Qubes filters the list through the
 * `admin-permission:admin.vm.List` event: its policy is asked once per
 * domain, with that domain as the target, and dom0 as the caller lists
 * everything). Without a dispatcher's policy (a method table called
 * directly), a caller other than dom0 gets none, as the default policy.
 */
export function listedDomains(all: readonly Domain[], dest: Domain, source: string, mayCall: MayCall | undefined): Domain[] {
  const domains = dest.klass === 'AdminVM' ? [...all] : [dest];
  if (source === 'dom0') return domains;
  return mayCall ? domains.filter((d) => mayCall('admin.vm.List', d.name)) : [];
}

/**
 * admin.vm.ListDetails, for the domains the caller may read: per domain,
 * sorted by name,
 *   `vm NAME class=CLASS state=STATE uuid=UUID` (its admin.vm.List line),
 *   `property NAME PROP default=... type=T VALUE` per property (the lines of
 *     admin.vm.property.GetAll, escaped as there),
 *   `volume NAME VOLUME pool=POOL` per volume (admin.vm.volume.List order,
 *     the `pool` of admin.vm.volume.Info),
 * each line ending in a newline. Qubes has no such call (its qvm-ls makes
 * admin.vm.List, then admin.vm.property.GetAll per domain); this one lets a
 * listing of N domains take one call instead of 1 + N or 1 + 3N.
 *
 * `domains` are those admin.vm.List gives the caller (listedDomains); of
 * them, a domain is in the reply only when the policy lets the caller make
 * every other call whose answer its lines carry (admin.vm.property.GetAll,
 * admin.vm.volume.List and admin.vm.volume.Info+VOLUME on that domain), so
 * the reply says no more than those calls would.
 *
 * The argument, when given, names the properties wanted (`label+netvm`):
 * only their lines are sent (a domain without one of them has no line for
 * it). A listing reads a few of some 25 properties per domain: at 1,000
 * domains the whole reply is 1.4 MB, and making, sending and parsing it was
 * most of qvm-ls's time (docs/benchmarks.md).
 */
export function listDetailsText(domains: readonly Domain[], mayCall: MayCall, only?: ReadonlySet<string>): string {
  const out: string[] = [];
  for (const d of domains) {
    const volumes = [...d.storage.volumes.values()];
    const readable =
      mayCall('admin.vm.property.GetAll', d.name) &&
      mayCall('admin.vm.volume.List', d.name) &&
      volumes.every((v) => mayCall('admin.vm.volume.Info', d.name, v.name));
    if (!readable) continue;
    out.push(`vm ${vmListLine(d)}`);
    for (const line of propertyGetAllText(d, only).split('\n')) if (line !== '') out.push(`property ${d.name} ${line}\n`);
    for (const v of volumes) out.push(`volume ${d.name} ${v.name} pool=${v.pool.name}\n`);
  }
  return out.join('');
}

/** What admin.vm.CurrentState answers. */
export function currentStateText(d: Domain): string {
  return `mem=0 mem_static_max=0 cputime=0 power_state=${d.powerState}`;
}

export function domainMethods(ctx: MethodContext): MethodTable {
  const { app } = ctx;

  /** Shapes (facts: qubes-core-admin's declarations): no argument, no payload unless given. */
  const localRead = aboutDomain(ctx, { scope: 'local', access: 'read' });
  const localExecute = aboutDomain(ctx, { scope: 'local', access: 'execute' });
  const globalRead = globalCall({ scope: 'global', access: 'read' }, ctx);

  const table: MethodTable = {
    'admin.vmclass.List': method(globalRead, async () => {
      return [...DOMAIN_CLASSES].sort().map((c) => `${c}\n`).join('');
    }),

    // Global in Qubes' policy classes, although DEST may be any domain (then only it is listed).
    'admin.vm.List': method(aboutDomain(ctx, { scope: 'global', access: 'read' }), async (call) => {
      return listedDomains(app.domainList(), destDomain(ctx, call), call.source, call.mayCall).map(vmListLine).join('');
    }),

    // Global as admin.vm.List (DEST dom0: every domain the caller may read; else DEST alone).
    'admin.vm.ListDetails': method(
      aboutDomain(ctx, { scope: 'global', access: 'read', arg: 'any', argNames: 'properties: NAME[+NAME...] (none: all)', checkArg: checkPropertyNames }),
      async (call) => {
        // Without a dispatcher's policy (a method table called directly): dom0 only, as the default policy.
        const mayCall = call.mayCall ?? (() => call.source === 'dom0');
        const only = call.arg === '' ? undefined : new Set(call.arg.split('+'));
        return listDetailsText(listedDomains(app.domainList(), destDomain(ctx, call), call.source, call.mayCall), mayCall, only);
      },
    ),

    'admin.vm.CurrentState': method(localRead, async (call) => currentStateText(destDomain(ctx, call))),

    'admin.vm.Remove': method(aboutDomain(ctx, { scope: 'global', access: 'write' }), async (call) => {
      const d = destDomain(ctx, call);
      if (d.klass === 'AdminVM') throw new QubesVMInUseError(`'dom0' cannot be removed`);
      if (d.prop('installed_by_rpm') === true)
        throw new QubesVMInUseError(`VM installed by package manager: ${d.name}`);
      await app.removeDomain(d.name);
    }),

    'admin.vm.Start': method(localExecute, async (call) => {
      const d = destDomain(ctx, call);
      if (d.klass === 'AdminVM') throw new QubesVMNotHaltedError('Cannot start Dom0 fake domain!');
      await app.start(d.name);
    }),

    // `force`, `wait` or both joined by '+'. Shutdowns here finish before
    // the reply (so `wait` holds), and nothing depends on a running domain
    // being kept up (so `force` changes nothing).
    'admin.vm.Shutdown': method(
      aboutDomain(ctx, { scope: 'local', access: 'execute', arg: 'any', argNames: 'mode: force, wait or force+wait', checkArg: checkShutdownMode }),
      async (call) => {
        const d = destDomain(ctx, call);
        if (d.klass === 'AdminVM') throw new QubesVMError('Cannot shutdown Dom0 fake domain!');
        await app.shutdown(d.name);
      },
    ),

    'admin.vm.Kill': method(localExecute, async (call) => {
      const d = destDomain(ctx, call);
      if (d.klass === 'AdminVM') throw new QubesVMError('Cannot kill Dom0 fake domain!');
      await app.kill(d.name);
    }),

    // ---- what qvm-clone calls besides properties, tags, features and volumes ----

    'admin.deviceclass.List': method(globalRead, async () => {
      return ''; // no device classes: this daemon attaches no devices
    }),

    'admin.vm.firewall.Get': method(localRead, async () => {
      return `${ACCEPT_ALL}\n`;
    }),

    'admin.vm.firewall.Set': method(aboutDomain(ctx, { scope: 'local', access: 'write', payload: 'bounded' }), async (call) => {
      const lines = decodeAscii(call.payload, 'firewall rules').split('\n').filter((l) => l !== '');
      // Firewall rules are not kept here: every domain accepts everything,
      // and only that rule (what Get answers, so what qvm-clone copies) is
      // accepted back.
      if (lines.length !== 1 || lines[0]!.trim() !== ACCEPT_ALL)
        throw new QubesNotImplementedError(`firewall rules are not kept by this daemon: only '${ACCEPT_ALL}' can be set`);
    }),

    'admin.vm.firewall.Reload': method(localExecute, async () => {}),

    'admin.vm.notes.Get': method(localRead, async (call) => {
      const d = destDomain(ctx, call);
      if (d.klass === 'AdminVM') throw new PermissionDenied('dom0 has no notes');
      return '';
    }),

    'admin.vm.notes.Set': method(aboutDomain(ctx, { scope: 'local', access: 'write', payload: 'bounded' }), async (call) => {
      const d = destDomain(ctx, call);
      if (d.klass === 'AdminVM') throw new PermissionDenied('dom0 has no notes');
      if (call.payload.length !== 0) throw new QubesNotImplementedError('notes are not kept by this daemon');
    }),
  };

  const create = globalCall({ scope: 'global', access: 'write', arg: 'any', argNames: 'template', payload: 'bounded' }, ctx);
  for (const klass of CREATABLE_CLASSES) {
    table[`admin.vm.Create.${klass}`] = method(create, (call) => createDomain(ctx, call, klass, false));
    table[`admin.vm.CreateInPool.${klass}`] = method(create, (call) => createDomain(ctx, call, klass, true));
  }

  return { ...table, ...propertyMethods(ctx), ...labelMethods(ctx), ...tagFeatureMethods(ctx) };
}

const ACCEPT_ALL = 'action=accept';

/** At most this many names in ListDetails' argument (there are about 30 properties). */
const MAX_LISTED_PROPERTIES = 64;

/** ListDetails' argument: property names joined by '+' (names that no domain has are allowed: they select nothing). */
function checkPropertyNames(h: { readonly arg: string }): void {
  if (h.arg === '') return;
  const names = h.arg.split('+');
  if (names.length > MAX_LISTED_PROPERTIES) throw new ProtocolError(`admin.vm.ListDetails takes at most ${MAX_LISTED_PROPERTIES} property names, not ${names.length}`);
  const bad = names.find((n) => !/^[A-Za-z_][A-Za-z0-9_]*$/.test(n));
  if (bad !== undefined) throw new ProtocolError(`admin.vm.ListDetails takes property names joined by '+', not '${printable(bad)}' in '${printable(h.arg)}'`);
}

function checkShutdownMode(h: { readonly arg: string }): void {
  if (h.arg !== '' && !h.arg.split('+').every((a) => a === 'force' || a === 'wait'))
    throw new ProtocolError(`admin.vm.Shutdown takes force, wait or force+wait, not '${printable(h.arg)}'`);
}

async function createDomain(ctx: MethodContext, call: AdminCall, klass: DomainClass, inPool: boolean): Promise<void> {
  const { app } = ctx;
  let template: string | undefined;
  if (call.arg !== '') {
    if (klass !== 'AppVM' && klass !== 'DispVM') throw new QubesValueError(`${klass} cannot be based on template`);
    const t = app.findDomain(call.arg);
    if (!t) throw new QubesVMNotFoundError(`no such domain: '${printable(call.arg)}'`);
    template = t.name;
  }

  const fields = parseKeyValues(call.payload, {
    separator: 'space',
    what: `${call.method} payload`,
    keys: (k) => k === 'name' || k === 'label' || (inPool && (k === 'pool' || k.startsWith('pool:'))),
  });
  const name = fields['name'];
  const label = fields['label'];
  if (name === undefined || label === undefined) throw new ProtocolError('Missing name or label');
  validateDomainName(name);

  if (/^[0-9]+$/.test(label)) throw new ProtocolError(`label '${printable(label)}': give its name, not an index`);
  if (!LABEL_NAME_RE.test(label)) throw new ProtocolError(`label '${printable(label)}': invalid characters`);
  if (!app.labels.has(label)) throw new QubesLabelNotFoundError(`no such label '${printable(label)}'`);

  let pool: string | undefined;
  const pools: Record<string, string> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (k === 'pool') pool = knownPool(ctx, v);
    else if (k.startsWith('pool:')) {
      const volume = k.slice(5);
      if (!POOL_VOLUMES.has(volume)) throw new ProtocolError(`pool:${printable(volume)}: no such volume (root, private, volatile or kernel)`);
      pools[volume] = knownPool(ctx, v);
    }
  }
  if (pool !== undefined && Object.keys(pools).length) throw new ProtocolError(`Only one of 'pool=' and 'pool:volume=' can be used`);
  if (app.findDomain(name)) throw new QubesVMAlreadyExistsError(`VM ${name} already exists`);

  const d = await app.createDomain({
    klass,
    name,
    label,
    ...(template !== undefined ? { template } : {}),
    ...(pool !== undefined ? { pool } : {}),
    ...(Object.keys(pools).length ? { pools } : {}),
  });
  // As the reference does: mark who made it (a source name with characters
  // a tag cannot hold gets no mark).
  const tag = `created-by-${call.source}`;
  if (!isTagName(tag) || app.findDomain(name) !== d) return;
  try {
    await app.addTag(d, tag);
  } catch (e) {
    // The domain exists and the call succeeded; only the mark is missing.
    call.log.warn(`${name}: cannot add tag ${tag}: ${(e as Error).message}`);
  }
}

function knownPool(ctx: MethodContext, name: string): string {
  validatePoolName(name);
  if (!ctx.app.hasPool(name)) throw new QubesValueError(`no such pool '${printable(name)}'`);
  return name;
}
