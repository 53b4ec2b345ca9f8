/**
 * The domain model: one class per Qubes domain class, each declaring its
 * properties as data (see properties.ts), plus the global settings. A
 * domain owns its volumes through a `DomainStorage`; the App makes, starts,
 * stops and removes them (with locks, saving and events), the classes here
 * only hold state and answer questions about it.
 *
 * Classes (facts from Qubes R4):
 * - AdminVM: dom0, qid 0, always present, no volumes, always Running.
 * - TemplateVM: own root and private; AppVMs are based on it.
 * - AppVM: root is a snapshot of its TemplateVM's; may be a template for
 *   disposables (`template_for_dispvms`).
 * - StandaloneVM: own root (empty, or cloned from a template at creation).
 * - DispVM: based on an AppVM with `template_for_dispvms`; root and private
 *   are snapshots.
 */
import { randomUUID } from 'node:crypto';
import { DomainStorage } from '../storage/domain-storage.js';
import { QubesPropertyValueError, QubesValueError } from '../storage/errors.js';
import { dirPrefixOf, type DomainClass } from '../storage/volume-sets.js';
import { printable, type DomainRef } from '../storage/volume.js';
import type { Labels } from './labels.js';
import { domainNameProblem, withArticle } from './names.js';
import { PropertyHolder, propertyTable, type PropertyDef, type PropValue } from './properties.js';
import type { RunnerDomain } from './runner.js';

export type { DomainClass } from '../storage/volume-sets.js';
export type PowerState = 'Halted' | 'Running';

export const DOMAIN_CLASSES: readonly DomainClass[] = ['AdminVM', 'AppVM', 'DispVM', 'StandaloneVM', 'TemplateVM'];

/** Domain names per the admin API (names.ts): <= 31 characters, a letter then letters, digits, '_', '.', '-'. */
export function checkDomainName(name: string): void {
  const problem = typeof name === 'string' ? domainNameProblem(name) : 'it is empty';
  if (problem) throw new QubesValueError(`invalid domain name '${printable(name)}': ${problem}`);
}

export function isDomainClass(s: string): s is DomainClass {
  return (DOMAIN_CLASSES as readonly string[]).includes(s);
}

/** What domains and global settings need from the App. */
export interface DomainHost {
  readonly labels: Labels;
  readonly globals: GlobalProperties;
  /** A domain by name (committed ones). */
  findDomain(name: string): Domain | undefined;
  domainList(): Domain[];
  hasPool(name: string): boolean;
  /** The pool a default_pool without value falls back to ('' when none fits). */
  autoDefaultPool(): string;
  /** The pool kernels come from when default_pool_kernel has no value ('' when none). */
  autoKernelPool(): string;
}

export interface DomainInit {
  name: string;
  qid: number;
  uuid?: string;
}

type D = Domain;
const bad = (h: PropertyHolder, name: string, why: string): never => {
  throw new QubesPropertyValueError(`${h.holderName}: property ${name}: ${why}`);
};

/** A `vm` property naming an existing domain, optionally of given classes. */
function vmCheck(name: string, ok: (target: Domain) => string | null) {
  return (h: PropertyHolder & { host: DomainHost }, value: PropValue): void => {
    if (value === null) return;
    const t = h.host.findDomain(String(value));
    if (!t) bad(h, name, `no domain '${printable(String(value))}'`);
    const why = ok(t!);
    if (why) bad(h, name, why);
  };
}

const COMMON_PROPS: readonly PropertyDef<D>[] = [
  {
    name: 'name',
    type: 'str',
    writeOnce: true,
    help: 'Name of the domain (unique; cannot be changed).',
    check: (_h, v) => checkDomainName(String(v)),
  },
  { name: 'qid', type: 'int', writeOnce: true, min: 0, help: 'Internal, persistent identifier of the domain.' },
  { name: 'uuid', type: 'str', writeOnce: true, help: 'UUID of the domain.' },
  { name: 'klass', type: 'str', computed: (h) => h.klass, help: 'Class of the domain.' },
  {
    name: 'label',
    type: 'label',
    help: 'Colourful label assigned to the domain (red, orange, yellow, green, gray, blue, purple, black).',
    check: (h, v) => {
      if (!h.host.labels.has(String(v))) bad(h, 'label', `no such label '${printable(String(v))}'`);
    },
  },
  { name: 'description', type: 'str', default: '', help: 'Human-readable description of the domain.' },
];

