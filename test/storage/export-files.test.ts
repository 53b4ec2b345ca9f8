// ExportFiles: the exports a volume of lvm_thin or rbd handed out (temporary
// copies), each ended once, by its own path.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ExportFiles } from '../../src/storage/export-files.js';
import { StoragePoolException } from '../../src/storage/errors.js';

describe('export files of a volume', () => {
  it('a path never handed out is refused, naming the volume and the path, and nothing is removed', async () => {
    const ex = new ExportFiles();
    ex.add('/tmp/a');
    const removed: string[] = [];
    await assert.rejects(
      ex.end('/tmp/b', 'pool p volume v', async (f) => void removed.push(f)),
      (e: unknown) => e instanceof StoragePoolException && e.message === 'pool p volume v: not an export in progress: /tmp/b',
    );
    assert.deepEqual(removed, []);
  });

  it('an export ends once: removed, then a second end is refused', async () => {
    const ex = new ExportFiles();
    ex.add('/tmp/a');
    const removed: string[] = [];
    await ex.end('/tmp/a', 'v', async (f) => void removed.push(f));
    assert.deepEqual(removed, ['/tmp/a']);
    await assert.rejects(ex.end('/tmp/a', 'v', async (f) => void removed.push(f)), StoragePoolException);
    assert.deepEqual(removed, ['/tmp/a']);
  });

  it('a removal that fails passes its error on, and the export is ended all the same', async () => {
    const ex = new ExportFiles();
    ex.add('/tmp/a');
    await assert.rejects(
      ex.end('/tmp/a', 'v', () => Promise.reject(new Error('EIO'))),
      /EIO/,
    );
    await assert.rejects(ex.end('/tmp/a', 'v', async () => undefined), /not an export in progress/);
  });
});
