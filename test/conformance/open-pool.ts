// Makes a pool from its driver name and options through a registry that
// knows the built-in drivers and the example driver, as the conformance
// suite and its crash children both do (a child gets the pool's config()).
import { DriverRegistry } from '../../src/registry/drivers.js';
import type { OptionValue } from '../../src/storage/options.js';
import type { Pool } from '../../src/storage/pool.js';
import { dirDriver } from '../../examples/dir-driver/index.js';

let registry: Promise<DriverRegistry> | null = null;

export function conformanceRegistry(): Promise<DriverRegistry> {
  return (registry ??= DriverRegistry.open({ drivers: [dirDriver] }));
}

/** A pool of `driver` named `name`, options validated against the declaration. */
export async function openPool(driver: string, name: string, options: Record<string, OptionValue>): Promise<Pool> {
  return (await conformanceRegistry()).createPool(driver, name, options);
}

/** The options to make the same pool again (in another process): its config() without name and driver. */
export function reopenOptions(pool: Pool): Record<string, OptionValue> {
  const options = pool.config();
  delete options['name'];
  delete options['driver'];
  return options;
}