const QUBES_VM_PROPS: readonly PropertyDef<D>[] = [
  {
    name: 'template_for_dispvms',
    type: 'bool',
    default: false,
    help: 'Disposable domains may be based on this one.',
    check: (h, v) => {
      if (v === false) {
        const users = h.host.domainList().filter((d) => d.klass === 'DispVM' && d.templateName === h.name);
        if (users.length)
          bad(h, 'template_for_dispvms', `disposables are based on it: ${users.map((d) => d.name).join(', ')}`);
      }
    },
  },
  {
    name: 'default_dispvm',
    type: 'vm',
    allowNone: true,
    default: (h) => h.host.globals.prop('default_dispvm'),
    help: 'Default disposable template for disposables started from this domain.',
    check: vmCheck('default_dispvm', (t) => (t.prop('template_for_dispvms') === true ? null : `${t.name} is not a template for disposables`)),
  },
  {
    name: 'netvm',
    type: 'vm',
    allowNone: true,
    default: null,
    help: 'Domain that provides the network (None: offline).',
    check: vmCheck('netvm', (t) => (t.prop('provides_network') === true ? null : `${t.name} does not provide network`)),
  },
  { name: 'provides_network', type: 'bool', default: false, help: 'The domain provides network to others.' },
  {
    name: 'kernel',
    type: 'str',
    haltedOnly: true,
    default: (h) => {
      const t = h.template;
      return t ? t.prop('kernel') : h.host.globals.prop('default_kernel');
    },
    help: "Kernel version the domain boots (its kernel volume); empty: the domain's own kernel.",
  },
  { name: 'kernelopts', type: 'str', default: '', help: 'Kernel command line options.' },
  {
    name: 'virt_mode',
    type: 'str',
    default: 'pvh',
    help: 'Virtualisation mode: pvh, hvm or pv.',
    check: (h, v) => {
      if (!['pvh', 'hvm', 'pv'].includes(String(v))) bad(h, 'virt_mode', 'must be pvh, hvm or pv');
    },
  },
  { name: 'memory', type: 'int', min: 0, default: 400, help: 'Initial memory in MiB.' },
  { name: 'maxmem', type: 'int', min: 0, default: 4000, help: 'Maximum memory in MiB (0: no balancing).' },
  { name: 'vcpus', type: 'int', min: 1, default: 2, help: 'Number of virtual CPUs.' },
  { name: 'autostart', type: 'bool', default: false, help: 'Start the domain when the system starts.' },
  { name: 'debug', type: 'bool', default: false, help: 'Debug mode.' },
  { name: 'include_in_backups', type: 'bool', default: true, help: 'Include the domain in backups.' },
  { name: 'installed_by_rpm', type: 'bool', default: false, help: 'The domain was installed by a package.' },
  { name: 'qrexec_timeout', type: 'int', min: 0, default: 60, help: 'Seconds to wait for the qrexec agent at start.' },
  { name: 'shutdown_timeout', type: 'int', min: 0, default: 60, help: 'Seconds to wait for a clean shutdown.' },
];

const templateProp = (help: string, ok: (t: Domain) => string | null, dflt: (h: D) => PropValue): PropertyDef<D> => ({
  name: 'template',
  type: 'vm',
  haltedOnly: true,
  help,
  default: dflt,
  check: vmCheck('template', ok),
});

