/**
 * Fixtures for registry tests, built by helpers: temporary directories and
 * throwaway driver packages (package.json + an ESM module exporting a
 * StorageDriver) installed into a temporary node_modules.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** A fresh directory under the system's temporary directory. */
export function makeTmp(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `qs-${prefix}-`));
}

export async function removeTmp(dir: string | undefined): Promise<void> {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
}

/** URL of this build's Pool module, for driver modules written by tests. */
const POOL_URL = pathToFileURL(
  path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'storage', 'pool.js'),
).href;

export interface DriverModuleSpec {
  /** The driver's own name. */
  readonly name: string;
  readonly exportName: string;
  readonly apiVersion?: number;
  readonly description?: string;
}

/** ESM source of a module exporting one minimal StorageDriver (options dir_path, required, and depth, int). */
export function driverModuleSource(spec: DriverModuleSpec): string {
  return `import { Pool } from ${JSON.stringify(POOL_URL)};
class ThrowawayPool extends Pool {
  async setup() {}
  async destroy() {}
  initVolume() { throw new Error('no volumes here'); }
  async listVolumes() { return []; }
  async getVolume(vid) { throw new Error('no volume ' + vid); }
  async size() { return null; }
  async usage() { return null; }
}
export const ${spec.exportName} = {
  name: ${JSON.stringify(spec.name)},
  apiVersion: ${spec.apiVersion ?? 1},
  description: ${JSON.stringify(spec.description ?? `throwaway driver ${spec.name}`)},
  options: [
    { name: 'dir_path', type: 'path', required: true, help: 'where it stores' },
    { name: 'depth', type: 'int', default: 2, min: 0, help: 'how deep' },
  ],
  capabilities: { volumeKinds: ['origin'], maxRevisions: 0, remote: false, writable: true },
  createPool: (name, options) => new ThrowawayPool(name, ${JSON.stringify(spec.name)}, options),
};
`;
}

export interface PackageSpec {
  /** "name" or "@scope/name". */
  readonly name: string;
  /** The "qubes-storage" field; omitted = a package that declares nothing. */
  readonly qubesStorage?: unknown;
  /** package.json "exports", if any. */
  readonly exports?: unknown;
  /** Files to write, relative to the package directory. */
  readonly files: Readonly<Record<string, string>>;
}

/** Writes a package into `nodeModules` and returns its directory. */
export async function installPackage(nodeModules: string, spec: PackageSpec): Promise<string> {
  const dir = path.join(nodeModules, ...spec.name.split('/'));
  await fs.mkdir(dir, { recursive: true });
  const manifest: Record<string, unknown> = { name: spec.name, version: '1.0.0', type: 'module' };
  if (spec.qubesStorage !== undefined) manifest['qubes-storage'] = spec.qubesStorage;
  if (spec.exports !== undefined) manifest['exports'] = spec.exports;
  await fs.writeFile(path.join(dir, 'package.json'), JSON.stringify(manifest, null, 2));
  for (const [rel, text] of Object.entries(spec.files)) {
    const f = path.join(dir, rel);
    await fs.mkdir(path.dirname(f), { recursive: true });
    await fs.writeFile(f, text);
  }
  return dir;
}

/** The standard throwaway package: driver `demo` by package.json, and `zdemo` only as a class. */
export async function installDemoPackage(nodeModules: string): Promise<string> {
  return installPackage(nodeModules, {
    name: 'qs-driver-demo',
    qubesStorage: { drivers: { demo: './lib/demo.js#demoDriver' } },
    exports: { '.': './lib/demo.js', './pool': { import: './lib/zpool.js' }, './package.json': './package.json' },
    files: {
      'lib/demo.js': driverModuleSource({ name: 'demo', exportName: 'demoDriver' }),
      'lib/zpool.js': driverModuleSource({ name: 'zdemo', exportName: 'ZDriver' }),
    },
  });
}
