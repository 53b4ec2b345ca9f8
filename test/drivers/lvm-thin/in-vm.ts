// The lvm_thin tests that run INSIDE the test VM (Debian's kernel, with
// device-mapper): started by lvm-thin.test.ts on the host through
// scripts/with-test-vm.sh, with three scratch disks. Not a *.test.ts file:
// on the host there is no device-mapper to run it on.
//
// Disk 1: volume group qs_conf, thin pool `thin`: the driver conformance
//   suite with its crash tests ([conformance:lvm_thin@vm]).
// Disk 2: volume group qubes_dom0 with the thin pools pool00 (Qubes R4.0's
//   name) and vm-pool (R4.1's): a Qubes-shaped layout made with plain LVM
//   commands and served by the driver, usage compared with `lvs` read here;
//   and a qubes.xml shaped like Qubes R4's (test/domain/fixture.ts), whose
//   lvm_thin pool loads and whose domain starts and stops.
// Disk 3: volume group qs_cut on a device-mapper device over it, for the
//   power-cut test (power-cut.ts): the device drops every write from a
//   random moment on, as a power cut does.
import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeConformance } from '../../conformance/suite.js';
import { openPool } from '../../conformance/open-pool.js';
import { MiB, readAt, writeAt } from '../../helpers/data.js';
import { openApp } from '../../domain/helpers.js';
import { FIXTURE_PRIVATE, FIXTURE_ROOT, KERNEL, qubesXml } from '../../domain/fixture.js';
import { poolUsageRow } from '../../../src/client/usage.js';
import { LvmThinPool } from '../../../src/drivers/lvm-thin/index.js';
import type { Volume } from '../../../src/storage/volume.js';
import { configureGuestLvm, lvm, lvsOf, makeThinPools } from './lvm-cmd.js';
import { lvmThinTarget } from './target.js';
import { CUT_PV_PATH, describePowerCut } from './power-cut.js';

if (process.env['QS_TEST_VM'] !== '1') throw new Error('in-vm.js runs inside the test VM (scripts/with-test-vm.sh), started by lvm-thin.test.js');
const DISK1 = process.env['QS_TEST_VM_DISK_1'];
const DISK2 = process.env['QS_TEST_VM_DISK_2'];
const DISK3 = process.env['QS_TEST_VM_DISK_3'];
if (!DISK1 || !DISK2 || !DISK3) throw new Error('in-vm.js needs three scratch disks (QS_TEST_VM_DISKS=3)');

// LVM sees disks 1 and 2, and disk 3 only through the power-cut test's device-mapper device.
configureGuestLvm([DISK1, DISK2, CUT_PV_PATH]);
execFileSync('modprobe', ['dm-thin-pool']);
makeThinPools(DISK1, 'qs_conf', [{ name: 'thin', size: '900M' }]);
makeThinPools(DISK2, 'qubes_dom0', [
  { name: 'pool00', size: '300M' },
  { name: 'vm-pool', size: '300M' },
]);

// One model run (25 random commands; QS_MODEL_RUNS overrides): each LVM command costs about a second in the emulated guest.
describeConformance(lvmThinTarget('qs_conf', 'thin', 1));

const TAG = 16;
const tag = (s: string): Buffer => Buffer.concat([Buffer.from(s, 'latin1'), Buffer.alloc(TAG - s.length)]);
const untag = (b: Buffer): string => b.subarray(0, TAG).toString('latin1').replace(/\0+$/, '');
async function committed(v: Volume): Promise<string> {
  const p = await v.export();
  try {
    return untag(await readAt(p, 0, TAG));
  } finally {
    await v.exportEnd(p);
  }
}
/** `part` percent of `size` in whole bytes, as Qubes computes usage from lvs. */
const ofPct = (size: string, pct: string): number => Math.floor((Number(size) * Number(pct)) / 100);

