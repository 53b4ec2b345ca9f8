/** The file-reflink driver: declared options and capabilities, and its factory. */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { FILE_REFLINK_CAPABILITIES, FILE_REFLINK_OPTIONS } from './options.js';
import { FileReflinkPool } from './pool.js';

export { FileReflinkPool } from './pool.js';
export { FileReflinkVolume } from './volume.js';

export const fileReflinkDriver: StorageDriver = {
  name: 'file-reflink',
  apiVersion: DRIVER_API_VERSION,
  description: 'image files in a directory; copies, snapshots and revisions are reflinks (XFS, btrfs)',
  options: FILE_REFLINK_OPTIONS,
  capabilities: FILE_REFLINK_CAPABILITIES,
  createPool: (name, options) => new FileReflinkPool(name, options),
};
