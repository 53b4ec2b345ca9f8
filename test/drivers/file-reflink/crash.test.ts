// Crash safety of file-reflink: for every failpoint, a child process is killed
// (SIGKILL) there; a new process then runs the next operation. The data must
// be exactly the old or the new version (by hash), nothing the domain wrote
// may be lost, and no stray files may remain.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeEachFs } from '../../helpers/filesystems.js';
import { listFiles, sha256 } from '../../helpers/data.js';
import { scenario, type Scenario } from '../../helpers/reflink-scenario.js';
import { FAILPOINTS } from '../../../src/files/failpoint.js';
import '../../../src/drivers/file-reflink/volume.js'; // declares the failpoints

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../helpers/reflink-child.js');

function child(dir: string, setupCheck: boolean, ops: string[], failpoint?: string): { killed: boolean } {
  const r = spawnSync(process.execPath, [CHILD, dir, String(setupCheck), ...ops], {
    env: { ...process.env, QUBES_STORAGE_FAILPOINTS: failpoint ?? '' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.signal === 'SIGKILL') return { killed: true };
  assert.equal(r.status, 0, `child ${ops.join(' ')} failed: ${r.stderr}`);
  return { killed: false };
}

async function hashOf(file: string): Promise<string | null> {
  try {
    return await sha256(file);
  } catch {
    return null;
  }
}

/** What each operation is, how to reach it, and what "old" and "new" look like. */
interface CrashCase {
  /** Operations run (without failpoints) before the one that crashes. */
  setup: string[];
  /** The operation killed at the failpoint. */
  op: string;
  /** Which volume file to compare; old and new hashes are taken by running the case without a crash. */
  check: (s: Scenario) => string;
  /** The next operation after the crash (run in the test process). */
  next: (s: Scenario) => Promise<void>;
}

const privateClean = (s: Scenario) => (s.app.get('private') as unknown as { files: { clean: string } }).files.clean;

const CASES: Record<string, CrashCase> = {
  create: { setup: [], op: 'create-all', check: (s) => (s.tpl.get('root') as unknown as { files: { clean: string } }).files.clean, next: async (s) => { await s.pool.setup(); await s.tpl.remove(); await s.tpl.create(); } },
  startStop: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app'],
    op: 'start-app',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  commit: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app', 'start-app', 'write-app-private-B'],
    op: 'stop-app',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  snapshotStart: {
    setup: ['create-all', 'start-tpl', 'write-tpl-root-A', 'stop-tpl'],
    op: 'start-app',
    check: (s) => (s.tpl.get('root') as unknown as { files: { clean: string } }).files.clean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  revert: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app', 'start-app', 'write-app-private-B', 'stop-app'],
    op: 'revert-app-private',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  resize: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app'],
    op: 'resize-app-private',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  resizeShared: {
    // A running AppVM holds the template root's inode: resize must work on a copy.
    setup: ['create-all', 'start-tpl', 'write-tpl-root-A', 'stop-tpl', 'start-app'],
    op: 'resize-tpl-root',
    check: (s) => (s.tpl.get('root') as unknown as { files: { clean: string } }).files.clean,
    next: async (s) => { await s.app.stop(); await s.tpl.start(); await s.tpl.stop(); },
  },
  import: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app'],
    op: 'import-app-private',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  importVolume: {
    setup: ['create-all', 'start-tpl', 'write-tpl-root-A', 'stop-tpl', 'start-app', 'write-app-private-A', 'stop-app'],
    op: 'clone-tpl-private-into-app',
    check: privateClean,
    next: async (s) => { await s.app.start(); await s.app.stop(); },
  },
  remove: {
    setup: ['create-all', 'start-app', 'write-app-private-A', 'stop-app', 'start-app', 'write-app-private-B', 'stop-app', 'start-app', 'write-app-private-C', 'stop-app'],
    op: 'remove-app',
    check: privateClean,
    next: async (s) => { await s.app.remove(); },
  },
};

/** Which case exercises each failpoint (several may; one is enough to reach it). */
const CASE_OF: Record<string, string[]> = {
  'reflink.create.before-rename': ['create'],
  'reflink.start.after-base-link': ['snapshotStart'],
  'reflink.start.after-copy': ['startStop', 'snapshotStart'],
  'reflink.start.after-rename': ['startStop', 'snapshotStart'],
  'reflink.stop.after-unlink-dirty': ['commit'],
  'reflink.commit.after-fsync': ['commit', 'import'],
  'reflink.commit.after-revision-link': ['commit', 'import', 'importVolume'],
  'reflink.commit.after-rename': ['commit', 'import', 'importVolume'],
  'reflink.commit.after-prune': ['commit'],
  'reflink.revert.after-revision-link': ['revert'],
  'reflink.revert.after-rename': ['revert'],
  'reflink.resize.after-copy': ['resizeShared'],
  'reflink.resize.after-truncate': ['resize'],
  'reflink.import.after-create': ['import'],
  'reflink.import-volume.after-copy': ['importVolume'],
  'reflink.remove.midway': ['remove'],
};

/** Files a volume set may have at rest: images and revisions, nothing temporary. */
function stray(files: string[]): string[] {
  return files.filter((f) => !/^(appvms|vm-templates)\/[^/]+\/[a-z]+\.img(\.[0-9]+@[0-9T:-]+Z)?$/.test(f));
}

describeEachFs('file-reflink crash safety', (tfs, ctx) => {
  it('every declared failpoint is covered by a case', () => {
    assert.deepEqual([...FAILPOINTS].filter((f) => f.startsWith('reflink.')).sort(), Object.keys(CASE_OF).sort());
  });

  for (const [fp, caseNames] of Object.entries(CASE_OF)) {
    for (const name of caseNames) {
      it(`killed at ${fp} during ${name}: old or new data, nothing lost, no debris`, async () => {
        const c = CASES[name]!;
        // Reference run without a crash: the old and new hashes.
        const refDir = await ctx.tempDir('ref');
        child(refDir, tfs.reflink, c.setup);
        const ref = scenario(refDir, { setupCheck: tfs.reflink, revisionsToKeep: 2 });
        const oldHash = await hashOf(c.check(ref));
        const runningBefore = await hashOf(await ref.app.get('private').path());
        child(refDir, tfs.reflink, [c.op]);
        const newHash = await hashOf(c.check(ref));

        const dir = await ctx.tempDir('crash');
        child(dir, tfs.reflink, c.setup);
        const { killed } = child(dir, tfs.reflink, [c.op], fp);
        assert.ok(killed, `failpoint ${fp} was not reached by ${c.op}`);
        const s = scenario(dir, { setupCheck: tfs.reflink, revisionsToKeep: 2 });
        const afterCrash = await hashOf(c.check(s));
        assert.ok(afterCrash === oldHash || afterCrash === newHash, `after the crash: ${afterCrash} is neither old ${oldHash} nor new ${newHash}`);
        if (name === 'commit') {
          // The domain's uncommitted writes survive: the next start must show them.
          await s.app.start();
          assert.equal(await hashOf(await s.app.get('private').path()), runningBefore, 'uncommitted data lost');
          await s.app.stop();
        } else {
          await c.next(s);
        }
        const after = await hashOf(c.check(s));
        if (name !== 'remove' && name !== 'create')
          assert.ok(after === oldHash || after === newHash, `after the next operation: neither old nor new`);
        assert.deepEqual(stray(await listFiles(dir)), [], 'stray files after the next operation');
        // Revisions are distinct inodes and within the limit.
        const revs = await s.app.get('private').revisions();
        assert.ok(revs.length <= 2, `${revs.length} revisions kept, limit 2`);
      });
    }
  }
});
