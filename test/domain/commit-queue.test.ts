// CommitQueue, the group commit under every state change: changes applied in
// call order, the ones arriving during a save written together by the next
// one, a failed save undoing its whole batch (last first) with the error for
// each caller, a change whose apply() throws refused alone, scopes merged.
// The writer is a stand-in the test controls (the real one is StateStore,
// tested through the App in the other domain tests). No timing: each step
// waits on promises the test controls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CommitQueue, type BatchWriter, type ChangeScope } from '../../src/domain/commit-queue.js';

function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

/** A writer that records each batch's scope and the model at write time; `hold` makes the next write wait. */
class TestWriter implements BatchWriter<string> {
  full = false;
  closed = false;
  fail: Error | null = null;
  hold: Promise<void> | null = null;
  readonly writes: Array<{ scope: string[] | 'all'; model: string[] }> = [];
  constructor(private readonly model: string[]) {}
  needsFull(): boolean {
    return this.full;
  }
  checkOpen(): void {
    if (this.closed) throw new Error('closed');
  }
  async write(scope: ChangeScope<string>): Promise<void> {
    this.writes.push({ scope: scope === 'all' ? 'all' : [...scope], model: [...this.model] });
    const hold = this.hold;
    this.hold = null;
    if (hold) await hold;
    if (this.fail) throw this.fail;
  }
}

/** A change appending `item` to the model, touching `scope`. */
function append(model: string[], item: string): () => () => void {
  return () => {
    model.push(item);
    return () => assert.equal(model.pop(), item, 'undone last first');
  };
}

test('changes arriving while a save is written are saved together by the next one, in call order', async () => {
  const model: string[] = [];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  const first = gate();
  writer.hold = first.opened;
  const a = queue.commit(append(model, 'a'), new Set(['a']));
  // Let the first save start (it waits on the gate), then queue two more behind it.
  await new Promise<void>((r) => setImmediate(r));
  const b = queue.commit(append(model, 'b'), new Set(['b']));
  const c = queue.commit(append(model, 'c'), () => new Set(['c', 'x']));
  assert.deepEqual(model, ['a'], 'b and c are applied by the next save, not before');
  first.open();
  await Promise.all([a, b, c]);
  assert.deepEqual(writer.writes, [
    { scope: ['a'], model: ['a'] },
    { scope: ['b', 'c', 'x'], model: ['a', 'b', 'c'] },
  ]);
});

test('a failed save undoes every change of its batch, last first, and each caller gets its error; the next save goes on', async () => {
  const model: string[] = ['base'];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  const first = gate();
  writer.hold = first.opened;
  const a = queue.commit(append(model, 'a'), new Set(['a']));
  await new Promise<void>((r) => setImmediate(r));
  const b = queue.commit(append(model, 'b'), new Set(['b']));
  const c = queue.commit(append(model, 'c'), new Set(['c']));
  const full = new Error('disk full');
  // The first save succeeds; the second (b and c together) fails.
  first.open();
  await a;
  writer.fail = full;
  const results = await Promise.allSettled([b, c]);
  assert.deepEqual(results, [
    { status: 'rejected', reason: full },
    { status: 'rejected', reason: full },
  ]);
  assert.deepEqual(model, ['base', 'a'], 'b and c undone, a kept');
  writer.fail = null;
  await queue.commit(append(model, 'd'), new Set(['d']));
  assert.deepEqual(model, ['base', 'a', 'd']);
});

test("a change whose apply() throws is refused alone; the others of its batch are saved", async () => {
  const model: string[] = [];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  const bad = new Error('bad value');
  const results = await Promise.allSettled([
    queue.commit(append(model, 'a'), new Set(['a'])),
    queue.commit(() => {
      throw bad;
    }, new Set(['never'])),
    queue.commit(append(model, 'c'), new Set(['c'])),
  ]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
  assert.equal((results[1] as PromiseRejectedResult).reason, bad);
  assert.deepEqual(writer.writes, [{ scope: ['a', 'c'], model: ['a', 'c'] }], 'one save, without the refused change or its scope');
});

test('a batch of refused changes writes nothing; after close every change is refused before it is applied', async () => {
  const model: string[] = [];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  await assert.rejects(
    queue.commit(() => {
      throw new Error('no');
    }, 'all'),
    /no/,
  );
  assert.equal(writer.writes.length, 0);
  writer.closed = true;
  await assert.rejects(queue.commit(append(model, 'a'), 'all'), /closed/);
  assert.deepEqual(model, []);
  assert.equal(writer.writes.length, 0);
});

test("a scope of 'all', or a writer that needs a full save, makes the batch's scope 'all' (the changes' scopes not asked then)", async () => {
  const model: string[] = [];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  await Promise.all([queue.commit(append(model, 'a'), new Set(['a'])), queue.commit(append(model, 'b'), 'all')]);
  writer.full = true;
  let asked = false;
  await queue.commit(append(model, 'c'), () => {
    asked = true;
    return new Set(['c']);
  });
  assert.deepEqual(writer.writes.map((w) => w.scope), ['all', 'all']);
  assert.equal(asked, false);
});

test('exclusive() runs between saves: a change queued meanwhile waits for it', async () => {
  const model: string[] = [];
  const writer = new TestWriter(model);
  const queue = new CommitQueue<string>(writer);
  const inside = gate();
  const log: string[] = [];
  const ex = queue.exclusive(async () => {
    log.push('exclusive in');
    await inside.opened;
    log.push('exclusive out');
  });
  const a = queue.commit(() => {
    log.push('apply a');
    return () => undefined;
  }, 'all');
  await new Promise<void>((r) => setImmediate(r));
  assert.deepEqual(log, ['exclusive in']);
  inside.open();
  await Promise.all([ex, a]);
  assert.deepEqual(log, ['exclusive in', 'exclusive out', 'apply a']);
});
