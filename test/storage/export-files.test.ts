// ExportFiles: the exports a volume of lvm_thin or rbd hands out (temporary
// copies, made in real files here), each ended once, by its own path.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { ExportFiles } from '../../src/storage/export-files.js';
import { StoragePoolException } from '../../src/storage/errors.js';

describe('export files of a volume', () => {
  let dir = '';
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-export-files-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });
  const fill = (data: string) => (file: string) => fs.writeFile(file, data);

  it('an export is made by its fill and handed out; a path never handed out is refused, naming the volume and the path, and nothing is removed', async () => {
    const ex = new ExportFiles();
    const a = path.join(dir, 'a');
    assert.equal(await ex.make(a, fill('data')), a);
    assert.equal(await fs.readFile(a, 'utf8'), 'data');
    const removed: string[] = [];
    const b = path.join(dir, 'b');
    await assert.rejects(
      ex.end(b, 'pool p volume v', async (f) => void removed.push(f)),
      (e: unknown) => e instanceof StoragePoolException && e.message === `pool p volume v: not an export in progress: ${b}`,
    );
    assert.deepEqual(removed, []);
  });

  it('a fill that fails leaves no file and holds nothing', async () => {
    const ex = new ExportFiles();
    const c = path.join(dir, 'c');
    await assert.rejects(
      ex.make(c, async (f) => {
        await fs.writeFile(f, 'half');
        throw new Error('EIO while copying');
      }),
      /EIO while copying/,
    );
    await assert.rejects(fs.stat(c), { code: 'ENOENT' });
    await assert.rejects(ex.end(c, 'v', async () => undefined), /not an export in progress/);
  });

  it('an export ends once: removed, then a second end is refused', async () => {
    const ex = new ExportFiles();
    const d = await ex.make(path.join(dir, 'd'), fill('x'));
    const removed: string[] = [];
    await ex.end(d, 'v', async (f) => void removed.push(f));
    assert.deepEqual(removed, [d]);
    await assert.rejects(ex.end(d, 'v', async (f) => void removed.push(f)), StoragePoolException);
    assert.deepEqual(removed, [d]);
  });

  it('a removal that fails passes its error on, and the export is ended all the same', async () => {
    const ex = new ExportFiles();
    const e = await ex.make(path.join(dir, 'e'), fill('x'));
    await assert.rejects(
      ex.end(e, 'v', () => Promise.reject(new Error('EIO'))),
      /EIO/,
    );
    await assert.rejects(ex.end(e, 'v', async () => undefined), /not an export in progress/);
  });
});
