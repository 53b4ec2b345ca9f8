// Builds Apps on temporary state files with a file-reflink pool, as the
// domain tests need them.
import * as path from 'node:path';
import { QubesApp, type QubesAppOptions } from '../../src/domain/app.js';
import type { AppEvent } from '../../src/domain/events.js';
import { DriverRegistry } from '../../src/registry/drivers.js';
import type { TestFs } from '../helpers/filesystems.js';
import { MiB } from '../helpers/data.js';

export const ROOT_SIZE = 8 * MiB;
export const PRIVATE_SIZE = 4 * MiB;

let registry: Promise<DriverRegistry> | undefined;
/** The built-in drivers (file-reflink, file, linux-kernel, ...); no packages scanned. */
export function builtinRegistry(): Promise<DriverRegistry> {
  registry ??= DriverRegistry.open({ nodeModules: [] });
  return registry;
}

export interface TestApp {
  app: QubesApp;
  dir: string;
  stateFile: string;
  /** dir_path of the pool named `default`. */
  poolDir: string;
  events: AppEvent[];
}

export type AppOverrides = Partial<Omit<QubesAppOptions, 'stateFile' | 'pools'>>;

/** Opens (or makes) the App of `dir/qubes.xml`, recording its events. */
export async function openApp(dir: string, over: AppOverrides = {}): Promise<{ app: QubesApp; events: AppEvent[] }> {
  const app = await QubesApp.open({
    stateFile: path.join(dir, 'qubes.xml'),
    pools: await builtinRegistry(),
    sizes: { root: ROOT_SIZE, private: PRIVATE_SIZE },
    ...over,
  });
  const events: AppEvent[] = [];
  app.events.on('*', (e) => {
    events.push(e);
  });
  return { app, events };
}

/** A new App in `dir` with a file-reflink pool `default` in `dir/pool`. */
export async function newApp(tfs: TestFs, dir: string, over: AppOverrides = {}): Promise<TestApp> {
  const { app, events } = await openApp(dir, over);
  const poolDir = path.join(dir, 'pool');
  await app.addPool('file-reflink', 'default', { dir_path: poolDir, setup_check: tfs.reflink });
  return { app, dir, stateFile: path.join(dir, 'qubes.xml'), poolDir, events };
}

/** Relative paths of all files under `dir`, sorted. */
export { listFiles as filesUnder } from '../helpers/data.js';

/** A writer that fails while `state.fail` is true (the App's writeFile seam). */
export function failingWriter(state: { fail: boolean }): (file: string, data: string) => Promise<void> {
  return async (file, data) => {
    if (state.fail) throw Object.assign(new Error('injected: no space left on device'), { code: 'ENOSPC' });
    const { writeFileAtomic } = await import('../../src/files/files.js');
    await writeFileAtomic(file, data);
  };
}
