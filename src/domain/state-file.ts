/**
 * The state file, shaped like Qubes R4's qubes.xml:
 *
 *     <?xml version='1.0' encoding='UTF-8'?>
 *     <qubes version="3.0">
 *       <labels>
 *         <label color="0xcc0000" id="label-1">red</label> ...
 *       </labels>
 *       <pools>
 *         <pool dir_path="/var/lib/qubes" driver="file-reflink" name="default"/> ...
 *       </pools>
 *       <properties>
 *         <property name="default_template">fedora</property> ...
 *       </properties>
 *       <domains>
 *         <domain id="domain-1" class="TemplateVM">
 *           <properties> <property name="name">fedora</property> ... </properties>
 *           <features> <feature name="NAME">VALUE</feature> ... </features>
 *           <devices class="pci"/> ...                      (kept as they are)
 *           <tags> <tag name="NAME"/> ... </tags>
 *           <volume-config>
 *             <volume name="root" pool="default" rw="True" save_on_stop="True"
 *                     size="10737418240" vid="vm-templates/fedora/root"/> ...
 *           </volume-config>
 *         </domain>
 *       </domains>
 *     </qubes>
 *
 * The document read is kept, and saving writes the model back into it:
 * only what the model knows is touched (its properties, features, tags,
 * volume attributes, pools), everything else (unknown elements, unknown
 * attributes, comments, `<devices>`, the spacing) stays as it was. A value
 * whose meaning did not change keeps its spelling (`rw="true"` stays even
 * though we would write `True`). So a file loaded and saved without changes
 * is written back byte for byte; a changed property changes that line only.
 * New elements are written the way Qubes writes them: attributes sorted,
 * booleans `True` (a false boolean is left out), properties in name order,
 * indented like their siblings.
 *
 * Reading is bounded (MAX_STATE_BYTES) and errors name file and line.
 */
import * as fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import type { Domain } from './domain.js';
import { labelId, type Label, type Labels } from './labels.js';
import { propertyText, type PropertyHolder, type PropValue } from './properties.js';
import {
  attr,
  childElements,
  DeferredElement,
  firstChild,
  indentOf,
  indentUnit,
  insertElement,
  mutations,
  newElement,
  parseXml,
  removeElement,
  serializeElement,
  serializeXml,
  setAttr,
  setText,
  StateFileError,
  textOf,
  type XDocument,
  type XElement,
  type XNode,
} from './xml.js';
import { boolFromWord } from '../storage/options.js';
import type { Volume } from '../storage/volume.js';
import type { JournalUnit } from './state-journal.js';

export { StateFileError } from './xml.js';

/** Largest state file read: a bigger one is refused (a real qubes.xml is well under 1 MiB). */
export const MAX_STATE_BYTES = 64 * 1024 * 1024;

const NEW_DOCUMENT = `<?xml version='1.0' encoding='UTF-8'?>\n<qubes version="3.0"/>\n`;

/** A pool as the model keeps it for saving: its options as written (strings). */
export interface PoolRecord {
  readonly name: string;
  readonly driver: string;
  /** Options besides name and driver, as strings, in file order. */
  readonly options: Record<string, string>;
}

export interface RawProperty {
  readonly name: string;
  /** `ref` attribute if present, else the text. */
  readonly raw: string;
  readonly viaRef: boolean;
  readonly line: number;
}

/**
 * Attribute of a `<domain>` whose volumes are being created or removed: a
 * write-ahead mark, so that after a crash the next start finishes the job
 * (removes the volumes) instead of leaving volumes no domain owns.
 */
export const PENDING_ATTR = 'qubes-storage-pending';
export type PendingChange = 'create' | 'remove';

export interface DomainRecord {
  readonly el: XElement;
  readonly klass: string;
  /** A create or remove interrupted by a crash (see PENDING_ATTR). */
  readonly pending: PendingChange | null;
  /** From the `id` attribute `domain-N` (null if absent or malformed). */
  readonly idQid: number | null;
  readonly properties: RawProperty[];
  readonly features: Array<{ name: string; value: string }>;
  readonly tags: string[];
  readonly volumes: Array<{ attrs: Record<string, string>; line: number }>;
  readonly line: number;
}

