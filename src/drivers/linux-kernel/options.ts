/** Options of the linux-kernel driver, declared once (validation, ListDrivers, help). */
import type { OptionSpec } from '../../storage/options.js';

export const LINUX_KERNEL_OPTIONS: readonly OptionSpec[] = [
  {
    name: 'dir_path',
    type: 'path',
    required: true,
    help: 'directory with one VERSION/ directory per kernel, holding vmlinuz, initramfs and optionally modules.img',
  },
];
