/** Options and capabilities of the file and xen drivers: no reflink check, at most one revision. */
import type { DriverCapabilities } from '../../storage/driver.js';
import { COMMON_POOL_OPTIONS, type OptionSpec } from '../../storage/options.js';

/** At most one revision, as Qubes' file driver (the option's bound follows: storage/driver.ts poolOptionSpecs). */
export const FILE_CAPABILITIES: DriverCapabilities = {
  volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
  maxRevisions: 1,
  remote: false,
  writable: true,
  shrink: true,
  // Qubes' file and file-reflink pools list the volumes of their domains (README, Listing).
  listing: 'domains',
};

export const FILE_OPTIONS: readonly OptionSpec[] = [
  { name: 'dir_path', type: 'path', required: true, help: 'directory holding the images (absolute path)' },
  ...COMMON_POOL_OPTIONS.map((o) => (o.name === 'revisions_to_keep' ? { ...o, help: 'revisions kept per volume (-1, 0 or 1)' } : o)),
];
