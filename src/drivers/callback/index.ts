/**
 * The callback driver: wraps a pool of another driver and runs user commands
 * before and after pool and volume events (format in README.md). It needs a
 * way to make its backend pool, so it is made by a factory given that way
 * (the registry does this for the built-in list).
 */
import { DRIVER_API_VERSION, type StorageDriver } from '../../storage/driver.js';
import { CALLBACK_OPTIONS } from './options.js';
import { CallbackPool, type BackendPoolFactory } from './pool.js';

export { CallbackPool, type BackendPoolFactory, type HookFacts } from './pool.js';
export { CallbackVolume } from './volume.js';
export {
  CALLBACK_OPTIONS,
  DEFAULT_CALLBACK_CONF,
  HOOK_NAMES,
  readCallbackConf,
  type CallbackConf,
  type HookCommand,
  type HookName,
} from './options.js';
export { runHook, hookEnv, MAX_HOOK_STDERR, type HookOutcome } from './hooks.js';

export const CALLBACK_DRIVER_NAME = 'callback';

/** The callback driver, making backend pools through `backends`. */
export function makeCallbackDriver(backends: BackendPoolFactory): StorageDriver {
  return {
    name: CALLBACK_DRIVER_NAME,
    apiVersion: DRIVER_API_VERSION,
    description: 'a pool of another driver, with user commands run before and after pool and volume events',
    options: CALLBACK_OPTIONS,
    capabilities: {
      // The widest a backend may declare: each callback pool answers with its backend's (CallbackPool.capabilities).
      volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
      maxRevisions: Infinity,
      remote: false,
      writable: true,
      shrink: true,
    },
    createPool: (name, options) => new CallbackPool(name, options, backends),
  };
}
