/**
 * The package's public surface (`import ... from 'qubes-storage'`): the
 * storage contract a driver implements (Pool, Volume, the declaration, its
 * options, errors and places), the file primitives drivers build crash-safe
 * changes from, the failpoints crash tests stop them at, the driver registry
 * and storage.conf, and the built-in drivers. A driver written against these
 * names keeps working as long as DRIVER_API_VERSION accepts it.
 *
 * Also exported: `qubes-storage/drivers/NAME` (one built-in driver, its pool
 * and volume classes) and `qubes-storage/client` (talking to qubesd).
 */

// ---- the storage contract ---------------------------------------------------------------

export { DRIVER_API_AGE, DRIVER_API_VERSION, canShrink, createPoolFrom, poolOptionSpecs } from './storage/driver.js';
export type { DriverCapabilities, StorageDriver } from './storage/driver.js';
export { Pool, checkPoolName } from './storage/pool.js';
export type { UsageDetails } from './storage/pool.js';
export { Volume, checkSize, checkVid, checkVolumeName, printable, volumeKind } from './storage/volume.js';
export type {
  BlockDevice,
  DomainRef,
  ResizeOptions,
  Revision,
  VolumeConfig,
  VolumeInfo,
  VolumeKind,
  VolumeSpec,
} from './storage/volume.js';
export {
  COMMON_POOL_OPTIONS,
  boolFromWord,
  checkOptionChange,
  parseBool,
  parseInt10,
  parseOptions,
} from './storage/options.js';
export type { OptionSpec, OptionType, OptionValue, PoolOptions } from './storage/options.js';
export {
  PermissionDenied,
  ProtocolError,
  QubesException,
  QubesFeatureNotFoundError,
  QubesLabelNotFoundError,
  QubesNoSuchPropertyError,
  QubesNotImplementedError,
  QubesPoolInUseError,
  QubesPropertyValueError,
  QubesTagNotFoundError,
  QubesValueError,
  QubesVMAlreadyExistsError,
  QubesVMError,
  QubesVMInUseError,
  QubesVMInvalidUUIDError,
  QubesVMNotFoundError,
  QubesVMNotHaltedError,
  QubesVMNotStartedError,
  QubesVolumeCopyTokenNotFoundError,
  QubesVolumeRevisionNotFoundError,
  StoragePoolException,
  storageErrnoError,
  storageError,
} from './storage/errors.js';
export type { DirectoryPlace, NamesPlace, PoolPlace } from './storage/places.js';
export { KeyedMutex } from './storage/lock.js';

// ---- what drivers build with ------------------------------------------------------------

export {
  allocatedBytes,
  copyFileCow,
  createSparse,
  exists,
  fsyncDir,
  fsyncFile,
  lstatOrNull,
  randomSuffix,
  reflinkSupported,
  resolveInside,
  sparseCopy,
  sweepAtomicTemps,
  unlinkIfExists,
  writeAll,
  writeFileAtomic,
} from './files/files.js';
export type { CopyMethod, CopyProgress } from './files/files.js';
export { createSparseWriter } from './files/sparse-writer.js';
export type { SparseWriter, SparseWriterOptions } from './files/sparse-writer.js';
export { FAILPOINTS, declareFailpoint, failpoint } from './files/failpoint.js';

// ---- finding drivers and pools ----------------------------------------------------------

export { DriverRegistry, checkDriverShape, defaultNodeModulesDirs, parseClassRef } from './registry/drivers.js';
export type { DriverListing, DriverOrigin, DriverProblem, DriverRef, RegistryOptions } from './registry/drivers.js';
export {
  SYSTEM_STORAGE_CONF,
  addPoolToStorageConf,
  defaultStorageConfPath,
  loadStorageConf,
  removePoolFromStorageConf,
} from './registry/storage-conf.js';
export type { LoadedStorageConf, NewPool, PoolDefinition, StorageConfContext } from './registry/storage-conf.js';

// ---- the built-in drivers ---------------------------------------------------------------

export { BUILTIN_DRIVER_NAMES, builtinDrivers } from './drivers/builtin.js';
export { fileReflinkDriver } from './drivers/file-reflink/index.js';
export { fileDriver, xenDriver } from './drivers/file/index.js';
export { linuxKernelDriver } from './drivers/linux-kernel/index.js';
export { makeCallbackDriver } from './drivers/callback/index.js';
export type { BackendPoolFactory } from './drivers/callback/index.js';
export { rbdDriver } from './drivers/rbd/index.js';
export { lvmThinDriver } from './drivers/lvm-thin/index.js';
