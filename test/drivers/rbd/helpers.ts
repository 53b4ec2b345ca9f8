// The real Ceph cluster the rbd tests run on, as scripts/with-ceph.sh starts
// it (`npm test`), and helpers to read and write images with the `rbd`
// command. Without a cluster the suites are reported as skipped, with the reason.
import { describe, after } from 'node:test';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { rbdDriver } from '../../../src/drivers/rbd/index.js';
import type { RbdPool } from '../../../src/drivers/rbd/pool.js';
import { writeAsDiff } from './rbd-diff.js';
import { DomainStorage } from '../../../src/storage/domain-storage.js';
import { defaultVolumeConfigs, type DomainClass } from '../../../src/storage/volume-sets.js';
import type { Pool } from '../../../src/storage/pool.js';
import type { Volume } from '../../../src/storage/volume.js';
import { MiB } from '../../helpers/data.js';

export const CEPH_CONF = process.env['QS_TEST_CEPH_CONF'] ?? '';
export const CEPH_POOL = process.env['QS_TEST_CEPH_POOL'] ?? 'rbd';
export const CEPH_DIR = process.env['QS_TEST_CEPH_DIR'] ?? '';
export const CEPH_SCRIPT = process.env['QS_TEST_CEPH_SCRIPT'] ?? '';
export const CEPH_SKIP: string | false = CEPH_CONF
  ? false
  : `no Ceph cluster: ${process.env['QS_TEST_CEPH_SKIP'] ?? 'QS_TEST_CEPH_CONF not set (run the tests through npm test as root)'}`;

// In CI (QS_TEST_REQUIRE=1) a missing cluster fails every rbd test file at
// load instead of skipping: with-ceph.sh should have refused to run already.
if (CEPH_SKIP && process.env['QS_TEST_REQUIRE'] === '1') throw new Error(`QS_TEST_REQUIRE=1: ${CEPH_SKIP}`);

/**
 * A describe() that is skipped, with the reason, when there is no cluster.
 * Its title carries `[ceph]`, by which the test summary counts the tests that
 * ran on the cluster (test/helpers/count-reporter.ts).
 */
export function describeRbd(title: string, body: () => void): void {
  describe(`${title} [ceph]`, { skip: CEPH_SKIP }, body);
}

/** A fresh image prefix, so suites and runs never see each other's images. */
export function uniquePrefix(label: string): string {
  return `t-${label}-${randomBytes(3).toString('hex')}-`;
}

export interface RbdPoolOpts {
  prefix: string;
  name?: string;
  revisionsToKeep?: number;
  hostId?: string;
  timeout?: number;
  namespace?: string;
  breakStaleLocks?: string;
  tmpDir?: string;
}

export function makeRbdPool(o: RbdPoolOpts): RbdPool {
  return rbdDriver.createPool(o.name ?? 'rbdpool', {
    ceph_pool: CEPH_POOL,
    namespace: o.namespace ?? '',
    image_prefix: o.prefix,
    ceph_conf: CEPH_CONF,
    client_id: '',
    keyring: '',
    host_id: o.hostId ?? 'testhost',
    break_stale_locks: o.breakStaleLocks ?? '',
    timeout: o.timeout ?? 30,
    tmp_dir: o.tmpDir ?? '',
    revisions_to_keep: o.revisionsToKeep ?? 2,
    ephemeral_volatile: false,
  }) as RbdPool;
}

export function domainOn(
  pool: Pool,
  name: string,
  klass: DomainClass,
  template: DomainStorage | null = null,
  sizes = { root: 8 * MiB, private: 4 * MiB },
): DomainStorage {
  const p = pool.name;
  return DomainStorage.init(
    {
      domain: { name, dirPrefix: klass === 'TemplateVM' ? 'vm-templates' : 'appvms' },
      volumes: defaultVolumeConfigs(klass, { root: p, private: p, volatile: p }, sizes),
      template,
    },
    () => pool,
  );
}

function baseArgs(): string[] {
  return ['--conf', CEPH_CONF];
}

/** Runs `rbd ARGS` synchronously (test set-up and checks). */
export function rbdSync(args: string[]): string {
  const r = spawnSync('rbd', [...baseArgs(), ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`rbd ${args.join(' ')}: ${r.stderr || r.error}`);
  return r.stdout;
}

/** "pool/image" of a volume path "rbd:pool/image[:opts]". */
export function specOfPath(p: string): string {
  if (!p.startsWith('rbd:')) throw new Error(`not an rbd path: ${p}`);
  return p.slice(4).split(':')[0]!;
}

/** The whole image (or snapshot) `spec`, read with `rbd export`. */
export function readSpec(spec: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = spawn('rbd', [...baseArgs(), 'export', spec, '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    c.stdout.on('data', (d: Buffer) => out.push(d));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`rbd export ${spec}: ${err}`))));
  });
}

/** Writes `data` at `offset` into the image at `spec` (as a domain would write its disk). */
export function writeSpec(spec: string, offset: number, data: string | Buffer): Promise<void> {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  return new Promise((resolve, reject) => {
    const c = spawn('rbd', [...baseArgs(), 'import-diff', '-', spec], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`rbd import-diff ${spec}: ${err}`))));
    writeAsDiff(offset, buf).pipe(c.stdin);
  });
}

