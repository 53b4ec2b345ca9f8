// A pool on a filesystem filled to the last block: every operation either
// works (reflinks and sparse files need next to no space) or fails with a
// StoragePoolException naming the pool and the lack of space, changing
// nothing and leaving no debris; once space is freed everything works again
// and the data written before is intact.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { MiB, listFiles, pattern, readAt, sha256, writeAt } from '../../helpers/data.js';
import { domain, makePool } from '../../helpers/reflink-scenario.js';
import { StoragePoolException } from '../../../src/storage/errors.js';
import type { DomainStorage } from '../../../src/storage/domain-storage.js';

const SMALL = [
  { name: 'small-xfs', root: process.env['QS_TEST_SMALL_XFS'], reflink: true },
  { name: 'small-ext4', root: process.env['QS_TEST_SMALL_EXT4'], reflink: false },
];

/** Writes zeros into `file` until the filesystem refuses, big chunks then small ones. */
async function fill(file: string): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    let pos = 0;
    for (const chunk of [MiB, 64 * 1024, 4096, 512]) {
      const buf = Buffer.alloc(chunk, 1);
      for (;;) {
        try {
          const { bytesWritten } = await fh.write(buf, 0, chunk, pos);
          pos += bytesWritten;
          if (bytesWritten < chunk) break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
    await fh.sync().catch(() => undefined);
  } finally {
    await fh.close();
  }
}

/** Every file of the pool with its hash: what "nothing changed" compares. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of await listFiles(dir)) out[f] = await sha256(path.join(dir, f));
  return out;
}

for (const small of SMALL) {
  describe(`full disk [${small.name}]`, { skip: small.root ? false : `QS_TEST_${small.name.toUpperCase().replace('-', '_')} not set: run through npm test as root` }, () => {
    let base: string;
    after(async () => {
      if (base) await fs.rm(base, { recursive: true, force: true });
    });

    it('fails cleanly with a clear error while full, and works again once space is freed', async (t) => {
      base = await fs.mkdtemp(path.join(small.root!, 'full-'));
      const dir = path.join(base, 'pool');
      const o = { setupCheck: small.reflink, revisionsToKeep: 1, rootSize: 16 * MiB, privateSize: 16 * MiB };
      const pool = makePool(dir, o, 'fullpool');
      await pool.setup();
      const tpl = domain(pool, 'tpl', 'TemplateVM', o);
      const app = domain(pool, 'work', 'AppVM', o, tpl);
      await tpl.create();
      await app.create();
      await tpl.start();
      await writeAt(await tpl.get('root').path(), 0, pattern(4 * MiB, 1));
      await tpl.stop();
      await app.start();
      await writeAt(await app.get('private').path(), 0, pattern(4 * MiB, 2));
      await app.stop();
      await app.start();
      await writeAt(await app.get('private').path(), 0, pattern(MiB, 3));
      await app.stop();
      const head = async (file: string) => createHash('sha256').update(await readAt(file, 0, 16 * MiB)).digest('hex');
      const privHash = await head(await app.get('private').path());

      const filler = path.join(base, 'filler');
      await fill(filler);

      const outcomes: string[] = [];
      const attempt = async (what: string, op: () => Promise<unknown>, undo?: () => Promise<unknown>) => {
        const before = await snapshot(dir);
        try {
          await op();
          outcomes.push(`${what}: worked`);
          if (undo) await undo();
        } catch (e) {
          assert.ok(e instanceof StoragePoolException, `${what}: ${String(e)} is not a StoragePoolException`);
          assert.match(e.message, /fullpool/, `${what}: the error names the pool`);
          assert.match(e.message, /not enough space/, `${what}: the error says what is wrong`);
          assert.deepEqual(await snapshot(dir), before, `${what}: a failure changed something`);
          outcomes.push(`${what}: refused`);
        }
      };
      const fresh: DomainStorage = domain(pool, 'fresh', 'AppVM', o, tpl);
      await attempt('create', () => fresh.create(), () => fresh.remove());
      await attempt('start', () => app.start(), () => app.stop());
      await attempt('resize', () => app.get('private').resize(32 * MiB));
      await attempt('import', async () => {
        const v = app.get('private');
        const p = await v.importData(8 * MiB);
        try {
          await writeAt(p, 0, pattern(8 * MiB, 4));
        } catch (e) {
          await v.importDataEnd(false);
          throw new StoragePoolException(`pool fullpool: import failed: not enough space left`, { cause: e });
        }
        await v.importDataEnd(true);
      });
      const other = domain(pool, 'copy', 'StandaloneVM', o);
      await attempt('clone', () => other.createAsClone(tpl), () => other.remove());
      await attempt('revert', () => app.get('private').revert(), () => app.get('private').revert());
      assert.ok(outcomes.length === 6, outcomes.join('; '));
      t.diagnostic(`while full: ${outcomes.join('; ')}`);
      if (!small.reflink) assert.ok(outcomes.includes('start: refused'), `a sparse copy needs space: ${outcomes.join('; ')}`);

      await fs.unlink(filler);
      // Space again: everything works and the data written before is intact.
      const priv = app.get('private');
      await app.start();
      assert.equal(await head(await priv.path()), privHash, `data intact after: ${outcomes.join('; ')}`);
      await writeAt(await priv.path(), 0, pattern(MiB, 5));
      await app.stop();
      const p = await priv.importData(priv.size);
      await writeAt(p, 0, pattern(2 * MiB, 6));
      await priv.importDataEnd(true);
      const copy = domain(pool, 'copy2', 'StandaloneVM', o);
      await copy.createAsClone(tpl);
      assert.equal(await sha256(await copy.get('root').path()), await sha256(await tpl.get('root').path()));
      const debris = (await listFiles(dir)).filter((f) => /-(tmp|export)-|-import\.img|-base\.img|-dirty\.img/.test(f));
      assert.deepEqual(debris, []);
    });
  });
}
