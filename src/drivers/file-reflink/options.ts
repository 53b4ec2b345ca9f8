/** Options and capabilities of the file-reflink driver, declared once (see storage/options.ts, storage/driver.ts). */
import type { DriverCapabilities } from '../../storage/driver.js';
import { COMMON_POOL_OPTIONS, type OptionSpec } from '../../storage/options.js';

export const FILE_REFLINK_CAPABILITIES: DriverCapabilities = {
  volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
  maxRevisions: Infinity,
  remote: false,
  writable: true,
  shrink: true,
  // Qubes' file and file-reflink pools list the volumes of their domains (README, Listing).
  listing: 'domains',
};

export const FILE_REFLINK_OPTIONS: readonly OptionSpec[] = [
  { name: 'dir_path', type: 'path', required: true, help: 'directory holding the images (absolute path)' },
  {
    name: 'setup_check',
    type: 'bool',
    default: true,
    help: 'refuse a filesystem without reflink; False allows slower, space-using sparse copies',
  },
  ...COMMON_POOL_OPTIONS,
];