export abstract class Domain extends PropertyHolder implements DomainRef, RunnerDomain {
  abstract readonly klass: DomainClass;
  readonly host: DomainHost;
  /** The volumes (empty for dom0 until the App gives it storage). */
  storage: DomainStorage;
  powerState: PowerState = 'Halted';
  readonly tags = new Set<string>();
  readonly features = new Map<string, string>();

  constructor(host: DomainHost, init: DomainInit) {
    super();
    this.host = host;
    this.values.set('name', init.name);
    this.values.set('qid', init.qid);
    this.values.set('uuid', init.uuid ?? randomUUID());
    this.storage = new DomainStorage(this, new Map());
  }

  /** Which class a template of this domain must be, and whether it needs one. */
  static templateRule(klass: DomainClass): 'none' | 'TemplateVM' | 'dispvm-template' {
    return klass === 'AppVM' ? 'TemplateVM' : klass === 'DispVM' ? 'dispvm-template' : 'none';
  }

  // name and qid are set once at creation and read everywhere (sorting,
  // lookups of 10,000 domains): read the stored value without the generic path.
  get name(): string {
    const v = this.values.get('name');
    return typeof v === 'string' ? v : String(this.prop('name'));
  }
  get qid(): number {
    const v = this.values.get('qid');
    return v !== undefined ? Number(v) : Number(this.prop('qid'));
  }
  get uuid(): string {
    return String(this.prop('uuid'));
  }
  get label(): string {
    return String(this.prop('label'));
  }
  get holderName(): string {
    return `domain ${this.name}`;
  }
  get dirPrefix(): string {
    return dirPrefixOf(this.klass);
  }
  /** Name of the template (AppVM, DispVM), or null. */
  get templateName(): string | null {
    if (!this.hasProperty('template')) return null;
    const v = this.prop('template');
    return v === null ? null : String(v);
  }
  get template(): Domain | null {
    const n = this.templateName;
    return n === null ? null : (this.host.findDomain(n) ?? null);
  }
  /** Templates up the chain, nearest first (AppVM of a DispVM, then its TemplateVM). */
  templateChain(): Domain[] {
    const out: Domain[] = [];
    for (let t = this.template; t; t = t.template) {
      if (out.includes(t) || out.length > 16) throw new QubesValueError(`domain ${this.name}: template chain loops`);
      out.push(t);
    }
    return out;
  }
  get isRunning(): boolean {
    return this.powerState === 'Running';
  }
}

export class AdminVM extends Domain {
  readonly klass = 'AdminVM' as const;
  static readonly defs = propertyTable<D>(COMMON_PROPS, [
    { name: 'name', type: 'str', computed: () => 'dom0', help: 'Name of the domain (always dom0).' },
    { name: 'qid', type: 'int', computed: () => 0, help: 'Internal identifier (always 0).' },
    { name: 'uuid', type: 'str', computed: () => ADMINVM_UUID, help: 'UUID of dom0.' },
    { ...COMMON_PROPS.find((p) => p.name === 'label')!, default: 'black' },
  ]);
  constructor(host: DomainHost) {
    super(host, { name: 'dom0', qid: 0, uuid: ADMINVM_UUID });
    this.values.clear();
    this.powerState = 'Running';
  }
  propertyDefs() {
    return AdminVM.defs;
  }
  override get name(): string {
    return String(this.prop('name'));
  }
}

export const ADMINVM_UUID = '00000000-0000-0000-0000-000000000000';

export class TemplateVM extends Domain {
  readonly klass = 'TemplateVM' as const;
  static readonly defs = propertyTable<D>(COMMON_PROPS, QUBES_VM_PROPS);
  propertyDefs() {
    return TemplateVM.defs;
  }
}

export class StandaloneVM extends Domain {
  readonly klass = 'StandaloneVM' as const;
  static readonly defs = propertyTable<D>(COMMON_PROPS, QUBES_VM_PROPS);
  propertyDefs() {
    return StandaloneVM.defs;
  }
}

