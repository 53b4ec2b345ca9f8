/** The linux-kernel driver: read-only `kernel` volumes from a directory of kernels. */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { LINUX_KERNEL_CAPABILITIES, LINUX_KERNEL_OPTIONS } from './options.js';
import { LinuxKernelPool } from './pool.js';

export { LinuxKernelPool } from './pool.js';
export { LinuxKernelVolume, checkKernelVersion, KERNEL_FILES, MODULES_IMG } from './volume.js';

export const linuxKernelDriver: StorageDriver = {
  name: 'linux-kernel',
  apiVersion: DRIVER_API_VERSION,
  description: 'read-only kernel volumes from DIR/VERSION/ (vmlinuz, initramfs, modules.img)',
  options: LINUX_KERNEL_OPTIONS,
  capabilities: LINUX_KERNEL_CAPABILITIES,
  createPool: (name, options) => new LinuxKernelPool(name, options),
};
