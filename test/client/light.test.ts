/**
 * A program that only talks to a daemon (a web page of pool usage) loads the
 * client and the wire protocol, not the drivers, the state or the runtime:
 * a child process lists every module it resolves (a loader hook).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/test/client -> dist/ */
const DIST = path.resolve(here, '..', '..');
const CLIENT = pathToFileURL(path.join(DIST, 'src', 'client', 'index.js')).href;
const HEAVY = ['src/daemon/', 'src/drivers/', 'src/domain/', 'src/registry/'];

const HOOK = `export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (r.url.startsWith('file:')) process.stderr.write('loaded ' + r.url + '\\n');
  return r;
}
`;

describe('the client loads the runtime only to run embedded', () => {
  let dir = '';
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-light-'));
    await fs.writeFile(path.join(dir, 'hook.mjs'), HOOK);
  });
  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  /** The dist/ paths of the modules `code` (an ES module) resolved. */
  function loaded(code: string): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--no-warnings', '--experimental-loader', pathToFileURL(path.join(dir, 'hook.mjs')).href, '--input-type=module', '-e', code],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env['PATH'], HOME: dir } },
      );
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.on('error', reject);
      child.on('close', (code) => {
        if (code !== 0) return reject(new Error(`exit ${code}: ${err}`));
        const prefix = `loaded ${pathToFileURL(DIST).href}/`;
        resolve(err.split('\n').filter((l) => l.startsWith(prefix)).map((l) => l.slice(prefix.length)));
      });
    });
  }

  it('over the socket: no daemon, driver, domain or registry module', async () => {
    const mods = await loaded(`import { QubesClient } from ${JSON.stringify(CLIENT)}; QubesClient.overSocket('/nonexistent.sock');`);
    assert.ok(mods.includes('src/client/client.js') && mods.includes('src/admin/client.js'), mods.join('\n'));
    const heavy = mods.filter((m) => HEAVY.some((h) => m.startsWith(h)));
    assert.deepEqual(heavy, []);
  });

  it('embedded: the runtime is loaded (the hook sees what is loaded later)', async () => {
    const base = path.join(dir, 'base');
    const mods = await loaded(
      `import { QubesClient } from ${JSON.stringify(CLIENT)}; const q = await QubesClient.embedded(${JSON.stringify(base)}); await q.close();`,
    );
    assert.ok(mods.includes('src/daemon/runtime.js'), mods.join('\n'));
  });
});