export class AppVM extends Domain {
  readonly klass = 'AppVM' as const;
  static readonly defs = propertyTable<D>(COMMON_PROPS, QUBES_VM_PROPS, [
    templateProp(
      'Template (a TemplateVM) whose root this domain starts from.',
      (t) => (t.klass === 'TemplateVM' ? null : `${t.name} is ${withArticle(t.klass)}, not a TemplateVM`),
      (h) => h.host.globals.prop('default_template'),
    ),
  ]);
  propertyDefs() {
    return AppVM.defs;
  }
}

export class DispVM extends Domain {
  readonly klass = 'DispVM' as const;
  static readonly defs = propertyTable<D>(COMMON_PROPS, QUBES_VM_PROPS, [
    templateProp(
      'Disposable template (a domain with template_for_dispvms) this disposable is based on.',
      (t) => (t.klass !== 'DispVM' && t.prop('template_for_dispvms') === true ? null : `${t.name} is not a template for disposables`),
      (h) => h.host.globals.prop('default_dispvm'),
    ),
    { name: 'auto_cleanup', type: 'bool', default: false, help: 'Remove the disposable when it shuts down.' },
  ]);
  propertyDefs() {
    return DispVM.defs;
  }
}

/** Makes a domain object of a class (no volumes yet). */
export function makeDomain(klass: DomainClass, host: DomainHost, init: DomainInit): Domain {
  switch (klass) {
    case 'AdminVM':
      return new AdminVM(host);
    case 'TemplateVM':
      return new TemplateVM(host, init);
    case 'AppVM':
      return new AppVM(host, init);
    case 'StandaloneVM':
      return new StandaloneVM(host, init);
    case 'DispVM':
      return new DispVM(host, init);
  }
}

// ---- global settings -----------------------------------------------------------

type G = GlobalProperties;

function poolCheck(name: string, allowEmpty: boolean) {
  return (h: G, v: PropValue): void => {
    const s = String(v);
    if (s === '' && allowEmpty) return;
    if (!h.host.hasPool(s)) bad(h, name, `no pool '${printable(s)}'`);
  };
}

const GLOBAL_PROPS: readonly PropertyDef<G>[] = [
  {
    name: 'default_pool',
    type: 'str',
    default: (h) => h.host.autoDefaultPool(),
    help: 'Pool for new volumes when no per-volume default is set.',
    check: poolCheck('default_pool', false),
  },
  ...(['root', 'private', 'volatile'] as const).map(
    (v): PropertyDef<G> => ({
      name: `default_pool_${v}`,
      type: 'str',
      default: (h) => h.prop('default_pool'),
      help: `Pool for new ${v} volumes (default: default_pool).`,
      check: poolCheck(`default_pool_${v}`, false),
    }),
  ),
  {
    name: 'default_pool_kernel',
    type: 'str',
    default: (h) => h.host.autoKernelPool(),
    help: 'Pool kernel volumes come from (empty: no kernel volumes).',
    check: poolCheck('default_pool_kernel', true),
  },
  {
    name: 'default_template',
    type: 'vm',
    allowNone: true,
    default: null,
    help: 'Template for new AppVMs.',
    check: vmCheck('default_template', (t) => (t.klass === 'TemplateVM' ? null : `${t.name} is not a TemplateVM`)),
  },
  { name: 'default_kernel', type: 'str', default: '', help: 'Kernel version for new domains (empty: none).' },
  {
    name: 'default_dispvm',
    type: 'vm',
    allowNone: true,
    default: null,
    help: 'Default disposable template.',
    check: vmCheck('default_dispvm', (t) => (t.prop('template_for_dispvms') === true ? null : `${t.name} is not a template for disposables`)),
  },
];

export class GlobalProperties extends PropertyHolder {
  static readonly defs = propertyTable<G>(GLOBAL_PROPS);
  constructor(readonly host: DomainHost) {
    super();
  }
  propertyDefs() {
    return GlobalProperties.defs;
  }
  get holderName(): string {
    return 'global settings';
  }
}
