/** Options of the file and xen drivers: no reflink check, at most one revision. */
import { COMMON_POOL_OPTIONS, type OptionSpec } from '../../storage/options.js';

export const FILE_OPTIONS: readonly OptionSpec[] = [
  { name: 'dir_path', type: 'path', required: true, help: 'directory holding the images (absolute path)' },
  ...COMMON_POOL_OPTIONS.map((o) =>
    o.name === 'revisions_to_keep' ? { ...o, max: 1, help: 'revisions kept per volume (-1, 0 or 1)' } : o,
  ),
];
