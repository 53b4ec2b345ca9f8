// The lock describeEachSmallFs takes on a small test filesystem: a second
// holder waits while a live process holds it, and takes over the lock of a
// dead one. (Two suites filling one filesystem at once fail each other.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { holdFs, releaseFs } from './small-fs.js';

test('a holder waits for a live holder of the filesystem and takes over a dead one', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-small-lock-'));
  // A live holder: a child that exits when told (its stdin closes), also when the test fails.
  const child = spawn(process.execPath, ['-e', 'process.stdin.resume(); process.stdin.on("end", () => process.exit(0))'], { stdio: ['pipe', 'ignore', 'ignore'] });
  try {
    const lock = path.join(root, '.qs-test-exclusive');
    await fs.writeFile(lock, `${child.pid}\n`);
    const order: string[] = [];
    const exited = once(child, 'exit').then(() => order.push('holder exited'));
    const held = holdFs(root).then(() => order.push('held'));
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(order, [], 'still waiting while the holder lives');
    child.stdin!.end();
    await Promise.all([exited, held]);
    assert.deepEqual(order, ['holder exited', 'held']);
    assert.equal((await fs.readFile(lock, 'utf8')).trim(), String(process.pid));
    await releaseFs(root);
    await assert.rejects(fs.access(lock), 'released');
  } finally {
    child.stdin!.end();
    await fs.rm(root, { recursive: true, force: true });
  }
});
