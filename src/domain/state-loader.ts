/**
 * Loading the model from the state document: labels, pools (the state's,
 * then storage.conf's), domains with their properties, features and tags,
 * the global properties, then every domain's storage (templates first).
 * Every bad value is a StateFileError starting with `FILE:LINE:`.
 */
import { DomainStorage } from '../storage/domain-storage.js';
import { parseBool, parseInt10 } from '../storage/options.js';
import { printable, type VolumeConfig } from '../storage/volume.js';
import { AdminVM, checkDomainName, isDomainClass, makeDomain, type Domain, type DomainHost } from './domain.js';
import type { DomainTable } from './domain-table.js';
import { newVolumeConfigs, type VolumeDefaults } from './domain-volumes.js';
import { Labels } from './labels.js';
import type { Pools } from './pools.js';
import type { PropertyHolder } from './properties.js';
import type { DomainRecord, PendingChange, RawProperty, StateDocument } from './state-file.js';

/** What loading needs of the App. */
export interface LoadContext {
  /** The App: domains are made with it as their host; its labels are set first. */
  readonly host: DomainHost;
  setLabels(labels: Labels): void;
  readonly domains: DomainTable;
  readonly pools: Pools;
  readonly volumeDefaults: VolumeDefaults;
  /** Where a value loaded differently from what the file says is reported. */
  readonly notice?: ((line: string) => void) | undefined;
}

/**
 * Loads the document into the App's (empty) model. Returns the write-ahead
 * marks found (domains a crash left being created or removed), for the App
 * to finish.
 */
export async function loadState(doc: StateDocument, ctx: LoadContext): Promise<Map<Domain, PendingChange>> {
  const { host, domains, pools } = ctx;
  const labels = doc.readLabels();
  if (labels) ctx.setLabels(new Labels(labels));

  await pools.loadFromState(doc);
  // Before the domains: their volumes may live in storage.conf's pools.
  await pools.loadStorageConf();

  const marks = new Map<Domain, PendingChange>();
  const records = doc.readDomains();
  const recordOf = new Map<Domain, DomainRecord>();
  /** qid -> domain loaded so far (a Map: searching the domains for each one is quadratic). */
  const byQid = new Map<number, Domain>();
  const lines = new Map<object, Map<string, number>>();
  for (const rec of records) {
    if (!isDomainClass(rec.klass)) throw doc.error(rec.line, `unknown domain class '${printable(rec.klass)}'`);
    let d: Domain;
    if (rec.klass === 'AdminVM') {
      if (domains.listed.has('dom0')) throw doc.error(rec.line, 'a second AdminVM');
      d = new AdminVM(host);
    } else {
      const nameProp = rec.properties.find((p) => p.name === 'name');
      if (!nameProp) throw doc.error(rec.line, `${rec.klass} without a name property`);
      const qidProp = rec.properties.find((p) => p.name === 'qid');
      let qid = rec.idQid;
      if (qidProp) {
        try {
          qid = parseInt10(qidProp.raw.trim(), 'qid');
        } catch {
          throw doc.error(qidProp.line, `qid '${printable(qidProp.raw)}' is not a number`);
        }
      }
      if (qid === null || qid < 1) throw doc.error(rec.line, `domain ${nameProp.raw} has no valid qid`);
      try {
        checkDomainName(nameProp.raw);
      } catch (e) {
        throw doc.error(nameProp.line, (e as Error).message);
      }
      if (domains.listed.has(nameProp.raw)) throw doc.error(rec.line, `domain ${nameProp.raw} is defined twice`);
      const sameQid = byQid.get(qid);
      if (sameQid) throw doc.error(rec.line, `domain ${nameProp.raw} has qid ${qid}, as ${sameQid.name} has`);
      d = makeDomain(rec.klass, host, { name: nameProp.raw, qid });
    }
    byQid.set(d.qid, d);
    lines.set(d, loadProperties(doc, host, d, rec.properties));
    for (const f of rec.features) d.features.set(f.name, f.value);
    for (const t of rec.tags) d.tags.add(t);
    domains.listed.set(d.name, d);
    recordOf.set(d, rec);
    if (rec.pending) marks.set(d, rec.pending);
    doc.bind(d, rec.el);
  }
  if (!domains.listed.has('dom0')) domains.listed.set('dom0', new AdminVM(host));
  lines.set(host.globals, loadProperties(doc, host, host.globals, doc.readGlobalProperties()));

  // Cross-checks need every domain loaded.
  for (const [holder, byName] of lines) {
    for (const [name, line] of byName) {
      try {
        (holder as PropertyHolder).checkProperty(name, (holder as PropertyHolder).prop(name));
      } catch (e) {
        throw doc.error(line, (e as Error).message);
      }
    }
  }

  // Storage, templates before the domains based on them.
  const depth = new Map([...domains.listed.values()].map((d) => [d, d.templateChain().length]));
  const ordered = [...domains.listed.values()].sort((a, b) => depth.get(a)! - depth.get(b)!);
  for (const d of ordered) {
    if (d.klass === 'AdminVM') continue;
    const rec = recordOf.get(d);
    const configs = rec && rec.volumes.length ? volumeConfigsFromRecord(doc, pools, d, rec, ctx.notice) : newVolumeConfigs(d, {}, ctx.volumeDefaults);
    try {
      d.storage = DomainStorage.init({ domain: d, volumes: configs, template: d.template?.storage ?? null }, (n) => pools.forVolume(n));
    } catch (e) {
      throw doc.error(rec?.line ?? 0, `domain ${d.name}: ${(e as Error).message}`);
    }
  }
  return marks;
}