/** What saving needs from the App. */
export interface StateModel {
  readonly labels: Labels;
  readonly globals: PropertyHolder;
  poolRecords(): PoolRecord[];
  /** All domains, dom0 included. */
  domainList(): Domain[];
  /** Domains whose volumes are being made: saved with their mark, not yet listed. */
  creatingDomains(): Domain[];
  /** Whether d is among domainList() or creatingDomains(). */
  isSaved(d: Domain): boolean;
  /** The write-ahead mark of a domain, if any. */
  pendingOf(d: Domain): PendingChange | null;
}

/**
 * Which domains a save must look at: 'all', or the ones a change touched
 * (the sections, labels, pools and global properties, are always looked at:
 * they are small).
 */
export type SaveScope = 'all' | ReadonlySet<Domain>;

/** What a sync changed in the document, as journal units. */
export interface SyncChanges {
  readonly units: JournalUnit[];
  /** A changed domain element without a key (no qid): only a full write can save it. */
  readonly unkeyed: boolean;
}

/** Reads at most `maxBytes`; null when the file does not exist. */
export async function readStateText(file: string, maxBytes = MAX_STATE_BYTES): Promise<string | null> {
  return (await readStateFile(file, maxBytes))?.text ?? null;
}

/**
 * The state file's text and the bytes it was decoded from (the backup taken
 * at open compares those, instead of reading the file again); null when the
 * file does not exist.
 */
