/**
 * Writes the method lists of src/admin/README.md (the admin socket's, and
 * apart the internal socket's) from the daemon's method tables (`npm run methods-doc`); with `--check`, only says whether the
 * README is up to date (exit 1 when not). The table is built as qubesd
 * builds it, over an empty runtime in a temporary directory, removed after.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { INTERNAL_METHOD_LIST_BEGIN, INTERNAL_METHOD_LIST_END, renderMethodList, withMethodList } from '../admin/method-list.js';
import { internalMethods } from '../admin/methods/internal.js';
import { openRuntime, type Runtime } from './runtime.js';

/** src/admin/README.md of this checkout (this file runs from dist/src/daemon/). */
export const ADMIN_README = fileURLToPath(new URL('../../../src/admin/README.md', import.meta.url));

/** Runs `fn` on an empty runtime in a temporary directory, removed after. */
async function withEmptyRuntime<T>(fn: (rt: Runtime) => T): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-methods-doc-'));
  try {
    const rt = await openRuntime({ baseDir: dir, storageConf: null, nodeModules: [] });
    try {
      return fn(rt);
    } finally {
      await rt.close();
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** The method list of the daemon's table, as the README should hold it. */
export function daemonMethodList(): Promise<string> {
  return withEmptyRuntime((rt) => renderMethodList(rt.methods));
}

/** The method list of the internal socket's table (as qubesd builds it). */
export function daemonInternalMethodList(): Promise<string> {
  return withEmptyRuntime((rt) =>
    renderMethodList(internalMethods(rt, { adminPolicy: () => undefined, adminMethods: rt.methods }).methods),
  );
}

async function main(): Promise<number> {
  const check = process.argv.includes('--check');
  const old = await fs.readFile(ADMIN_README, 'utf8');
  const text = withMethodList(
    withMethodList(old, await daemonMethodList()),
    await daemonInternalMethodList(),
    [INTERNAL_METHOD_LIST_BEGIN, INTERNAL_METHOD_LIST_END],
  );
  if (text === old) {
    process.stdout.write(`${ADMIN_README}: the method list is up to date\n`);
    return 0;
  }
  if (check) {
    process.stderr.write(`${ADMIN_README}: the method list differs from the method table; run npm run methods-doc\n`);
    return 1;
  }
  const tmp = `${ADMIN_README}.tmp-${process.pid}`;
  await fs.writeFile(tmp, text);
  await fs.rename(tmp, ADMIN_README);
  process.stdout.write(`${ADMIN_README}: method list written\n`);
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = await main();
