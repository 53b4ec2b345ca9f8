import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedMutex } from '../../src/storage/lock.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('KeyedMutex', () => {
  it('runs calls with one key one at a time, in order', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    let inside = 0;
    let most = 0;
    await Promise.all(
      [1, 2, 3, 4].map((i) =>
        m.run('v', async () => {
          inside++;
          most = Math.max(most, inside);
          log.push(`in${i}`);
          await tick();
          log.push(`out${i}`);
          inside--;
        }),
      ),
    );
    assert.equal(most, 1);
    assert.deepEqual(log, ['in1', 'out1', 'in2', 'out2', 'in3', 'out3', 'in4', 'out4']);
    assert.equal(m.isBusy('v'), false);
  });

  it('runs different keys in parallel', async () => {
    const m = new KeyedMutex();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const a = m.run('a', () => gate);
    let bRan = false;
    await m.run('b', async () => {
      bRan = true;
    });
    assert.equal(bRan, true, 'b must not wait for a');
    release();
    await a;
  });

  it('releases the key when the holder throws', async () => {
    const m = new KeyedMutex();
    await assert.rejects(m.run('k', async () => { throw new Error('boom'); }), /boom/);
    assert.equal(await m.run('k', async () => 42), 42);
  });

  it('runAll takes several keys without deadlock', async () => {
    const m = new KeyedMutex();
    const results = await Promise.all([
      m.runAll(['x', 'y'], async () => { await tick(); return 1; }),
      m.runAll(['y', 'x'], async () => { await tick(); return 2; }),
    ]);
    assert.deepEqual(results, [1, 2]);
  });
});
