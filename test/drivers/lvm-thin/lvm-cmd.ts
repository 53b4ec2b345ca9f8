// Plain LVM commands for the lvm_thin tests, run in the test VM: the set-up
// of volume groups and thin pools, and the independent reading of `lvs`
// the tests compare the driver's answers with (never the driver's code).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

/** Runs `lvm ARGS...`; returns stdout, throws with LVM's stderr. */
export function lvm(...args: string[]): string {
  try {
    return execFileSync('lvm', args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C', LVM_SUPPRESS_FD_WARNINGS: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; status?: number };
    throw new Error(`lvm ${args.join(' ')} failed (exit status ${String(err.status)}): ${err.stderr ?? ''}`, { cause: e });
  }
}

/** One row of `lvs`, fields as LVM writes them in JSON with --units b --nosuffix. */
export type LvRow = Record<string, string>;

/** `lvs` of a VG, by LV name, read by this test (JSON, bytes). */
export function lvsOf(vg: string): Map<string, LvRow> {
  const out = lvm('lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'lv_name,pool_lv,lv_size,data_percent,lv_attr,origin,lv_metadata_size,metadata_percent', vg);
  const rows = (JSON.parse(out) as { report: { lv: LvRow[] }[] }).report[0]!.lv;
  return new Map(rows.map((r) => [r['lv_name']!, r]));
}

/**
 * The guest's LVM configuration: what the VM's init writes (no udev), plus
 * a devices filter that keeps LVM's scan to `devices` (the scratch disks
 * the PVs are on: not a disk under the power-cut test's device-mapper
 * device, whose PV LVM would see twice), and no
 * metadata backups or archives (each LVM command in the emulated guest
 * costs a second or more; these cut the work each does).
 */
export function configureGuestLvm(devices: readonly string[]): void {
  if (process.env['QS_TEST_VM'] !== '1') throw new Error('configureGuestLvm is for the test VM only (it rewrites /etc/lvm/lvm.conf)');
  fs.writeFileSync(
    '/etc/lvm/lvm.conf',
    `# Written by test/drivers/lvm-thin (in the test VM only).
activation {
	udev_sync = 0
	udev_rules = 0
	verify_udev_operations = 1
	monitoring = 0
}
global {
	use_lvmpolld = 0
}
devices {
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	use_devicesfile = 0
	global_filter = [ ${devices.map((d) => `"a|^${d.replace(/[^A-Za-z0-9/_-]/g, '')}$|"`).join(', ')}, "r|.*|" ]
}
backup {
	backup = 0
	archive = 0
}
`,
  );
}

/** A PV, a VG (1 MiB extents: the tests' sizes are whole MiB) and thin pools on `disk`. */
export function makeThinPools(disk: string, vg: string, pools: { name: string; size: string }[]): void {
  lvm('pvcreate', '-q', disk);
  lvm('vgcreate', '-q', '-s', '1M', vg, disk);
  for (const p of pools) lvm('lvcreate', '-q', '--type', 'thin-pool', '-L', p.size, '-n', p.name, vg);
}
