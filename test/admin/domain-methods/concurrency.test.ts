// 64 clients at once, each on its own connections, creating, starting,
// stopping and removing domains: 40 on names of their own (every call must
// succeed), 24 sharing 4 names (calls may lose races, only with the errors
// such a race explains). Afterwards the state equals what the successful
// calls imply, the events match them, the state file reloads to the same
// domains, and the pool holds no half-made volume.
import { it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles } from '../../helpers/data.js';
import { decodeReply } from '../../../src/admin/protocol/index.js';
import { startDaemon, type Daemon } from './harness.js';

type Op = 'create' | 'start' | 'shutdown' | 'kill' | 'remove';
interface Outcome {
  readonly client: number;
  readonly name: string;
  readonly op: Op;
  /** `ok` or the error class. */
  readonly result: string;
}

const CLIENTS = 64;
const SOLO = 40;

/** What a solo client does, by `client % 4`, and how its domain ends. */
const SOLO_SCRIPTS: ReadonlyArray<{ ops: Op[]; end: 'absent' | 'Running' | 'Halted' }> = [
  { ops: ['create', 'start', 'shutdown', 'remove'], end: 'absent' },
  { ops: ['create', 'start'], end: 'Running' },
  { ops: ['create', 'start', 'shutdown'], end: 'Halted' },
  { ops: ['create', 'remove'], end: 'absent' },
];
const SHARED_OPS: Op[] = ['create', 'start', 'shutdown', 'remove', 'create', 'start', 'kill', 'remove'];

/** Errors a lost race on a shared name explains. */
const RACE_ERRORS: Record<Op, readonly string[]> = {
  create: ['QubesVMAlreadyExistsError'],
  start: ['QubesVMNotFoundError'],
  shutdown: ['QubesVMNotFoundError', 'QubesVMNotStartedError'],
  kill: ['QubesVMNotFoundError', 'QubesVMNotStartedError'],
  remove: ['QubesVMNotFoundError', 'QubesVMNotHaltedError'],
};

