// The modes of every file the daemon writes under its base directory. The
// daemon runs with umask 0, so each mode seen is the one the code asked
// for, not one the umask trimmed: state files 0600, the backups directory
// 0700, pool directories it makes 0750, nothing world-writable; a pool
// directory the user made keeps its own mode.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { AdminClient } from '../../src/admin/client.js';
import { ensureDead, startQubesd, type DaemonProc } from '../daemon/helpers.js';

interface Entry {
  readonly rel: string;
  readonly kind: 'dir' | 'file' | 'socket' | 'symlink' | 'other';
  readonly mode: number;
}

/** Every entry under `dir` (the directory itself as `.`), with its permission bits. */
async function walkModes(dir: string): Promise<Entry[]> {
  const out: Entry[] = [];
  const visit = async (rel: string): Promise<void> => {
    const st = await fs.lstat(path.join(dir, rel));
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSocket() ? 'socket' : st.isSymbolicLink() ? 'symlink' : 'other';
    out.push({ rel, kind, mode: st.mode & 0o7777 });
    if (kind === 'dir') for (const name of (await fs.readdir(path.join(dir, rel))).sort()) await visit(rel === '.' ? name : path.join(rel, name));
  };
  await visit('.');
  return out;
}

let d: DaemonProc | undefined;
// On the test XFS (reflink: a start copies 10 GiB images in no time); else the temp dir (slow sparse copies).
const top = await fs.mkdtemp(path.join(process.env['QS_TEST_XFS'] ?? os.tmpdir(), 'qs-modes-'));
after(async () => {
  await ensureDead(d);
  await fs.rm(top, { recursive: true, force: true });
});

it('every file the daemon wrote under its base directory has the mode it should, with umask 0', async (t) => {
  const base = path.join(top, 'base');
  const sock = path.join(top, 'qubesd.sock');
  // A pool directory the user made, world-readable on purpose: it must keep its mode.
  const userPool = path.join(base, 'user-pool');
  await fs.mkdir(base, { mode: 0o750 });
  await fs.mkdir(userPool, { mode: 0o755 });
  await fs.chmod(userPool, 0o755);
  const oldUmask = process.umask(0);
  try {
    d = await startQubesd(base, sock);
  } finally {
    process.umask(oldUmask);
  }
  const c = new AdminClient({ socketPath: sock });
  await c.call('admin.pool.Add', 'dom0', 'file-reflink', `name=made\ndir_path=${path.join(base, 'pools', 'made', 'deep')}\nsetup_check=False\n`);
  await c.call('admin.pool.Add', 'dom0', 'file-reflink', `name=users\ndir_path=${userPool}\nsetup_check=False\n`);
  await c.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
  await c.call('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl', 'name=work label=red pool=made');
  await c.call('admin.vm.CreateInPool.AppVM', 'dom0', 'tpl', 'name=mine label=red pool=users');
  await c.callStream('admin.vm.volume.Import', 'tpl', 'root', Readable.from([Buffer.alloc(0)]))
    .catch(() => undefined); // size mismatch refused: only its temporaries matter (there must be none)
  await c.call('admin.vm.Start', 'work');
  await c.call('admin.vm.Shutdown', 'work');
  await c.call('admin.vm.Start', 'mine');
  // While it runs (the lock is there), and after it stopped (a backup was kept).
  const running = await walkModes(base);
  d.child.kill('SIGTERM');
  assert.equal((await d.exited).code, 0);
  t.diagnostic(d.stderr().split('\n').filter((l) => l.includes(' call ')).map((l) => l.replace(/^.*method=(\S+).* (duration_ms=\d+).*$/, '$1 $2')).join(', '));
  const stopped = await walkModes(base);
  const entries = [...running, ...stopped];
  for (const e of stopped) t.diagnostic(`${e.mode.toString(8).padStart(4, '0')} ${e.kind} ${e.rel}`);
  const byRel = new Map(entries.map((e) => [e.rel, e]));
  const mode = (rel: string) => {
    const e = byRel.get(rel);
    assert.ok(e, `${rel} is missing; have:\n${[...byRel.keys()].join('\n')}`);
    return e.mode;
  };

  for (const e of entries) {
    assert.equal(e.mode & 0o002, 0, `${e.rel} is world-writable (${e.mode.toString(8)})`);
    assert.equal(e.mode & 0o7000, 0, `${e.rel} has setuid/setgid/sticky bits (${e.mode.toString(8)})`);
    assert.ok(e.kind === 'dir' || e.kind === 'file', `${e.rel}: unexpected ${e.kind}`);
  }
  assert.equal(mode('qubes.xml'), 0o600);
  assert.equal(mode('qubes.xml.lock'), 0o600);
  assert.equal(mode('running-domains'), 0o600);
  assert.equal(mode('backup'), 0o700);
  const backups = entries.filter((e) => e.rel.startsWith(`backup${path.sep}`));
  assert.ok(backups.length > 0, 'a backup was kept at stop');
  for (const b of backups) assert.equal(b.mode, 0o600, b.rel);

  // Pool directories the daemon made: 0750, from the pools' roots down to the volume directories.
  const made = entries.filter((e) => e.kind === 'dir' && (e.rel === 'pools' || e.rel.startsWith(`pools${path.sep}`)));
  assert.ok(made.some((e) => e.rel === path.join('pools', 'made', 'deep', 'appvms', 'work')), 'the volume directory of work');
  assert.ok(made.some((e) => e.rel === path.join('pools', 'default', 'vm-templates', 'tpl')), 'the volume directory of tpl');
  for (const e of made) assert.equal(e.mode, 0o750, e.rel);
  // Inside the user's pool the daemon's directories are 0750 too; the user's own keeps 0755.
  assert.equal(mode('user-pool'), 0o755);
  assert.equal(mode(path.join('user-pool', 'appvms')), 0o750);
  assert.equal(mode(path.join('user-pool', 'appvms', 'mine')), 0o750);
  // Images and everything else the daemon wrote: for its user only.
  for (const e of entries.filter((x) => x.kind === 'file')) assert.equal(e.mode & 0o077, 0, `${e.rel} is readable by others (${e.mode.toString(8)})`);
});
