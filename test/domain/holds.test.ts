// DomainHolds, the one mechanism that keeps operations on a domain apart:
// changes one at a time in order of arrival, refused at once behind a long
// one, uses refused while a removal holds and listed for it. No timing: each
// step waits on promises the test controls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DomainHolds } from '../../src/domain/holds.js';
import { QubesVMInUseError } from '../../src/storage/errors.js';

function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

test('changes of one domain run one at a time, in order of arrival; other domains are not held up', async () => {
  const holds = new DomainHolds();
  const log: string[] = [];
  const first = gate();
  const a = holds.run(['work'], { what: 'start' }, async () => {
    log.push('start in');
    await first.opened;
    log.push('start out');
  });
  const b = holds.run(['work'], { what: 'revert of volume private' }, async () => void log.push('revert'));
  const c = holds.run(['other'], { what: 'start' }, async () => void log.push('other'));
  await c;
  assert.deepEqual(log, ['start in', 'other']);
  assert.deepEqual(holds.holdersOf('work'), [
    { what: 'start', holding: true },
    { what: 'revert of volume private', holding: false },
  ]);
  first.open();
  await Promise.all([a, b]);
  assert.deepEqual(log, ['start in', 'other', 'start out', 'revert']);
  assert.deepEqual(holds.holdersOf('work'), []);
});

test('behind a long change (holding or waiting) every change is refused at once, naming it; a long one waits behind short ones', async () => {
  const holds = new DomainHolds();
  const short = gate();
  const s = holds.run(['work'], { what: 'start' }, () => short.opened);
  const stream = gate();
  let importRan = false;
  const imp = holds.run(['work'], { what: 'import into volume private', long: true }, async () => {
    importRan = true;
    await stream.opened;
  });
  // The import waits for the start; a change arriving now would wait for the stream: refused.
  await assert.rejects(holds.run(['work'], { what: 'shutdown' }, async () => undefined), (e: Error) => {
    assert.ok(e instanceof QubesVMInUseError);
    assert.equal(e.message, 'domain work is busy: import into volume private');
    return true;
  });
  assert.equal(importRan, false);
  short.open();
  await s;
  await assert.rejects(holds.run(['work'], { what: 'import into volume private', long: true }, async () => undefined), QubesVMInUseError);
  // A multi-domain change is refused when any of its domains is held so.
  await assert.rejects(holds.run(['tpl', 'work'], { what: 'change of property kernel' }, async () => undefined), /domain work is busy/);
  assert.equal(importRan, true);
  stream.open();
  await imp;
  await holds.run(['work'], { what: 'start' }, async () => undefined);
});

test('uses block nothing but a removal: listed for it, and refused while it holds', async () => {
  const holds = new DomainHolds();
  const release = holds.use('work', 'export of volume private');
  const release2 = holds.use('work', 'clone of volume private into other:private');
  assert.deepEqual(holds.usesOf('work'), ['export of volume private', 'clone of volume private into other:private']);
  release();
  release(); // twice: nothing more
  assert.deepEqual(holds.usesOf('work'), ['clone of volume private into other:private']);
  release2();
  assert.deepEqual(holds.usesOf('work'), []);

  const removal = gate();
  const held = gate();
  const r = holds.run(['work'], { what: 'removal', excludesUses: true }, async () => {
    held.open();
    await removal.opened;
  });
  await held.opened;
  assert.throws(() => holds.use('work', 'export of volume private'), (e: Error) => e instanceof QubesVMInUseError && e.message === 'domain work is busy: removal');
  const other = holds.use('other', 'export of volume private');
  other();
  removal.open();
  await r;
  holds.use('work', 'export of volume private')();
});

test('a use given an end does not block a removal: endUses ends it, the others stay listed', async () => {
  const holds = new DomainHolds();
  const ended: string[] = [];
  const endable = (what: string) => {
    const release = holds.use('work', what, async () => {
      ended.push(what);
      release();
    });
    return release;
  };
  endable('export of volume private');
  const clone = holds.use('work', 'clone of volume private into other:private');
  endable('export of volume root');
  assert.deepEqual(holds.usesOf('work'), ['clone of volume private into other:private'], 'only the blocking use is listed');
  await holds.endUses('work');
  assert.deepEqual(ended, ['export of volume private', 'export of volume root']);
  await holds.endUses('work');
  assert.deepEqual(ended, ['export of volume private', 'export of volume root'], 'ended once');
  assert.deepEqual(holds.usesOf('work'), ['clone of volume private into other:private']);
  clone();
  // A failing end: the others are still ended, then the failure is thrown.
  holds.use('work', 'export of volume private', async () => Promise.reject(new Error('cannot end it')));
  const other = endable('export of volume root');
  await assert.rejects(holds.endUses('work'), /cannot end it/);
  assert.equal(ended.length, 3);
  other();
});

test('changes over several domains in opposite orders do not deadlock', async () => {
  const holds = new DomainHolds();
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      holds.run(i % 2 ? ['a', 'b'] : ['b', 'a'], { what: `change ${i}` }, async () => {
        await new Promise((r) => setImmediate(r));
        return i;
      }),
    ),
  );
  assert.deepEqual(results, Array.from({ length: 20 }, (_, i) => i));
});
