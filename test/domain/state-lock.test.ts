// The exclusive lock on the state file: a second App is refused while the
// first lives (in this process or another), a dead owner's lock is reclaimed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { openApp } from './helpers.js';
import { StateLock, StateLockedError } from '../../src/domain/state-lock.js';

describe('state file lock', () => {
  let dir: string;
  const stateFile = () => path.join(dir, 'qubes.xml');
  const lockFile = () => StateLock.pathFor(stateFile());

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-domain-lock-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('refuses a second App on the same file, and allows it after close', async () => {
    const first = await openApp(dir);
    try {
      assert.equal((await fs.readFile(lockFile(), 'utf8')).split(' ')[0], String(process.pid));
      await assert.rejects(openApp(dir), (e: unknown) => {
        assert.ok(e instanceof StateLockedError);
        assert.match((e as Error).message, new RegExp(`in use by process ${process.pid} \\(this process\\)`));
        return true;
      });
    } finally {
      await first.app.close();
    }
    await assert.rejects(fs.access(lockFile()), 'close removes the lock file');
    const second = await openApp(dir);
    await second.app.close();
  });

  it('reclaims the lock of a dead process', async () => {
    const child = spawn(process.execPath, ['-e', '0']);
    const pid = child.pid!;
    await new Promise((resolve) => child.on('exit', resolve));
    await fs.writeFile(lockFile(), `${pid} 12345\n`);
    const { app } = await openApp(dir);
    try {
      assert.equal((await fs.readFile(lockFile(), 'utf8')).split(' ')[0], String(process.pid));
      assert.deepEqual((await fs.readdir(dir)).filter((n) => n.includes('stale')), [], 'no stale lock left aside');
    } finally {
      await app.close();
    }
  });

  it('treats a reused pid (other start time) as dead', async () => {
    await fs.writeFile(lockFile(), `${process.pid} 1\n`);
    const { app } = await openApp(dir);
    await app.close();
  });

  it('refuses while another live process holds the lock, and leaves its lock alone', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
      const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
      const content = `${pid} ${start}\n`;
      await fs.writeFile(lockFile(), content);
      await assert.rejects(openApp(dir), new RegExp(`in use by process ${pid} \\(lock file`));
      assert.equal(await fs.readFile(lockFile(), 'utf8'), content);
    } finally {
      child.kill('SIGKILL');
      await fs.rm(lockFile(), { force: true });
    }
  });

  it("sweeps the temporary files of dead processes' acquires and reclaims, and keeps live ones", async () => {
    const child = spawn(process.execPath, ['-e', '0']);
    const dead = child.pid!;
    await new Promise((resolve) => child.on('exit', resolve));
    // What a process killed inside acquire or reclaimIfStale leaves, by a dead and by a live pid.
    const hex = 'a1b2c3d4e5f6';
    const deadFiles = [`.qubes.xml.lock.${dead}-${hex}`, `qubes.xml.lock.stale-${dead}-${hex}`];
    const liveFiles = [`.qubes.xml.lock.${process.ppid}-${hex}`, `qubes.xml.lock.stale-${process.ppid}-${hex}`];
    const others = ['.qubes.xml.lock.x', `.qubes.xml.lock.${dead}-${hex}0`, `.qubes.xml.tmp.lock.${dead}-${hex}`];
    for (const n of [...deadFiles, ...liveFiles, ...others]) await fs.writeFile(path.join(dir, n), `${dead} 1\n`);
    const { app } = await openApp(dir);
    try {
      const left = await fs.readdir(dir);
      for (const n of deadFiles) assert.ok(!left.includes(n), `${n} (dead process) is swept`);
      for (const n of [...liveFiles, ...others]) assert.ok(left.includes(n), `${n} is kept`);
    } finally {
      await app.close();
      for (const n of [...liveFiles, ...others]) await fs.rm(path.join(dir, n));
    }
  });

  it('refuses a lock file with unexpected content instead of guessing', async () => {
    await fs.writeFile(lockFile(), 'garbage');
    await assert.rejects(openApp(dir), /unexpected content/);
    await fs.rm(lockFile());
  });
});
