/**
 * The client example of README.md, run as it is written (only its import
 * specifier pointed at this build), as a program of its own: embedded on a
 * fresh base directory, and against a qubesd. If the README or the client
 * changes so that the example no longer works, this fails.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { QubesClient } from '../../src/client/index.js';
import { daemonScope, startQubesd } from '../daemon/helpers.js';
import { runNode } from '../helpers/process.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/test/client -> the repository's README.md and dist/src/client/index.js */
const README = path.resolve(here, '..', '..', '..', 'README.md');
const CLIENT = path.resolve(here, '..', '..', 'src', 'client', 'index.js');
const MARKER = '<!-- run by test/client/readme.test.ts';

/** The ```js block after the marker, importing this build's client. */
function readmeExample(readme: string): string {
  const at = readme.indexOf(MARKER);
  assert.ok(at >= 0, `README.md has no "${MARKER}" marker`);
  const m = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(m, 'no ```js block after the marker');
  const code = m[1]!;
  assert.ok(code.includes("from 'qubes-storage/client'"), 'the example imports qubes-storage/client');
  return code.split("'qubes-storage/client'").join(JSON.stringify(pathToFileURL(CLIENT).href));
}


/**
 * What the example prints: one line per pool (here the first use's `default`
 * and `linux-kernel`, of unknown size and with no kernel installed), then
 * the new domain's root.
 */
const EXPECTED =
  /^default: \d+ of \d+ bytes used \((\d+(\.\d)?|-)%\)( {2}above 80%)?\nlinux-kernel: 0 of unknown bytes used \(-%\)\nwork:root: [1-9]\d* bytes in pool default\n$/;

describe('README.md: the client example', () => {
  const scope = daemonScope();
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
  });

  async function setUp(): Promise<{ base: string; script: string }> {
    // The script beside, not inside, the base directory (a base directory holding files is an old state).
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-readme-'));
    dirs.push(dir);
    const base = path.join(dir, 'base');
    const script = path.join(dir, 'example.mjs');
    await fs.writeFile(script, readmeExample(await fs.readFile(README, 'utf8')));
    return { base, script };
  }

  it('runs embedded (no daemon): lists pool usage, creates the domain', async () => {
    const { base, script } = await setUp();
    const r = await runNode(script, [], { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBES_STORAGE_EMBEDDED: '1' });
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
    assert.match(r.stdout, EXPECTED);
    const qubes = await QubesClient.embedded(base);
    try {
      assert.equal((await qubes.domain('work')).klass, 'StandaloneVM');
    } finally {
      await qubes.close();
    }
  });

  it('runs against qubesd over its socket', async () => {
    const { base, script } = await setUp();
    const sock = await scope.sock();
    const d = await startQubesd(base, sock);
    scope.running.push(d);
    try {
      const r = await runNode(script, [], { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBESD_SOCKET: sock });
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      assert.match(r.stdout, EXPECTED);
      assert.match(d.stderr(), /admin\.vm\.Create/, 'the calls went to the daemon');
      assert.equal((await QubesClient.overSocket(sock).domain('work')).klass, 'StandaloneVM');
    } finally {
      d.child.kill('SIGTERM');
      await d.exited;
    }
  });
});
