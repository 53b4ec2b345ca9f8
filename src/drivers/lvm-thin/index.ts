/** The lvm_thin driver: declared options and capabilities, and its factory. */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { LVM_THIN_CAPABILITIES, LVM_THIN_OPTIONS } from './options.js';
import { LvmThinPool } from './pool.js';

export { LvmThinPool } from './pool.js';
export { LvmThinVolume, LVM_FAILPOINTS } from './volume.js';

export const lvmThinDriver: StorageDriver = {
  name: 'lvm_thin',
  apiVersion: DRIVER_API_VERSION,
  description: "thin volumes in an LVM thin pool, Qubes R4's default: revisions and running copies are thin snapshots",
  options: LVM_THIN_OPTIONS,
  capabilities: LVM_THIN_CAPABILITIES,
  createPool: (name, options) => new LvmThinPool(name, options),
};