export async function readStateFile(file: string, maxBytes = MAX_STATE_BYTES): Promise<{ text: string; bytes: Buffer } | null> {
  let fh;
  try {
    fh = await fs.open(file, fsc.O_RDONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new StateFileError(`${file}: cannot read the state file: ${(e as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new StateFileError(`${file}: the state file is not a regular file`);
    if (st.size > maxBytes) throw new StateFileError(`${file}: the state file is ${st.size} bytes, more than the limit of ${maxBytes}`);
    // Not zeroed: only the bytes read are used (a state of 10,000 domains is ~10 MB).
    const buf = Buffer.allocUnsafe(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > maxBytes) throw new StateFileError(`${file}: the state file is more than ${maxBytes} bytes`);
      if (n === buf.length) break;
    }
    const bytes = buf.subarray(0, n);
    try {
      return { text: new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes), bytes };
    } catch {
      const bad = firstInvalidUtf8Line(bytes);
      throw new StateFileError(`${file}:${bad}: the state file is not valid UTF-8`);
    }
  } finally {
    await fh.close();
  }
}

function firstInvalidUtf8Line(buf: Buffer): number {
  let line = 1;
  let start = 0;
  for (let i = 0; i <= buf.length; i++) {
    if (i === buf.length || buf[i] === 10) {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(start, i));
      } catch {
        return line;
      }
      line++;
      start = i + 1;
    }
  }
  return line;
}

const boolAttr = (v: string | undefined): boolean => v !== undefined && boolFromWord(v.trim()) === true;

export class StateDocument {
  private readonly bound = new WeakMap<object, XElement>();

  private constructor(
    readonly doc: XDocument,
    /** The records of the domain elements read at parse (an element replaced since, by the journal, has none). */
    private readonly readAtParse = new WeakMap<XElement, DomainRecord | StateFileError>(),
  ) {}

  static parse(text: string, file: string): StateDocument {
    // Depth 2 (the children of <domains>, <pools>, ...) keep their source
    // text: an unchanged domain is then written back as one string. Each
    // domain is read into its record as soon as it is parsed and kept as its
    // text only (DeferredElement: parsed again when a save looks inside).
    const read = new WeakMap<XElement, DomainRecord | StateFileError>();
    const doc = parseXml(text, file, 2, {
      kept(el, parent) {
        if (el.name !== 'domain' || parent.name !== 'domains' || el.src === undefined) return el;
        const deferred = new DeferredElement(el.name, el.line, el.src, file);
        try {
          read.set(deferred, domainRecord(file, el, deferred));
        } catch (e) {
          // Thrown by readDomains, in document order (a malformed document is refused first).
          if (!(e instanceof StateFileError)) throw e;
          read.set(deferred, e);
        }
        return deferred;
      },
    });
    if (doc.root.name !== 'qubes')
      throw new StateFileError(`${file}:${doc.root.line}: root element is <${doc.root.name}>, expected <qubes>`);
    return new StateDocument(doc, read);
  }

  static empty(file: string): StateDocument {
    return StateDocument.parse(NEW_DOCUMENT, file);
  }

  get file(): string {
    return this.doc.file;
  }

  /** The whole document as written; domain elements keep what they serialise to, for the next time. */
  serialize(): string {
    const sec = this.section('domains');
    if (sec) for (const c of sec.children) if (c.kind === 'element' && c.src === undefined) c.src = serializeElement(c);
    return serializeXml(this.doc);
  }

  /**
   * Applies journal records (see state-journal.ts), in order. Each unit sets
   * a section or a domain (by key) to its journaled text, or removes the domain.
   */
  applyJournal(records: readonly JournalUnit[][], journalFile: string): void {
    const unit = indentUnit(this.doc);
    const root = this.doc.root;
    let byKey: Map<string, XElement> | null = null;
    records.forEach((units, i) => {
      const where = `${journalFile} (record ${i + 1})`;
      for (const u of units) {
        if ('section' in u) {
          const el = parseXml(u.xml, where).root;
          if (el.name !== u.section) throw new StateFileError(`${where}: section ${u.section} holds <${el.name}>`);
          const old = firstChild(root, u.section);
          if (old) root.children[root.children.indexOf(old)] = el;
          else insertElement(root, el, null, '', unit);
          continue;
        }
        const sec = this.ensureSection(root, 'domains', '', unit);
        if (!byKey) {
          byKey = new Map();
          for (const el of childElements(sec, 'domain')) {
            const k = domainKey(el);
            if (k !== null) byKey.set(k, el);
          }
        }
        const old = byKey.get(u.domain);
        if (u.xml === null) {
          if (old) removeElement(sec, old);
          byKey.delete(u.domain);
          continue;
        }
        const el = parseXml(u.xml, where).root;
        if (el.name !== 'domain' || domainKey(el) !== u.domain)
          throw new StateFileError(`${where}: the unit for domain ${u.domain} holds another element`);
        el.src = u.xml;
        if (old) sec.children[sec.children.indexOf(old)] = el;
        else insertElement(sec, el, null, indentOf(root, sec), unit);
        byKey.set(u.domain, el);
      }
    });
  }

  /** `FILE:LINE: what`, for load errors. */
  error(line: number, what: string): StateFileError {
    return lineError(this.file, line, what);
  }

  /** Ties a model object (domain, pool record key) to its element. */
  bind(obj: object, el: XElement): void {
    this.bound.set(obj, el);
  }

  // ---- reading -----------------------------------------------------------------

  private section(name: string): XElement | undefined {
    return firstChild(this.doc.root, name);
  }

  /** The labels written in the file, or null when it has none. */
  readLabels(): Label[] | null {
    const sec = this.section('labels');
    if (!sec) return null;
    return childElements(sec, 'label').map((el) => {
      const id = attr(el, 'id') ?? '';
      const m = /^label-([1-9][0-9]{0,5})$/.exec(id);
      if (!m) throw this.error(el.line, `label: id '${id}' is not label-N`);
      const name = textOf(el).trim();
      if (!name) throw this.error(el.line, `label ${id} has no name`);
      return { index: Number(m[1]), name, color: attr(el, 'color') ?? '0x000000' };
    });
  }

  readPools(): Array<PoolRecord & { el: XElement }> {
    const sec = this.section('pools');
    if (!sec) return [];
    return childElements(sec, 'pool').map((el) => {
      const name = attr(el, 'name');
      const driver = attr(el, 'driver');
      if (!name) throw this.error(el.line, 'pool without a name');
      if (!driver) throw this.error(el.line, `pool ${name} without a driver`);
      const options: Record<string, string> = {};
      for (const a of el.attrs) if (a.name !== 'name' && a.name !== 'driver') options[a.name] = a.value;
      return { name, driver, options, el };
    });
  }

  readGlobalProperties(): RawProperty[] {
    return readProperties(this.file, this.section('properties'));
  }

  readDomains(): DomainRecord[] {
    const sec = this.section('domains');
    if (!sec) return [];
    return childElements(sec, 'domain').map((el) => {
      const rec = this.readAtParse.get(el) ?? domainRecord(this.file, el, el);
      this.readAtParse.delete(el); // read once, at load: not kept for the daemon's life
      if (rec instanceof StateFileError) throw rec;
      return rec;
    });
  }

  // ---- writing the model back ------------------------------------------------------

  /**
   * Brings the document in line with the model, touching only what differs,
   * and says what it changed. With a set of domains as scope, only those
   * domains are looked at (the caller promises no other domain changed).
   */
  sync(model: StateModel, scope: SaveScope = 'all'): SyncChanges {
    const unit = indentUnit(this.doc);
    const root = this.doc.root;
    const units: JournalUnit[] = [];
    const section = (name: 'labels' | 'pools' | 'properties', fill: (sec: XElement) => void): void => {
      const before = mutations;
      const sec = this.ensureSection(root, name, '', unit);
      fill(sec);
      if (mutations !== before) units.push({ section: name, xml: serializeElement(sec) });
    };
    section('labels', (labels) => {
      if (childElements(labels).length === 0)
        for (const l of model.labels.list())
          insertElement(labels, newElement('label', { color: l.color, id: labelId(l) }, l.name), null, unit, unit);
    });
    section('pools', (sec) => this.syncPools(sec, model, unit));
    section('properties', (sec) => this.syncProperties(sec, model.globals, model.labels, unit, unit));
    const domains = new DomainChanges();
    const sec = this.ensureSection(root, 'domains', '', unit);
    if (scope === 'all') this.syncDomains(sec, model, unit, domains);
    else this.syncSomeDomains(sec, model, scope, unit, domains);
    let unkeyed = false;
    for (const [, key] of domains.removed) {
      if (key === null) unkeyed = true;
      else units.push({ domain: key, xml: null });
    }
    for (const el of domains.changed) {
      const key = domainKey(el);
      if (key === null) unkeyed = true;
      // Serialised once: the text goes to the journal and stays as the element's src.
      else units.push({ domain: key, xml: (el.src = serializeElement(el)) });
    }
    return { units, unkeyed };
  }

  private ensureSection(parent: XElement, name: string, parentIndent: string, unit: string): XElement {
    let el = firstChild(parent, name);
    if (!el) {
      el = newElement(name);
      insertElement(parent, el, null, parentIndent, unit);
    }
    return el;
  }

  private syncPools(sec: XElement, model: StateModel, unit: string): void {
    const wanted = new Map(model.poolRecords().map((p) => [p.name, p]));
    const seen = new Set<string>();
    for (const el of childElements(sec, 'pool')) {
      const name = attr(el, 'name') ?? '';
      const p = wanted.get(name);
      if (!p || seen.has(name)) {
        removeElement(sec, el);
        continue;
      }
      seen.add(name);
      setAttr(el, 'driver', p.driver);
      for (const [k, v] of Object.entries(p.options)) setAttr(el, k, v);
    }
    for (const p of wanted.values()) {
      if (seen.has(p.name)) continue;
      const attrs: Record<string, string> = { ...p.options, driver: p.driver, name: p.name };
      insertElement(sec, newElement('pool', sortedAttrs(attrs)), null, unit, unit);
    }
  }

  /** Writes a holder's explicit values into `<properties>`; other property elements stay. */
  private syncProperties(sec: XElement, holder: PropertyHolder, labels: Labels, indent: string, unit: string): void {
    const els = childElements(sec, 'property');
    const handled = new Set<string>();
    for (const el of els) {
      const name = attr(el, 'name') ?? '';
      if (!holder.hasProperty(name)) continue; // unknown: kept as is
      const def = holder.propertyDef(name);
      if (def.computed) continue;
      if (!holder.isPropertySet(name) || handled.has(name)) {
        removeElement(sec, el);
        continue;
      }
      handled.add(name);
      const value = holder.readProperty(name).value;
      const ref = attr(el, 'ref');
      const current = ref ?? textOf(el);
      if (sameValue(holder, name, current, value, labels)) continue;
      if (ref !== undefined) setAttr(el, 'ref', def.type === 'label' ? labelId(labels.get(String(value))) : propertyText(value));
      else setText(el, propertyText(value));
    }
    for (const name of holder.setPropertyNames()) {
      if (handled.has(name) || holder.propertyDef(name).computed) continue;
      const el = newElement('property', { name }, propertyText(holder.readProperty(name).value));
      const before = childElements(sec, 'property').find((e) => (attr(e, 'name') ?? '') > name) ?? null;
      insertElement(sec, el, before, indent, unit);
    }
  }

  private syncDomains(sec: XElement, model: StateModel, unit: string, changes: DomainChanges): void {
    const domains = [...model.domainList(), ...model.creatingDomains()];
    const live = new Set(domains.map((d) => this.bound.get(d)).filter((e): e is XElement => e !== undefined));
    for (const el of childElements(sec, 'domain')) if (!live.has(el)) changes.remove(sec, el);
    // Where each child is, taken once: asking sec.children for each domain is quadratic
    // in the number of domains. Elements inserted below go at the end, so these stay right.
    const at = new Map<XNode, number>(sec.children.map((c, i) => [c, i]));
    for (const d of domains) this.syncDomain(sec, d, model, unit, changes, at);
  }

  /** syncDomains for the domains of `scope` only: those gone from the model are removed, the others synced. */
  private syncSomeDomains(sec: XElement, model: StateModel, scope: ReadonlySet<Domain>, unit: string, changes: DomainChanges): void {
    for (const d of scope) {
      if (model.isSaved(d)) {
        this.syncDomain(sec, d, model, unit, changes, null);
      } else {
        const el = this.bound.get(d);
        if (el && sec.children.includes(el)) changes.remove(sec, el);
      }
    }
  }

  /**
   * Brings one domain's element in line (making it if new). `at`: where
   * the children of `sec` are (null: look it up).
   */
  private syncDomain(sec: XElement, d: Domain, model: StateModel, unit: string, changes: DomainChanges, at: Map<XNode, number> | null): void {
    const before = mutations;
    let el = this.bound.get(d);
    const found = !el ? -1 : at ? (at.get(el) ?? -1) : sec.children.indexOf(el);
    const i = found >= 0 ? found : undefined;
    if (el && i === undefined) {
      // Taken out by a save that failed and was undone: put it back as it was.
      insertElement(sec, el, null, indentOf(this.doc.root, sec), unit);
      changes.changed.add(el);
    } else if (!el) {
      el = newElement('domain', { id: `domain-${d.qid}`, class: d.klass });
      el.children.push(newElement('properties'), newElement('features'));
      if (d.klass !== 'AdminVM')
        for (const c of ['pci', 'block', 'usb']) el.children.push(newElement('devices', { class: c }));
      el.children.push(newElement('tags'));
      if (d.klass !== 'AdminVM') el.children.push(newElement('volume-config'));
      insertElement(sec, el, null, indentOf(this.doc.root, sec), unit);
      this.bound.set(d, el);
    }
    const pending = model.pendingOf(d);
    if (attr(el, PENDING_ATTR) !== (pending ?? undefined)) setAttr(el, PENDING_ATTR, pending);
    const ind = i === undefined ? indentOf(sec, el) : indentAt(sec, i);
    const props = firstChild(el, 'properties') ?? this.ensureSection(el, 'properties', ind, unit);
    this.syncProperties(props, d, model.labels, ind + unit, unit);
    this.syncNamed(el, 'features', 'feature', d.features, ind, unit);
    this.syncNamed(el, 'tags', 'tag', new Map([...d.tags].map((t) => [t, null])), ind, unit);
    if (d.storage.volumes.size > 0 || firstChild(el, 'volume-config'))
      this.syncVolumes(this.ensureSection(el, 'volume-config', ind, unit), d, ind + unit, unit);
    if (mutations !== before) {
      // Something inside changed: its kept source text is stale.
      el.src = undefined;
      changes.changed.add(el);
    }
  }

  /** `<features><feature name=..>value</feature>` or `<tags><tag name=../>` (value null). */
  private syncNamed(el: XElement, secName: string, itemName: string, items: ReadonlyMap<string, string | null>, ind: string, unit: string): void {
    let sec = firstChild(el, secName);
    if (!sec) {
      if (items.size === 0) return;
      sec = this.ensureSection(el, secName, ind, unit);
    }
    const seen = new Set<string>();
    for (const item of childElements(sec, itemName)) {
      const name = attr(item, 'name') ?? '';
      if (!items.has(name) || seen.has(name)) {
        removeElement(sec, item);
        continue;
      }
      seen.add(name);
      const v = items.get(name);
      if (v !== null && v !== undefined) setText(item, v);
    }
    for (const [name, v] of items) {
      if (seen.has(name)) continue;
      insertElement(sec, newElement(itemName, { name }, v === null ? undefined : v), null, ind + unit, unit);
    }
  }

  private syncVolumes(sec: XElement, d: Domain, ind: string, unit: string): void {
    const seen = new Set<string>();
    for (const el of childElements(sec, 'volume')) {
      const name = attr(el, 'name') ?? '';
      const v = d.storage.volumes.get(name);
      if (!v || seen.has(name)) {
        removeElement(sec, el);
        continue;
      }
      seen.add(name);
      for (const [k, want] of Object.entries(volumeAttrs(v))) {
        const have = attr(el, k);
        if (k === 'source' && have === undefined) continue; // derived from the template: only kept up to date
        if (sameVolumeAttr(k, have, want)) continue;
        setAttr(el, k, want);
      }
    }
    for (const [name, v] of d.storage.volumes) {
      if (seen.has(name)) continue;
      const attrs = volumeAttrs(v);
      const clean: Record<string, string> = {};
      for (const [k, x] of Object.entries(attrs)) if (x !== null) clean[k] = x;
      insertElement(sec, newElement('volume', sortedAttrs(clean)), null, ind, unit);
    }
  }
}

/** The `<property>` children of `parent`. */
function readProperties(file: string, parent: XElement | undefined): RawProperty[] {
  if (!parent) return [];
  return childElements(parent, 'property').map((el) => {
    const name = attr(el, 'name');
    if (!name) throw lineError(file, el.line, 'property without a name');
    const ref = attr(el, 'ref');
    return { name, raw: ref ?? textOf(el), viaRef: ref !== undefined, line: el.line };
  });
}

/** `FILE:LINE: what` (StateDocument.error, for the readers that run before there is a document). */
function lineError(file: string, line: number, what: string): StateFileError {
  return new StateFileError(`${file}:${line}: ${what}`);
}

/** What a `<domain>` element says; `recorded`: the element the record names (el itself, or what replaces it in the tree). */
function domainRecord(file: string, el: XElement, recorded: XElement): DomainRecord {
  const klass = attr(el, 'class');
  if (!klass) throw lineError(file, el.line, 'domain without a class');
  const id = /^domain-(0|[1-9][0-9]{0,5})$/.exec(attr(el, 'id') ?? '');
  const features = childElements(firstChild(el, 'features') ?? el, 'feature').map((f) => {
    const name = attr(f, 'name');
    if (!name) throw lineError(file, f.line, 'feature without a name');
    return { name, value: textOf(f) };
  });
  const tags = childElements(firstChild(el, 'tags') ?? el, 'tag').map((t) => {
    const name = attr(t, 'name');
    if (!name) throw lineError(file, t.line, 'tag without a name');
    return name;
  });
  const vc = firstChild(el, 'volume-config');
  const volumes = vc
    ? childElements(vc, 'volume').map((v) => {
        const attrs: Record<string, string> = {};
        for (const a of v.attrs) attrs[a.name] = a.value;
        return { attrs, line: v.line };
      })
    : [];
  const pending = attr(el, PENDING_ATTR);
  return {
    el: recorded,
    klass,
    pending: pending === 'create' || pending === 'remove' ? pending : null,
    idQid: id ? Number(id[1]) : null,
    properties: readProperties(file, firstChild(el, 'properties')),
    features,
    tags,
    volumes,
    line: el.line,
  };
}

/** The domain elements a sync changed or removed. */
class DomainChanges {
  readonly changed = new Set<XElement>();
  /** Removed elements and their keys (taken before removal). */
  readonly removed = new Map<XElement, string | null>();

  remove(sec: XElement, el: XElement): void {
    this.removed.set(el, domainKey(el));
    this.changed.delete(el);
    removeElement(sec, el);
  }
}

/**
 * What identifies a `<domain>` across saves, for the journal: its qid
 * (the `qid` property, else the `id` attribute), "dom0" for the AdminVM;
 * null if it has none.
 */
export function domainKey(el: XElement): string | null {
  if (attr(el, 'class') === 'AdminVM') return 'dom0';
  const props = firstChild(el, 'properties');
  const q = props && childElements(props, 'property').find((p) => attr(p, 'name') === 'qid');
  if (q) {
    const t = textOf(q).trim();
    return /^(0|[1-9][0-9]{0,9})$/.test(t) ? t : null;
  }
  const id = /^domain-(0|[1-9][0-9]{0,9})$/.exec(attr(el, 'id') ?? '');
  return id ? id[1]! : null;
}

/** indentOf(parent, parent.children[i]) without searching for it. */
function indentAt(parent: XElement, i: number): string {
  const prev = parent.children[i - 1];
  if (prev === undefined || prev.kind !== 'text' || prev.value.trim() !== '') return '';
  const nl = prev.value.lastIndexOf('\n');
  return nl < 0 ? '' : prev.value.slice(nl + 1);
}

function sortedAttrs(a: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(a).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
}

/** The attributes Qubes writes for a volume; null: left out. */
function volumeAttrs(v: Volume): Record<string, string | null> {
  const c = v.config();
  const b = (x: boolean | undefined): string | null => (x ? 'True' : null);
  return {
    name: c.name,
    pool: c.pool,
    vid: c.vid ?? v.vid,
    size: sizeAttr(c.size ?? v.size),
    rw: b(c.rw),
    snap_on_start: b(c.snap_on_start),
    save_on_stop: b(c.save_on_stop),
    revisions_to_keep: c.revisions_to_keep === undefined || c.revisions_to_keep === null ? null : String(c.revisions_to_keep),
    ephemeral: c.ephemeral === undefined || c.ephemeral === null ? null : c.ephemeral ? 'True' : 'False',
    source: c.source ?? null,
  };
}

/** Qubes writes `size` only when it is non-zero (a kernel volume has none). */
function sizeAttr(size: number): string | null {
  return size ? String(size) : null;
}

const BOOL_VOLUME_ATTRS = new Set(['rw', 'snap_on_start', 'save_on_stop', 'ephemeral']);

function sameVolumeAttr(k: string, have: string | undefined, want: string | null): boolean {
  if (BOOL_VOLUME_ATTRS.has(k)) {
    if (want === null) return have === undefined || (k !== 'ephemeral' && !boolAttr(have));
    return have !== undefined && boolAttr(have) === boolAttr(want);
  }
  // size="0" (written by earlier versions) means no size: kept as it is.
  if (want === null) return have === undefined || (k === 'size' && Number(have.trim()) === 0);
  if (have === undefined) return false;
  if (k === 'size' || k === 'revisions_to_keep') return Number(have.trim()) === Number(want);
  return have === want;
}

function sameValue(holder: PropertyHolder, name: string, current: string, value: PropValue, labels: Labels): boolean {
  try {
    const def = holder.propertyDef(name);
    if (def.type === 'label') return labels.get(current).name === value;
    return holder.parseProperty(name, current) === value;
  } catch {
    return false;
  }
}
