// The commands of the model-based tests and the check after each, written
// once against a `Subject` (a driver's volumes through the library, in the
// conformance suite, or the daemon over its socket), and compared with the
// model of volume-model.ts.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  commit,
  revertNewest,
  startVm,
  stopVm,
  type Model,
} from './volume-model.js';

export const VMS = ['a', 'b'] as const;
export type VmName = (typeof VMS)[number];
const MiB = 1024 * 1024;

/** What the tests can do to and see of a template `tpl` and AppVMs `a`, `b`. */
export interface Subject {
  start(vm: VmName): Promise<void>;
  stop(vm: VmName): Promise<void>;
  /** Writes the tag at the start of the running domain's private volume. */
  write(vm: VmName, tag: string): Promise<void>;
  /** Starts the template, writes the tag into its root, stops it. */
  templateSession(tag: string): Promise<void>;
  resize(vm: VmName, size: number): Promise<void>;
  revert(vm: VmName): Promise<void>;
  importData(vm: VmName, tag: string, size: number): Promise<void>;
  // what is seen
  committed(vm: VmName): Promise<string>;
  templateRoot(): Promise<string>;
  /** Tags of the revisions, oldest first (null: the subject cannot read a revision's data; reverts check it then). */
  revisions(vm: VmName): Promise<{ count: number; tags: string[] | null }>;
  size(vm: VmName): Promise<number>;
  /** The running domain's working copy and root snapshot, and is_outdated. */
  running(vm: VmName): Promise<{ dirty: boolean; working: string; root: string; outdated: boolean | null }>;
  isDirty(vm: VmName): Promise<boolean>;
}

export async function check(m: Model, s: Subject): Promise<void> {
  assert.equal(await s.templateRoot(), m.tplRoot.committed, 'template root committed');
  for (const name of VMS) {
    const vm = m.vms[name]!;
    assert.equal(await s.committed(name), vm.private.committed, `${name} private committed`);
    const revs = await s.revisions(name);
    assert.equal(revs.count, vm.private.revisions.length, `${name} revision count`);
    if (revs.tags !== null) assert.deepEqual(revs.tags, vm.private.revisions.map((r) => r.data), `${name} revisions`);
    assert.equal(await s.size(name), vm.private.size, `${name} size`);
    assert.equal(await s.isDirty(name), vm.running, `${name} dirty`);
    if (vm.running) {
      const r = await s.running(name);
      assert.equal(r.working, vm.private.dirty, `${name} working copy`);
      assert.equal(r.root, vm.rootSnapshot, `${name} root snapshot`);
      // null: the driver cannot tell (the contract allows it)
      if (r.outdated !== null) assert.equal(r.outdated, vm.rootVersion !== m.tplVersion, `${name} is_outdated`);
    }
  }
}

type Cmd = fc.AsyncCommand<Model, Subject>;

function cmd(name: string, can: (m: Model) => boolean, act: (m: Model, s: Subject) => Promise<void>): Cmd {
  return {
    check: can,
    async run(m, s) {
      await act(m, s);
      await check(m, s);
    },
    toString: () => name,
  };
}

/** The command arbitraries; `concurrent` sessions of both AppVMs at once. */
export function commands(): fc.Arbitrary<Cmd>[] {
  const vm = fc.constantFrom(...VMS);
  const tag = fc.stringMatching(/^[a-z0-9]{1,8}$/);
  return [
    vm.map((n) => cmd(`start ${n}`, (m) => !m.vms[n]!.running, async (m, s) => {
      await s.start(n);
      startVm(m, n);
    })),
    vm.map((n) => cmd(`stop ${n}`, (m) => m.vms[n]!.running, async (m, s) => {
      await s.stop(n);
      stopVm(m, n);
    })),
    fc.tuple(vm, tag).map(([n, t]) => cmd(`write ${n} ${t}`, (m) => m.vms[n]!.running, async (m, s) => {
      await s.write(n, t);
      m.vms[n]!.private.dirty = t;
    })),
    tag.map((t) => cmd(`template session ${t}`, (m) => !m.tplRunning, async (m, s) => {
      await s.templateSession(t);
      commit(m.tplRoot, t);
      m.tplVersion++;
    })),
    fc.tuple(vm, fc.integer({ min: 1, max: 3 })).map(([n, k]) => cmd(`resize ${n} +${k}MiB`, () => true, async (m, s) => {
      const size = m.vms[n]!.private.size + k * MiB;
      await s.resize(n, size);
      m.vms[n]!.private.size = size;
    })),
    vm.map((n) => cmd(`revert ${n}`, (m) => !m.vms[n]!.running && m.vms[n]!.private.revisions.length > 0, async (m, s) => {
      await s.revert(n);
      revertNewest(m.vms[n]!.private);
    })),
    fc.tuple(vm, tag).map(([n, t]) => cmd(`import ${n} ${t}`, (m) => !m.vms[n]!.running, async (m, s) => {
      await s.importData(n, t, 2 * MiB);
      commit(m.vms[n]!.private, t);
      m.vms[n]!.private.size = 2 * MiB;
    })),
    fc.tuple(tag, tag).map(([t1, t2]) => cmd(`sessions of a (${t1}) and b (${t2}) at once`, (m) => !m.vms['a']!.running && !m.vms['b']!.running, async (m, s) => {
      const session = async (n: VmName, t: string) => {
        await s.start(n);
        await s.write(n, t);
        await s.stop(n);
      };
      await Promise.all([session('a', t1), session('b', t2)]);
      for (const [n, t] of [['a', t1], ['b', t2]] as const) {
        startVm(m, n);
        m.vms[n]!.private.dirty = t;
        stopVm(m, n);
      }
    })),
  ];
}
