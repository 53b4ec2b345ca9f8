// Everything this driver takes from qubes-storage, in one place, and only
// from the package's public surface (src/index.ts, the package's "."
// export). Installed beside qubes-storage, this line names the package:
// `export { ... } from 'qubes-storage';`. Inside this repository the example
// has its own package.json, so it cannot reach the package by name.
export {
  DRIVER_API_VERSION,
  type StorageDriver,
  QubesException,
  QubesValueError,
  StoragePoolException,
  storageErrnoError,
  COMMON_POOL_OPTIONS,
  type PoolOptions,
  Pool,
  Volume,
  type DomainRef,
  type Revision,
  type VolumeSpec,
} from '../../src/index.js';