describe('a Qubes-shaped LVM layout made with plain LVM commands, served by lvm_thin [vm]', () => {
  const VG = 'qubes_dom0';
  let pool: LvmThinPool;
  before(async () => {
    // As a Qubes R4.1 system has them: a template's root with one revision (TIMESTAMP-back), an AppVM's private.
    lvm('lvcreate', '-q', '--thin', '-V', '8M', '-n', 'vm-fedora-40-root', `${VG}/vm-pool`);
    await writeAt(`/dev/${VG}/vm-fedora-40-root`, 0, tag('tpl v1'));
    lvm('lvrename', '-q', VG, 'vm-fedora-40-root', 'vm-fedora-40-root-1700000000-back');
    lvm('lvcreate', '-q', '-kn', '-ay', '-s', `${VG}/vm-fedora-40-root-1700000000-back`, '-n', 'vm-fedora-40-root');
    await writeAt(`/dev/${VG}/vm-fedora-40-root`, 0, tag('tpl v2'));
    lvm('lvcreate', '-q', '--thin', '-V', '4M', '-n', 'vm-work-private', `${VG}/vm-pool`);
    await writeAt(`/dev/${VG}/vm-work-private`, 0, Buffer.alloc(2 * MiB, 7));
    pool = (await openPool('lvm_thin', 'vm-pool', { volume_group: VG, thin_pool: 'vm-pool', revisions_to_keep: 2 })) as LvmThinPool;
    await pool.setup();
  });

  const tpl = () => pool.initVolume({ name: 'fedora-40', dirPrefix: 'vm-templates' }, { name: 'root', rw: true, save_on_stop: true, size: 8 * MiB });

  it('lists the thin volumes of its thin pool as Qubes names them, without revisions or the other thin pool', async () => {
    assert.deepEqual(await pool.listVolumes(), [`${VG}/vm-fedora-40-root`, `${VG}/vm-work-private`]);
    assert.equal(tpl().vid, `${VG}/vm-fedora-40-root`, 'vid VG/vm-NAME-VOLUME');
    assert.equal((await pool.getVolume(`${VG}/vm-work-private`)).size, 4 * MiB);
  });

  it("reads Qubes' revisions (TIMESTAMP-back), exports the current data, reverts to the revision", async () => {
    const v = tpl();
    assert.deepEqual(await v.revisions(), [{ id: '1700000000-back', time: '2023-11-14T22:13:20Z' }]);
    assert.equal(await committed(v), 'tpl v2');
    assert.equal(await v.path(), `/dev/${VG}/vm-fedora-40-root`);
    await v.revert('1700000000-back');
    assert.equal(await committed(v), 'tpl v1');
    const names = [...lvsOf(VG).keys()].filter((n) => n.startsWith('vm-fedora-40-root'));
    assert.equal(names.length, 2, `the reverted-from data kept as a revision: ${names.join(' ')}`);
    assert.ok(names.some((n) => /^vm-fedora-40-root-[0-9]+-back$/.test(n) && n !== 'vm-fedora-40-root-1700000000-back'));
    await v.revert();
    assert.equal(await committed(v), 'tpl v2', 'the revert undone');
  });

  it('starts an AppVM root as LV-snap of the template, commits a private volume as Qubes does (LV-TIMESTAMP-back, LV-snap renamed)', async () => {
    const app = { name: 'work', dirPrefix: 'appvms' };
    const root = pool.initVolume(app, { name: 'root', rw: true, snap_on_start: true, source: tpl(), size: 8 * MiB });
    const priv = pool.initVolume(app, { name: 'private', rw: true, save_on_stop: true, size: 4 * MiB });
    await root.start();
    await priv.start();
    assert.equal(await root.path(), `/dev/${VG}/vm-work-root-snap`);
    assert.equal(await priv.path(), `/dev/${VG}/vm-work-private-snap`);
    const lvs = lvsOf(VG);
    assert.equal(lvs.get('vm-work-root-snap')?.['origin'], 'vm-fedora-40-root', 'a thin snapshot of the template root');
    assert.equal(lvs.get('vm-work-private-snap')?.['origin'], 'vm-work-private');
    assert.equal(untag(await readAt(await root.path(), 0, TAG)), 'tpl v2');
    await writeAt(await priv.path(), 0, tag('work v2'));
    await priv.stop();
    await root.stop();
    const after = [...lvsOf(VG).keys()].filter((n) => n.startsWith('vm-work-'));
    assert.equal(after.length, 2, after.join(' '));
    assert.ok(after.includes('vm-work-private'));
    assert.ok(after.some((n) => /^vm-work-private-[0-9]+-back$/.test(n)), after.join(' '));
    assert.equal(await committed(priv), 'work v2');
  });

  it('exportInto reads the committed LV straight into the sink: the data runs, no copy in the temp directory', async () => {
    const priv = await pool.getVolume(`${VG}/vm-work-private`);
    assert.equal(priv.readsExportsItself, true);
    const copies = async () => (await fs.readdir(pool.tmpDir).catch(() => [] as string[])).filter((n) => n.startsWith('qs-lvm-export-'));
    const got = Buffer.alloc(priv.size);
    let size = -1;
    let ends = 0;
    let seenCopies: string[] = [];
    await priv.exportInto({
      begin: async (n) => {
        size = n;
      },
      data: async (offset, bytes) => {
        seenCopies = seenCopies.concat(await copies());
        bytes.copy(got, offset);
      },
      end: async () => {
        ends++;
      },
    });
    assert.equal(size, 4 * MiB);
    assert.equal(ends, 1);
    assert.deepEqual(seenCopies, [], 'no export file while the data was handed over');
    assert.equal(untag(got), 'work v2');
    assert.ok(got.equals(await readAt(`/dev/${VG}/vm-work-private`, 0, 4 * MiB)), 'the LV\'s bytes');
  });

  it('reports usage as lvs does: volumes (size * data_percent) and the pool with metadata_size and metadata_usage', async () => {
    const priv = await pool.getVolume(`${VG}/vm-work-private`);
    const usage = await priv.usage();
    const details = await pool.usageDetails();
    const lvs = lvsOf(VG);
    const p = lvs.get('vm-work-private')!;
    assert.equal(usage, ofPct(p['lv_size']!, p['data_percent']!));
    assert.ok(usage >= 2 * MiB, `2 MiB written: usage ${usage}`);
    const tp = lvs.get('vm-pool')!;
    assert.deepEqual(details, {
      data_size: Number(tp['lv_size']),
      data_usage: ofPct(tp['lv_size']!, tp['data_percent']!),
      metadata_size: Number(tp['lv_metadata_size']),
      metadata_usage: ofPct(tp['lv_metadata_size']!, tp['metadata_percent']!),
    });
    assert.ok(details['metadata_usage']! > 0);
    // The warning of `qvm-pool usage` (its rows): metadata above a threshold is flagged, as data is.
    const metaPct = (100 * details['metadata_usage']!) / details['metadata_size']!;
    const row = poolUsageRow('vm-pool', details, Math.max(0, Math.floor(metaPct * 10) / 10 - 0.1));
    assert.ok(row.above.includes('metadata'), JSON.stringify(row));
  });

  it('refuses to shrink (as Qubes: the driver cannot shrink volumes) and grows', async () => {
    const priv = await pool.getVolume(`${VG}/vm-work-private`);
    await assert.rejects(priv.resize(2 * MiB, { force: true }), /cannot shrink/);
    await priv.resize(6 * MiB);
    assert.equal(lvsOf(VG).get('vm-work-private')?.['lv_size'], String(6 * MiB));
  });
});

