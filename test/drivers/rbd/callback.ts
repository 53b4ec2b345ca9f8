// The callback driver around an rbd pool: its volumes stream exports and
// imports as rbd's do (readsExportsItself, writesImportsItself), through
// the backend's exportInto and importWriter, with the import hooks around.
// The backend's tmp_dir is a regular file: any export or import made
// through a file there fails. Imported by rbd.test.ts.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CallbackVolume } from '../../../src/drivers/callback/index.js';
import type { RbdVolume } from '../../../src/drivers/rbd/volume.js';
import { openPool } from '../../conformance/open-pool.js';
import { CEPH_CONF, CEPH_POOL, cleanupAfter, describeRbd, domainOn, readSpec, sha, uniquePrefix } from './helpers.js';

const MiB = 1024 * 1024;

describeRbd('rbd behind callback: exports and imports streamed as on rbd', () => {
  const prefix = uniquePrefix('cb');
  cleanupAfter(prefix);
  let dir = '';
  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('exportInto and importWriter go to the image (no file in tmp_dir), the import hooks around the import', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rbd-cb-'));
    const notADir = path.join(dir, 'not-a-dir');
    await fs.writeFile(notADir, 'x');
    const log = path.join(dir, 'hooks.log');
    const conf = path.join(dir, 'callback.json');
    await fs.writeFile(
      conf,
      JSON.stringify({
        t: {
          backend: { driver: 'rbd', options: { ceph_pool: CEPH_POOL, ceph_conf: CEPH_CONF, image_prefix: prefix, host_id: 'testhost', tmp_dir: notADir } },
          env: { HOOK_LOG: log },
          default_hook: ['/bin/sh', '-c', 'echo "$QS_EVENT" >> "$HOOK_LOG"'],
        },
      }),
    );
    const pool = await openPool('callback', 'cbrbd', { conf_id: 't', conf_path: conf });
    await pool.setup();
    const d = domainOn(pool, 'sa', 'StandaloneVM', null, { root: 8 * MiB, private: 8 * MiB });
    await d.create();
    const v = d.get('private') as CallbackVolume;
    assert.equal(v.readsExportsItself, true, 'reads its exports itself, as its rbd backend');
    assert.equal(v.writesImportsItself, true, 'writes its imports itself, as its rbd backend');

    // 12 MiB: data, zeros, data (the import also resizes the volume).
    const data = Buffer.alloc(12 * MiB);
    randomFillSync(data, 0, 3 * MiB);
    randomFillSync(data, 10 * MiB);
    await fs.writeFile(log, '');
    const w = await v.importWriter(data.length);
    let done = 0;
    while (done < data.length) done += (await w.writev([data.subarray(done)], done)).bytesWritten;
    await v.importDataEnd(true);
    assert.deepEqual((await fs.readFile(log, 'utf8')).split('\n').filter(Boolean), ['pre_volume_import', 'post_volume_import']);
    const image = (v.backend as RbdVolume).image;
    assert.equal(sha(await readSpec(`${CEPH_POOL}/${image}`)), sha(data), 'the image holds the data');

    const got = Buffer.alloc(data.length);
    let size = -1;
    let ends = 0;
    await v.exportInto({
      begin: async (n) => {
        size = n;
      },
      data: async (offset, bytes) => {
        bytes.copy(got, offset);
      },
      end: async () => {
        ends++;
      },
    });
    assert.equal(size, data.length);
    assert.equal(ends, 1);
    assert.equal(sha(got), sha(data), 'the export has the data');
    await d.remove();
    await pool.destroy();
  });
});
