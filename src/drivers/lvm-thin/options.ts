/** Options and capabilities of the lvm_thin driver, declared once (see storage/options.ts, storage/driver.ts). */
import type { DriverCapabilities } from '../../storage/driver.js';
import { COMMON_POOL_OPTIONS, type OptionSpec } from '../../storage/options.js';

export const LVM_THIN_CAPABILITIES: DriverCapabilities = {
  volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
  maxRevisions: Infinity,
  remote: false,
  writable: true,
  // Qubes refuses: "For your own safety, shrinking of ... is disabled".
  shrink: false,
  // The thin pool is the record of what exists (Qubes lists its thin volumes).
  listing: 'pool',
};

export const LVM_THIN_OPTIONS: readonly OptionSpec[] = [
  { name: 'volume_group', type: 'string', required: true, help: 'LVM volume group holding the thin pool (e.g. qubes_dom0)' },
  { name: 'thin_pool', type: 'string', required: true, help: 'thin pool in that volume group (e.g. vm-pool, or pool00 on R4.0)' },
  ...COMMON_POOL_OPTIONS,
];