const CALLS: Record<Op, (name: string) => [method: string, dest: string, arg: string, payload: string]> = {
  create: (n) => ['admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${n} label=red`],
  start: (n) => ['admin.vm.Start', n, '', ''],
  shutdown: (n) => ['admin.vm.Shutdown', n, '', ''],
  kill: (n) => ['admin.vm.Kill', n, '', ''],
  remove: (n) => ['admin.vm.Remove', n, '', ''],
};

const nameOf = (client: number): string => (client < SOLO ? `solo${client}` : `shared${client % 4}`);

describeEachFs('admin domain methods: 64 concurrent clients', (tfs, fsctx) => {
  let d: Daemon;

  before(async () => {
    d = await startDaemon(tfs, await fsctx.tempDir('storm'));
    await d.ok('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
  });
  after(async () => {
    await d?.stop();
  });

  it('ends in the state the successful calls imply, durably, with whole volumes', async () => {
    const watch = await d.events('dom0');
    const outcomes: Outcome[] = [];
    const runClient = async (client: number): Promise<void> => {
      const name = nameOf(client);
      const ops = client < SOLO ? SOLO_SCRIPTS[client % 4]!.ops : SHARED_OPS;
      for (const op of ops) {
        const reply = decodeReply(await d.raw(...CALLS[op](name)));
        outcomes.push({ client, name, op, result: reply.kind === 'ok' ? 'ok' : reply.name });
        if (reply.kind === 'ok') assert.equal(reply.result.length, 0, `${op} ${name} replies nothing`);
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => runClient(i)));
    assert.equal(outcomes.length, (SOLO / 4) * (4 + 2 + 3 + 2) + (CLIENTS - SOLO) * SHARED_OPS.length);

    // Solo clients: every call succeeded, and each domain ended as scripted.
    const soloFailures = outcomes.filter((o) => o.client < SOLO && o.result !== 'ok');
    assert.deepEqual(soloFailures, []);
    // Shared names: only the errors a lost race explains.
    assert.ok(
      outcomes.some((o) => o.client >= SOLO && o.op === 'create' && o.result === 'QubesVMAlreadyExistsError'),
      'clients sharing a name raced (some creates lost)',
    );
    const unexplained = outcomes.filter((o) => o.client >= SOLO && o.result !== 'ok' && !RACE_ERRORS[o.op].includes(o.result));
    assert.deepEqual(unexplained, []);

    const expected = new Map<string, 'Running' | 'Halted' | 'present'>();
    for (let c = 0; c < SOLO; c++) {
      const end = SOLO_SCRIPTS[c % 4]!.end;
      if (end !== 'absent') expected.set(nameOf(c), end);
    }
    const okCount = (name: string, op: Op): number => outcomes.filter((o) => o.name === name && o.op === op && o.result === 'ok').length;
    for (let s = 0; s < 4; s++) {
      const name = `shared${s}`;
      // Creates succeed only on an absent name and removes only on a present
      // one, so they alternate: the name exists iff one more create succeeded.
      const live = okCount(name, 'create') - okCount(name, 'remove');
      assert.ok(live === 0 || live === 1, `${name}: ${okCount(name, 'create')} creates, ${okCount(name, 'remove')} removes`);
      assert.ok(okCount(name, 'create') >= 1, `${name} was created at least once`);
      if (live === 1) expected.set(name, 'present');
    }

    // The live state, through the API.
    const list = await d.ok('admin.vm.List', 'dom0');
    const listed = new Map(
      list
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => {
          const [n, cls, state] = l.split(' ');
          return [n!, { cls: cls!, state: state!.slice('state='.length) }] as const;
        }),
    );
    assert.deepEqual([...listed.keys()].sort(), ['dom0', 'tpl', ...expected.keys()].sort());
    for (const [name, want] of expected) {
      const got = listed.get(name)!;
      assert.equal(got.cls, 'class=AppVM');
      if (want !== 'present') assert.equal(got.state, want, name);
      assert.equal(await d.ok('admin.vm.CurrentState', name), `mem=0 mem_static_max=0 cputime=0 power_state=${got.state}`);
      assert.equal(await d.ok('admin.vm.tag.List', name), 'created-by-dom0\n', `${name}: its creation mark, once`);
    }

    // Events: one domain-add per successful create, one domain-delete per successful remove.
    const wantAdds = outcomes.filter((o) => o.op === 'create' && o.result === 'ok').length;
    const wantDeletes = outcomes.filter((o) => o.op === 'remove' && o.result === 'ok').length;
    await watch.waitFor(() => watch.events.filter((e) => e.event === 'domain-add' || e.event === 'domain-delete').length >= wantAdds + wantDeletes);
    for (const name of new Set(outcomes.map((o) => o.name))) {
      const evs = watch.events.filter((e) => e.pairs.some(([k, v]) => k === 'vm' && v === name));
      assert.equal(evs.filter((e) => e.event === 'domain-add').length, okCount(name, 'create'), `${name} domain-add`);
      assert.equal(evs.filter((e) => e.event === 'domain-delete').length, okCount(name, 'remove'), `${name} domain-delete`);
      // and they alternate, add first
      evs.filter((e) => e.event === 'domain-add' || e.event === 'domain-delete').forEach((e, i) =>
        assert.equal(e.event, i % 2 === 0 ? 'domain-add' : 'domain-delete', `${name} event ${i}`),
      );
    }
    await watch.close();

    // No half-made volume: every image belongs to a domain that exists, each
    // of them has its private image, halted ones nothing else but its
    // revisions; no debris.
    const checkPool = async (states: Map<string, string>): Promise<void> => {
      const files = await listFiles(d.poolDir);
      assert.deepEqual(files.filter((f) => /-(tmp|import|export)-|-import\.img$/.test(f)), [], 'no debris');
      const owners = new Set(files.filter((f) => f.startsWith('appvms/')).map((f) => f.split('/')[1]!));
      assert.deepEqual([...owners].sort(), [...expected.keys()].sort(), 'volume files of existing domains only');
      for (const name of expected.keys()) {
        const own = files.filter((f) => f.startsWith(`appvms/${name}/`)).map((f) => f.slice(`appvms/${name}/`.length));
        assert.ok(own.includes('private.img'), `${name}: ${own.join(' ')}`);
        // Halted: the committed private image and its revisions, nothing else.
        if (states.get(name) === 'Halted')
          assert.deepEqual(own.filter((f) => !/^private\.img(\.[1-9][0-9]*@[0-9TZ:-]+)?$/.test(f)), [], name);
      }
    };
    await checkPool(new Map([...listed].map(([n, v]) => [n, v.state])));

    // Durable: a fresh App on the state file has the same domains (all Halted after a load).
    const xmlNames = [...listed.keys()].sort();
    await d.restart();
    const reloaded = (await d.ok('admin.vm.List', 'dom0'))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => l.split(' ').slice(0, 3).join(' '));
    assert.deepEqual(
      reloaded,
      xmlNames.map((n) => `${n} class=${n === 'dom0' ? 'AdminVM' : n === 'tpl' ? 'TemplateVM' : 'AppVM'} state=${n === 'dom0' ? 'Running' : 'Halted'}`),
    );
    for (const name of expected.keys()) {
      assert.equal(await d.ok('admin.vm.property.Get', name, 'label'), 'default=False type=label red');
      assert.equal(await d.ok('admin.vm.property.Get', name, 'template'), 'default=False type=vm tpl');
    }

    // Everything can still be started (left-over working copies are picked
    // up), stopped and removed; then only the template's images remain.
    await Promise.all(
      [...expected.keys()].map(async (name) => {
        await d.ok('admin.vm.Start', name);
        await d.ok('admin.vm.Shutdown', name);
        await d.ok('admin.vm.Remove', name);
      }),
    );
    assert.deepEqual((await listFiles(d.poolDir)).filter((f) => !f.startsWith('vm-templates/tpl/')), []);
    assert.equal((await d.ok('admin.vm.List', 'dom0')).split('\n').filter((l) => l !== '').length, 2);
  });
});
