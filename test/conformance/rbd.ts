// The rbd driver's pool factory for the conformance suite, on the test Ceph
// cluster (scripts/with-ceph.sh). Imported by test/drivers/rbd/rbd.test.ts,
// which runs the rbd suites one after the other: its last suite kills the
// cluster's OSD, which no other suite may see, so this is not a test file
// of its own.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { OptionValue } from '../../src/storage/options.js';
import type { Pool } from '../../src/storage/pool.js';
import type { RbdVolume } from '../../src/drivers/rbd/volume.js';
import { CEPH_CONF, CEPH_POOL, CEPH_SKIP, imagesWith, purgePrefix, rbdTempFiles, readSpec, restlessSnaps, snapsOf, uniquePrefix } from '../drivers/rbd/helpers.js';
import { rbdDriver } from '../../src/drivers/rbd/index.js';
import { openPool } from './open-pool.js';
import { rbdIo } from './rbd-io.js';
import { describeConformance } from './suite.js';

const prefixes: string[] = [];
const dirs: string[] = [];
const tmpOf = new Map<string, string>();
let n = 0;

describeConformance({
  driver: rbdDriver, // not through the registry: no top-level await, so this suite is declared in import order
  place: 'ceph',
  skip: CEPH_SKIP,
  async makePool(options: Record<string, OptionValue> = {}): Promise<Pool> {
    const prefix = uniquePrefix('conf');
    prefixes.push(prefix);
    const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-conf-rbd-'));
    dirs.push(tmp);
    const name = `rbdconf${++n}`;
    tmpOf.set(name, tmp);
    return openPool('rbd', name, {
      ceph_pool: CEPH_POOL,
      image_prefix: prefix,
      ceph_conf: CEPH_CONF,
      host_id: 'testhost',
      tmp_dir: tmp,
      ...options,
    });
  },
  async scratchDir() {
    const d = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-conf-rbd-scratch-'));
    dirs.push(d);
    return d;
  },
  async cleanup() {
    for (const p of prefixes.splice(0)) purgePrefix(p);
    for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
  },
  io: rbdIo,
  failpoints: ['rbd.'],
  /**
   * Running images (NAME~...), snapshots other than revisions and the one
   * current base snapshot a host keeps for reuse (restlessSnaps), import and
   * export files.
   */
  async debris(pool) {
    const prefix = String(pool.config()['image_prefix']);
    const out: string[] = [];
    for (const img of imagesWith(prefix)) {
      if (img.includes('~')) out.push(img);
      for (const s of restlessSnaps(img)) out.push(`${img}@${s}`);
    }
    out.push(...(await rbdTempFiles(tmpOf.get(pool.name)!)));
    return out;
  },
  async revisionData(v, r, length) {
    const image = (v as RbdVolume).image;
    const snap = snapsOf(image).find((s) => s.startsWith(`qs-rev-${r.id}-`));
    if (!snap) throw new Error(`no snapshot of revision ${r.id} of ${image}`);
    return (await readSpec(`${CEPH_POOL}/${image}@${snap}`)).subarray(0, length);
  },
  modelRuns: 3, // each step is several rbd commands: slow on a loaded machine
});