describe('a Qubes R4 qubes.xml with an lvm_thin pool: loads, and its domain starts once the volume group exists [vm]', () => {
  let dir = '';
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-lvm-holdover-'));
    const kernelDir = path.join(dir, 'vm-kernels');
    await fs.mkdir(path.join(kernelDir, KERNEL), { recursive: true });
    await fs.writeFile(path.join(kernelDir, KERNEL, 'vmlinuz'), 'kernel');
    await fs.writeFile(path.join(kernelDir, KERNEL, 'initramfs'), 'initramfs');
    await fs.writeFile(
      path.join(dir, 'qubes.xml'),
      qubesXml({ fileDir: path.join(dir, 'varlibqubes'), reflinkDir: path.join(dir, 'reflink'), reflinkCheck: false, kernelDir }),
    );
    // sys-net's volumes, as Qubes made them in qubes_dom0/pool00.
    lvm('lvcreate', '-q', '--thin', '-V', `${FIXTURE_ROOT}B`, '-n', 'vm-sys-net-root', 'qubes_dom0/pool00');
    lvm('lvcreate', '-q', '--thin', '-V', `${FIXTURE_PRIVATE}B`, '-n', 'vm-sys-net-private', 'qubes_dom0/pool00');
    await writeAt('/dev/qubes_dom0/vm-sys-net-private', 0, tag('net private'));
  });
  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('the pool is available; sys-net starts on LV-snap copies and a fresh volatile LV, and its shutdown commits', async () => {
    const attached = new Map<string, string>();
    const runner = {
      async start(_d: unknown, disks: ReadonlyMap<string, { path: string }>) {
        for (const [name, dev] of disks) attached.set(name, dev.path);
      },
      async shutdown() {},
      async kill() {},
    };
    const { app } = await openApp(dir, { runner });
    try {
      assert.equal(app.isPoolAvailable('lvm'), true);
      assert.ok(app.pool('lvm') instanceof LvmThinPool);
      await app.start('sys-net');
      const net = app.domain('sys-net');
      assert.equal(net.powerState, 'Running');
      const priv = net.storage.get('private');
      assert.equal(await priv.path(), '/dev/qubes_dom0/vm-sys-net-private-snap');
      const lvs = lvsOf('qubes_dom0');
      for (const lv of ['vm-sys-net-root-snap', 'vm-sys-net-private-snap', 'vm-sys-net-volatile']) assert.ok(lvs.has(lv), `${lv} while running`);
      // What a hypervisor is given: the running copies and the fresh volatile LV, as Qubes' block_device() names them.
      assert.equal(attached.get('root'), '/dev/qubes_dom0/vm-sys-net-root-snap');
      assert.equal(attached.get('private'), '/dev/qubes_dom0/vm-sys-net-private-snap');
      assert.equal(attached.get('volatile'), '/dev/qubes_dom0/vm-sys-net-volatile');
      assert.equal(untag(await readAt(await priv.path(), 0, TAG)), 'net private');
      await writeAt(await priv.path(), 0, tag('net changed'));
      await app.shutdown('sys-net');
      assert.equal(net.powerState, 'Halted');
      const after = lvsOf('qubes_dom0');
      assert.ok(!after.has('vm-sys-net-volatile') && !after.has('vm-sys-net-private-snap'), [...after.keys()].join(' '));
      assert.equal(await committed(priv), 'net changed');
      assert.equal((await priv.revisions()).length, 1);
    } finally {
      await app.close();
    }
  });

  it("qvm-pool usage shows the thin pool's metadata and warns when it is above the threshold (exit status 3)", async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, QUBES_BASE_DIR: dir };
    delete env['QUBESD_SOCKET'];
    const run = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
      const r = spawnSync(process.execPath, ['dist/src/cli/qvm-pool.js', ...args], { env, encoding: 'utf8' });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const tp = lvsOf('qubes_dom0').get('pool00')!;
    const metaPct = (100 * ofPct(tp['lv_metadata_size']!, tp['metadata_percent']!)) / Number(tp['lv_metadata_size']);
    const above = run(['usage', '--threshold', String(Math.max(0, Math.floor(metaPct) - 1)), 'lvm']);
    assert.equal(above.status, 3, above.stderr);
    assert.match(above.stdout, /^POOL +USED +SIZE +USE% +METADATA_USED +METADATA_SIZE +METADATA_USE%\nlvm +/);
    assert.match(above.stderr, /^qvm-pool: warning: pool lvm: metadata [0-9.]+% used \(threshold [0-9]+%\)$/m);
    const below = run(['usage', '--threshold', '100', 'lvm']);
    assert.equal(below.status, 0, below.stderr);
    assert.equal(below.stderr, '');
  });

  it('a pool whose volume group is missing stays listed, unavailable, with the reason', async () => {
    const text = await fs.readFile(path.join(dir, 'qubes.xml'), 'utf8');
    await fs.writeFile(path.join(dir, 'qubes.xml'), text.replace('volume_group="qubes_dom0"', 'volume_group="qubes_gone"'));
    const { app } = await openApp(dir);
    try {
      assert.equal(app.isPoolAvailable('lvm'), false);
      await assert.rejects(app.start('sys-net'), /pool lvm \(driver lvm_thin\) is unavailable: lvm_thin: thin pool qubes_gone\/pool00 cannot be read: .*qubes_gone/);
    } finally {
      await app.close();
    }
  });
});

describePowerCut(DISK3);
