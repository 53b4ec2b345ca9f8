/**
 * The drivers that come with this project. Third-party drivers need no entry
 * here: they are found in installed packages (see src/registry/drivers.ts).
 */
import type { StorageDriver } from '../storage/driver.js';
import { makeCallbackDriver, type BackendPoolFactory } from './callback/index.js';
import { fileReflinkDriver } from './file-reflink/index.js';
import { fileDriver, xenDriver } from './file/index.js';
import { linuxKernelDriver } from './linux-kernel/index.js';
import { lvmThinDriver } from './lvm-thin/index.js';
import { rbdDriver } from './rbd/index.js';

/** Names of the built-in drivers, in the order builtinDrivers() gives them. */
export const BUILTIN_DRIVER_NAMES = ['file-reflink', 'file', 'xen', 'linux-kernel', 'callback', 'rbd', 'lvm_thin'] as const;

/**
 * The built-in drivers. `backends` makes the pools a wrapping driver
 * (callback) stands in front of: normally the registry itself.
 */
export function builtinDrivers(backends: BackendPoolFactory): StorageDriver[] {
  return [fileReflinkDriver, fileDriver, xenDriver, linuxKernelDriver, makeCallbackDriver(backends), rbdDriver, lvmThinDriver];
}
