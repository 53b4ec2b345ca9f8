/** The rbd driver: declared options and capabilities, and its factory. */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { RBD_CAPABILITIES, RBD_OPTIONS } from './options.js';
import { RbdPool } from './pool.js';

export { RbdPool, imageOfVid, vidOfImage } from './pool.js';
export { RbdVolume } from './volume.js';

export const rbdDriver: StorageDriver = {
  name: 'rbd',
  apiVersion: DRIVER_API_VERSION,
  description: 'Ceph RBD images, shared by several hosts; revisions are RBD snapshots, snapshots are layered clones',
  options: RBD_OPTIONS,
  capabilities: RBD_CAPABILITIES,
  createPool: (name, options) => new RbdPool(name, options),
};
