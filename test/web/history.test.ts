/**
 * The web program's usage history (src/web/history.ts) on a real
 * filesystem: bounded in points and pools, saved with mode 0600, read back
 * after a restart; a file that is not ours (not JSON, too large, a
 * symlink) is left as it is and the history starts empty, saying why.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { poolUsageRow } from '../../src/client/usage.js';
import { MAX_FILE_BYTES, MAX_POOLS, UsageHistory } from '../../src/web/history.js';

const row = (pool: string, usage: number, size = 1000) => poolUsageRow(pool, { data_size: size, data_usage: usage });

describe('web usage history', () => {
  let dir = '';
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-web-hist-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('keeps the newest points per pool, saves them (0600) and reads them back', async () => {
    const file = path.join(dir, 'h1.json');
    const h = new UsageHistory(file, 3);
    assert.equal(await h.load(), null, 'no file: empty, no complaint');
    for (let i = 1; i <= 5; i++) h.add(i * 1000, [row('a', i * 10), row('b', i)]);
    assert.deepEqual(h.snapshot()['a']!.map((p) => p[0]), [3000, 4000, 5000], 'only the newest 3 in memory');
    await h.save();
    assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
    const saved = JSON.parse(await fs.readFile(file, 'utf8')) as { pools: Record<string, unknown[]> };
    assert.equal(saved.pools['a']!.length, 3, 'only the newest 3 in the file');
    const again = new UsageHistory(file, 3);
    assert.equal(await again.load(), null);
    assert.deepEqual(again.snapshot()['a'], [
      [3000, 30, 1000, null, null],
      [4000, 40, 1000, null, null],
      [5000, 50, 1000, null, null],
    ]);
    // Read back with a smaller bound: the newest kept.
    const fewer = new UsageHistory(file, 2);
    await fewer.load();
    assert.deepEqual(fewer.snapshot()['b']!.map((p) => p[0]), [4000, 5000]);
    const entries = (await fs.readdir(dir)).filter((n) => n.startsWith('h1.json'));
    assert.deepEqual(entries, ['h1.json'], 'no temporary file left');
  });

  it('records at most MAX_POOLS pools', () => {
    const h = new UsageHistory(path.join(dir, 'h2.json'), 2);
    const rows = Array.from({ length: MAX_POOLS + 5 }, (_, i) => row(`p${i}`, i));
    const added = h.add(1, rows);
    assert.equal(Object.keys(added).length, MAX_POOLS);
    assert.equal(Object.keys(h.snapshot()).length, MAX_POOLS);
  });

  it('leaves a file that is not a history alone and starts empty, saying why', async () => {
    const cases: [string, () => Promise<void>, RegExp][] = [
      ['junk.json', () => fs.writeFile(path.join(dir, 'junk.json'), 'not json {'), /junk\.json: .*history starts empty/],
      ['other.json', () => fs.writeFile(path.join(dir, 'other.json'), JSON.stringify({ format: 'something else', pools: {} })), /not a usage history file/],
      ['big.json', async () => (await fs.writeFile(path.join(dir, 'big.json'), ''), await fs.truncate(path.join(dir, 'big.json'), MAX_FILE_BYTES + 1)), /larger than/],
      ['link.json', () => fs.symlink(path.join(dir, 'h1.json'), path.join(dir, 'link.json')), /link\.json: .*history starts empty/],
      ['dir.json', () => fs.mkdir(path.join(dir, 'dir.json')), /not a regular file/],
    ];
    for (const [name, make, why] of cases) {
      await make();
      const file = path.join(dir, name);
      const before = await fs.lstat(file);
      const h = new UsageHistory(file, 10);
      assert.match((await h.load()) ?? '', why, name);
      assert.deepEqual(h.snapshot(), {}, name);
      const afterStat = await fs.lstat(file);
      assert.equal(afterStat.size, before.size, `${name} unchanged`);
      assert.equal(afterStat.mtimeMs, before.mtimeMs, `${name} unchanged`);
    }
    // Points that are not points are dropped, the good ones kept.
    const mixed = path.join(dir, 'mixed.json');
    await fs.writeFile(mixed, JSON.stringify({ format: 'qubes-storage-web usage history 1', pools: { a: [[1, 2, 3, null, null], ['x'], [2, 'y', 3, null, null], [3, 4, 5, 6, 7]] } }));
    const h = new UsageHistory(mixed, 10);
    assert.equal(await h.load(), null);
    assert.deepEqual(h.snapshot()['a'], [
      [1, 2, 3, null, null],
      [3, 4, 5, 6, 7],
    ]);
  });
});