export async function volumeBytes(v: Volume): Promise<Buffer> {
  return readSpec(specOfPath(await v.path()));
}

/** The text at the start of a volume's current data (NULs dropped). */
export async function text(v: Volume, n = 16): Promise<string> {
  return (await volumeBytes(v)).subarray(0, n).toString('latin1').replace(/\0+$/, '');
}

export async function writeVol(v: Volume, offset: number, data: string | Buffer): Promise<void> {
  await writeSpec(specOfPath(await v.path()), offset, data);
}

export function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Images of the test pool whose names start with `prefix`. */
export function imagesWith(prefix: string): string[] {
  const all = JSON.parse(rbdSync(['ls', CEPH_POOL, '--format', 'json']) || '[]') as string[];
  return all.filter((n) => n.startsWith(prefix)).sort();
}

export function snapsOf(image: string): string[] {
  return (JSON.parse(rbdSync(['snap', 'ls', `${CEPH_POOL}/${image}`, '--format', 'json']) || '[]') as { name: string }[]).map(
    (s) => s.name,
  );
}

/** The image's metadata `key` (rbd image-meta get), or null when it has none. */
export function metaOf(image: string, key: string): string | null {
  const r = spawnSync('rbd', [...baseArgs(), 'image-meta', 'get', `${CEPH_POOL}/${image}`, key], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) {
    if (/No such file|failed to get metadata|\(2\)/.test(r.stderr)) return null;
    throw new Error(`rbd image-meta get ${image} ${key}: ${r.stderr || r.error}`);
  }
  return r.stdout.trim();
}

/**
 * The snapshots of `image` that are not at rest between operations: all but
 * revisions (qs-rev-*) and one base snapshot per host (qs-base-HOST-gGEN-RAND)
 * holding the image's current generation (metadata qubes.generation, 0 when
 * unset), which the driver keeps for the next clone to reuse. A base of an
 * older generation, a second base of a host, or one named without its
 * generation is debris.
 */
export function restlessSnaps(image: string): string[] {
  const snaps = snapsOf(image);
  const bases = snaps.map((s) => /^qs-base-(.+)-g([0-9]+)-[0-9a-f]{12}$/.exec(s));
  const gen = bases.some((m) => m) ? (metaOf(image, 'qubes.generation') ?? '0') : '0';
  const hostsSeen = new Set<string>();
  const out: string[] = [];
  snaps.forEach((s, k) => {
    if (s.startsWith('qs-rev-')) return;
    const m = bases[k];
    if (m && m[2] === gen && !hostsSeen.has(m[1]!)) {
      hostsSeen.add(m[1]!);
      return;
    }
    out.push(s);
  });
  return out;
}

/** Removes every image of `prefix` (locks, snapshots, clones first): suite cleanup. */
export function purgePrefix(prefix: string): void {
  if (CEPH_SKIP) return;
  const imgs = imagesWith(prefix);
  // clones first (their parents cannot go before them)
  for (const img of [...imgs].sort((a, b) => Number(b.includes('~')) - Number(a.includes('~')))) {
    try {
      const locks = JSON.parse(rbdSync(['lock', 'ls', `${CEPH_POOL}/${img}`, '--format', 'json']) || '[]') as {
        id: string;
        locker: string;
      }[];
      for (const l of locks) rbdSync(['lock', 'rm', `${CEPH_POOL}/${img}`, l.id, l.locker]);
      for (const s of snapsOf(img)) spawnSync('rbd', [...baseArgs(), 'snap', 'rm', `${CEPH_POOL}/${img}@${s}`]);
      spawnSync('rbd', [...baseArgs(), 'rm', `${CEPH_POOL}/${img}`]);
    } catch {
      // best effort
    }
  }
}

/** Registers an after() hook removing the prefix's images. */
export function cleanupAfter(prefix: string): void {
  after(() => purgePrefix(prefix));
}

/** A temp directory removed after the suite. */
export async function tempDir(label: string): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), `qs-rbd-${label}-`));
  after(() => fs.rm(d, { recursive: true, force: true }));
  return d;
}

/** Runs scripts/ceph-cluster.sh CMD on the test cluster. */
export function cluster(cmd: 'kill-osd' | 'start-osd'): void {
  const r = spawnSync('bash', [CEPH_SCRIPT, cmd, CEPH_DIR], { encoding: 'utf8', timeout: 150_000 });
  if (r.status !== 0) throw new Error(`ceph-cluster.sh ${cmd}: ${r.stderr}`);
}

/** Files in `dir` (a pool's tmp_dir) this driver makes for imports and exports. */
export async function rbdTempFiles(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((f) => f.startsWith('qs-rbd-export-') || f.startsWith('qs-rbd-import-'));
}
