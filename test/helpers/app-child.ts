// Crash child for App tests: opens the App of DIR (pool `default` in DIR/pool
// made on first use) and runs one operation; the parent sets
// QUBES_STORAGE_FAILPOINTS to have it killed midway.
// Usage: node app-child.js DIR REFLINK(true|false) OP [ARG...]
import * as path from 'node:path';
import { QubesApp } from '../../src/domain/app.js';
import { DriverRegistry } from '../../src/registry/drivers.js';
import { MiB } from './data.js';

export async function openTestApp(dir: string, reflink: boolean): Promise<QubesApp> {
  const app = await QubesApp.open({
    stateFile: path.join(dir, 'qubes.xml'),
    pools: await DriverRegistry.open({ nodeModules: [] }),
    sizes: { root: 8 * MiB, private: 4 * MiB },
  });
  if (!app.poolNames().includes('default'))
    await app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: reflink });
  return app;
}

async function main(): Promise<void> {
  const [dir, reflink, op, ...args] = process.argv.slice(2);
  const app = await openTestApp(dir!, reflink === 'true');
  try {
    switch (op) {
      case 'setup':
        break;
      case 'create-template':
        await app.createDomain({ klass: 'TemplateVM', name: args[0]!, label: 'black' });
        break;
      case 'create-appvm':
        await app.createDomain({ klass: 'AppVM', name: args[0]!, label: 'red', template: args[1]! });
        break;
      case 'clone':
        await app.cloneDomain(args[0]!, args[1]!);
        break;
      case 'remove':
        await app.removeDomain(args[0]!);
        break;
      case 'import': {
        // DOMAIN VOLUME: an import of zeros through the library (killed midway by a failpoint).
        const v = app.findDomain(args[0]!)!.storage.get(args[1]!);
        await v.importData(v.size);
        await v.importDataEnd(true);
        break;
      }
      default:
        throw new Error(`unknown op ${op}`);
    }
  } finally {
    await app.close();
  }
}

if (process.argv[1]?.endsWith('app-child.js')) {
  main().catch((e) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
