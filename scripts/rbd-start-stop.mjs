// AppVM start+stop on an rbd pool, for old-vs-new comparisons and call traces
// (docs/benchmarks.md, Issue 16 item 2, fourth pass):
//   QS_TEST_CEPH_CONF=... node scripts/rbd-start-stop.mjs DIST [CYCLES]
// DIST: a built tree's dist/ (this one, or an older commit's built elsewhere).
// The scenario's domain: 256 MiB template root cloned, private keeping 1
// revision, volatile; 2 warm-up cycles, then CYCLES timed ones, the
// background work (prune, trash removals) awaited between cycles, outside the
// timed span. Prints each cycle's start, stop and background times, then the
// medians and the CPU per start+stop. With QS_RBD_TRACE=1 every librbd call
// and its time goes to stderr, cycles marked with "=== ".
import * as path from 'node:path';

const dist = path.resolve(process.argv[2] ?? 'dist');
const cycles = Number(process.argv[3] ?? 6);
const { rbdDriver } = await import(`${dist}/src/drivers/rbd/index.js`);
const { DomainStorage } = await import(`${dist}/src/storage/domain-storage.js`);
const { defaultVolumeConfigs } = await import(`${dist}/src/storage/volume-sets.js`);
const pool = rbdDriver.createPool('ceph', {
  ceph_pool: process.env.QS_TEST_CEPH_POOL ?? 'rbd', namespace: '', image_prefix: `startstop-${process.pid}-`,
  ceph_conf: process.env.QS_TEST_CEPH_CONF ?? '', client_id: '', keyring: '', host_id: 'startstop',
  break_stale_locks: '', timeout: 60, tmp_dir: '', revisions_to_keep: 1, ephemeral_volatile: false,
});
await pool.setup();
const p = { root: 'ceph', private: 'ceph', volatile: 'ceph' };
const sizes = { root: 256 << 20, private: 256 << 20 };
const tpl = DomainStorage.init({ domain: { name: 'tpl', dirPrefix: 'vm-templates' }, volumes: defaultVolumeConfigs('TemplateVM', p, sizes) }, () => pool);
const app = DomainStorage.init({ domain: { name: 'work', dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('AppVM', p, sizes), template: tpl }, () => pool);
// Older code has no RbdPool.settled(): its background work is the trash removals only.
const settle = () => (pool.settled ? pool.settled() : pool.rbd.settled());
const mark = (s) => process.stderr.write(`=== ${s}\n`);
try {
  await tpl.create();
  await app.create();
  for (let i = 0; i < 2; i++) {
    await app.start();
    await app.stop();
    await settle();
  }
  const total = [];
  const cpu = [];
  for (let i = 0; i < cycles; i++) {
    mark(`start ${i}`);
    const c = process.cpuUsage();
    const t0 = performance.now();
    await app.start();
    const t1 = performance.now();
    mark(`start took ${(t1 - t0).toFixed(1)} ms; stop`);
    await app.stop();
    const t2 = performance.now();
    const u = process.cpuUsage(c);
    mark(`stop took ${(t2 - t1).toFixed(1)} ms; background`);
    await settle();
    mark(`background took ${(performance.now() - t2).toFixed(1)} ms`);
    total.push(t2 - t0);
    cpu.push((u.user + u.system) / 1000);
  }
  const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)].toFixed(0);
  console.log(`${dist}: start+stop median ${med(total)} ms (min ${Math.min(...total).toFixed(0)}), CPU ${med(cpu)} ms per start+stop, ${cycles} cycles`);
} finally {
  await app.remove().catch(() => undefined);
  await tpl.remove().catch(() => undefined);
  await settle();
  await pool.close();
}
