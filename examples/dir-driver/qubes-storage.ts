// Everything this driver takes from qubes-storage, in one place. Until the
// package exports its public surface, the paths point into the source tree;
// then this file becomes `export { ... } from 'qubes-storage';` (one line).
export { DRIVER_API_VERSION, type StorageDriver } from '../../src/storage/driver.js';
export { QubesException, QubesValueError, StoragePoolException, storageErrnoError } from '../../src/storage/errors.js';
export { COMMON_POOL_OPTIONS, type PoolOptions } from '../../src/storage/options.js';
export { Pool } from '../../src/storage/pool.js';
export { Volume, type DomainRef, type Revision, type VolumeSpec } from '../../src/storage/volume.js';
