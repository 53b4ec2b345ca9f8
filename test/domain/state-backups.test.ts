// The backup taken at open: a new one only when the state's bytes differ from
// the newest backup's. The comparison reads the backup a chunk (1 MiB) at a
// time and may be given the state's bytes as read at load instead of reading
// the state file again; a state of 10,000 domains is ~10 MB.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { StateBackups } from '../../src/domain/state-backups.js';

const MiB = 1024 * 1024;

/** 3.5 MiB of text that is not the same in any two chunks. */
function bigState(): Buffer {
  const line = (i: number) => `    <domain id="domain-${i}" class="AppVM"/>\n`;
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < 3.5 * MiB; i++) {
    parts.push(line(i));
    n += line(i).length;
  }
  return Buffer.from(parts.join(''));
}

describeEachFs('state backups at open', (_tfs, ctx) => {
  test('same bytes: no new backup; a byte changed in the last chunk or a size changed: a new one', async () => {
    const dir = await ctx.tempDir('backups');
    const file = path.join(dir, 'qubes.xml');
    const state = bigState();
    await fs.writeFile(file, state);
    const backups = new StateBackups(file, 10);
    assert.equal(await backups.take(), null);
    assert.equal((await backups.list()).length, 1, 'the first backup');
    assert.deepEqual(await fs.readFile((await backups.list())[0]!), state);

    assert.equal(await backups.take(), null);
    assert.equal(await backups.take(state), null);
    assert.equal((await backups.list()).length, 1, 'the same bytes, read or given: no second backup');

    const late = Buffer.from(state);
    late[late.length - 2] = 'X'.charCodeAt(0); // in the fourth chunk
    await fs.writeFile(file, late);
    assert.equal(await backups.take(late), null);
    assert.equal((await backups.list()).length, 2, 'one byte changed past the first chunks');
    assert.deepEqual(await fs.readFile((await backups.list())[0]!), late);

    const longer = Buffer.concat([late, Buffer.from('\n')]);
    await fs.writeFile(file, longer);
    assert.equal(await backups.take(), null);
    assert.equal((await backups.list()).length, 3, 'one byte more');
    assert.deepEqual(await fs.readFile((await backups.list())[0]!), longer);
  });
});