function loadProperties(doc: StateDocument, host: DomainHost, holder: PropertyHolder, props: RawProperty[]): Map<string, number> {
  const lines = new Map<string, number>();
  for (const p of props) {
    if (!holder.hasProperty(p.name)) continue; // unknown: stays in the file untouched
    const def = holder.propertyDef(p.name);
    if (def.computed) continue;
    try {
      const value = def.type === 'label' ? host.labels.get(p.raw).name : holder.parseProperty(p.name, p.raw);
      holder.storeProperty(p.name, value);
    } catch (e) {
      throw doc.error(p.line, `${holder.holderName}: ${(e as Error).message}`);
    }
    lines.set(p.name, p.line);
  }
  return lines;
}

function volumeConfigsFromRecord(
  doc: StateDocument,
  pools: Pools,
  d: Domain,
  rec: DomainRecord,
  notice: ((line: string) => void) | undefined,
): VolumeConfig[] {
  return rec.volumes.map(({ attrs, line }) => {
    const fail = (why: string): never => {
      throw doc.error(line, `domain ${d.name}: volume ${attrs['name'] ?? '?'}: ${why}`);
    };
    const name = attrs['name'] ?? fail('no name');
    const pool = attrs['pool'] ?? fail('no pool');
    if (!pools.has(pool)) fail(`no pool '${printable(pool)}'`);
    const num = (k: string): number | undefined => {
      const v = attrs[k];
      if (v === undefined) return undefined;
      try {
        return parseInt10(v.trim(), k);
      } catch {
        return fail(`${k}='${printable(v)}' is not an integer`);
      }
    };
    const bool = (k: string): boolean | undefined => {
      const v = attrs[k];
      if (v === undefined) return undefined;
      try {
        return parseBool(v, k);
      } catch {
        return fail(`${k}='${printable(v)}' is not True or False`);
      }
    };
    const c: VolumeConfig = {
      name,
      pool,
      size: num('size') ?? 0,
      rw: bool('rw') ?? false,
      snap_on_start: bool('snap_on_start') ?? false,
      save_on_stop: bool('save_on_stop') ?? false,
    };
    if (attrs['vid'] !== undefined) c.vid = attrs['vid'];
    const rtk = num('revisions_to_keep');
    if (rtk !== undefined) c.revisions_to_keep = keepableRevisions(pools, pool, rtk, (most) =>
      notice?.(`${doc.file}:${line}: note: domain ${d.name}: volume ${name}: revisions_to_keep ${rtk} is more than driver ${pools.get(pool).declaredBy} keeps; using ${most} (saved so at the next change)`),
    );
    const eph = bool('ephemeral');
    if (eph !== undefined) c.ephemeral = eph;
    return c;
  });
}

/**
 * A loaded revisions_to_keep above what the pool's driver keeps (a state
 * written before the limit was enforced) is lowered to the limit, with a
 * notice: refusing it would keep the whole state from loading over a
 * setting the driver cannot honour anyway.
 */
function keepableRevisions(pools: Pools, pool: string, n: number, lowered: (most: number) => void): number {
  const most = pools.get(pool).capabilities.maxRevisions;
  if (n <= most) return n;
  lowered(most);
  return most;
}
