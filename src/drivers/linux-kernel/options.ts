/** Options and capabilities of the linux-kernel driver, declared once (validation, ListDrivers, help, the volume rules). */
import type { DriverCapabilities } from '../../storage/driver.js';
import type { OptionSpec } from '../../storage/options.js';

/**
 * Read-only volumes with neither snap_on_start nor save_on_stop, no
 * revisions: the base classes refuse anything else (rw, other kinds,
 * revisions, resize, revert, import) before this driver is called.
 */
export const LINUX_KERNEL_CAPABILITIES: DriverCapabilities = {
  volumeKinds: ['volatile'],
  maxRevisions: 0,
  remote: false,
  writable: false,
  shrink: false,
};

export const LINUX_KERNEL_OPTIONS: readonly OptionSpec[] = [
  {
    name: 'dir_path',
    type: 'path',
    required: true,
    help: 'directory with one VERSION/ directory per kernel, holding vmlinuz, initramfs and optionally modules.img',
  },
];
