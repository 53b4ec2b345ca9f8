/** The `file` driver and `xen`, its R3.2 name and layout. */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { FILE_CAPABILITIES, FILE_OPTIONS } from './options.js';
import { FILE_FLAVOR, XEN_FLAVOR, createFilePool } from './pool.js';

export const fileDriver: StorageDriver = {
  name: 'file',
  apiVersion: DRIVER_API_VERSION,
  description: 'plain sparse image files in a directory tree (Qubes R4 file layout), at most one revision',
  options: FILE_OPTIONS,
  capabilities: FILE_CAPABILITIES,
  createPool: (name, options) => createFilePool(name, options, FILE_FLAVOR),
};

export const xenDriver: StorageDriver = {
  name: 'xen',
  apiVersion: DRIVER_API_VERSION,
  description: 'the Qubes R3.2 default: image files under appvms/, vm-templates/, servicevms/',
  options: FILE_OPTIONS,
  capabilities: FILE_CAPABILITIES,
  createPool: (name, options) => createFilePool(name, options, XEN_FLAVOR),
};
