/**
 * How the App makes pool objects: from a driver name and raw options (as
 * qubes.xml or admin.pool.Add give them). The driver registry
 * (src/registry/drivers.ts, `DriverRegistry`) has this shape; so does
 * `driversPoolFactory`, for embedders and tests that name their drivers.
 */
import { createPoolFrom, type StorageDriver } from '../storage/driver.js';
import { StoragePoolException } from '../storage/errors.js';
import type { OptionValue } from '../storage/options.js';
import type { Pool } from '../storage/pool.js';

export interface PoolFactory {
  /** Makes the pool object (nothing on disk); an unknown driver is a StoragePoolException. */
  createPool(driver: string, name: string, rawOptions: Record<string, OptionValue>): Promise<Pool>;
  /** The driver registered under `name` (for its capabilities); throws if unknown. */
  get?(name: string): StorageDriver;
}

/** A factory over a fixed list of drivers. */
export function driversPoolFactory(drivers: readonly StorageDriver[]): PoolFactory {
  const byName = new Map(drivers.map((d) => [d.name, d]));
  const get = (name: string): StorageDriver => {
    const d = byName.get(name);
    if (!d) throw new StoragePoolException(`unknown driver '${name}' (known: ${[...byName.keys()].sort().join(', ') || 'none'})`);
    return d;
  };
  return {
    get,
    async createPool(driver, name, rawOptions) {
      return createPoolFrom(get(driver), name, rawOptions);
    },
  };
}
