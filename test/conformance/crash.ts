// Crash recovery at the driver's failpoints, for any driver. Each case runs
// its set-up in this process, then its operation in a child traced for
// the failpoints it passes (src/files/failpoint.ts); for each of those a
// fresh pool gets the same set-up and a child killed (SIGKILL) there. Right
// after the crash the committed data must be the old or the new (by hash of
// the export). After the next operation, in this process, the volume's
// whole state, its committed data and every revision's data (sha256 of each,
// oldest first; ids and times differ), must be that of one of the two clean
// outcomes: the operation not done or done, each followed by the same next
// operation, both run without a crash in fresh pools (the reference runs).
// So a recovery that loses a revision, or keeps one too many, fails in any
// case and driver. Also: nothing the domain wrote lost, nothing left that
// is not at rest, revisions within the limit. As the App does when it
// opens, the pool's sweepLeftovers() runs first. A last test checks every
// failpoint the driver declares was reached by some case. Each failpoint is
// killed at in the first case that reaches it (commit failpoints in the
// commit itself); QS_CONFORMANCE_CRASH=all kills at it in every case that
// reaches it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { isDeepStrictEqual } from 'node:util';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS } from '../../src/files/failpoint.js';
import { canShrink } from '../../src/storage/driver.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Volume } from '../../src/storage/volume.js';
import { MiB, sha256 } from '../helpers/data.js';
import { openPool, reopenOptions } from './open-pool.js';
import { crashOps, crashScenario, type CrashScenario } from './crash-scenario.js';
import type { ConformanceTarget, VolumeIo } from './target.js';
import { untag } from './volumes.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'crash-child.js');

interface CrashCase {
  /** Run before, without a crash. */
  setup: string[];
  /** The operation a child is killed in. */
  op: string;
  /** The volume whose committed data is old or new. */
  check: 'tpl' | 'priv';
  /** Needs the snapshot kind. */
  snapshot?: boolean;
  /** Needs the shrink capability. */
  shrink?: boolean;
  /**
   * Run with revisions_to_keep reached (asserted before the operation), so
   * a prune that counts wrongly after the crash drops a revision.
   */
  fullRevisions?: boolean;
  /**
   * The next operation, in the test process (default: a session of the
   * AppVM), run after the crash and in both reference runs. It must leave
   * the volume at rest.
   */
  next?: (s: CrashScenario, io: VolumeIo) => Promise<void>;
}

const APP_SESSION = async (s: CrashScenario): Promise<void> => {
  await s.snap?.start();
  await s.priv.start();
  await s.priv.stop();
  await s.snap?.stop();
};
/** A session of the AppVM whose working copy must hold 'app B' (committed, or kept from before the crash): the domain's writes survive. */
const APP_SESSION_KEEPS_B = async (s: CrashScenario, io: VolumeIo): Promise<void> => {
  await s.snap?.start();
  await s.priv.start();
  assert.equal(untag(await io.read(await s.priv.path(), 0, 16)), 'app B', 'uncommitted data lost');
  await s.priv.stop();
  await s.snap?.stop();
};
const ONE = ['create-all', 'start-app', 'write-app-A', 'stop-app'];
const TWO = [...ONE, 'start-app', 'write-app-B', 'stop-app'];

const CASES: Record<string, CrashCase> = {
  create: {
    setup: [],
    op: 'create-all',
    check: 'tpl',
    next: async (s) => {
      await s.pool.setup();
      await s.tpl.remove();
      await s.tpl.create();
    },
  },
  start: { setup: ONE, op: 'start-app', check: 'priv' },
  commit: { setup: [...ONE, 'start-app', 'write-app-B'], op: 'stop-app', check: 'priv', next: APP_SESSION_KEEPS_B },
  snapshotStart: { setup: ['create-all', 'start-tpl', 'write-tpl-A', 'stop-tpl'], op: 'start-app', check: 'tpl', snapshot: true },
  // Two revisions (revisions_to_keep 2), and the next operation is a revert
  // again (its undo): a commit would drop the oldest revision itself and
  // hide a recovery that dropped it already (lvm_thin before bc7bf9a).
  revert: { setup: TWO, op: 'revert-app', check: 'priv', fullRevisions: true, next: (s) => s.priv.revert() },
  resize: { setup: ONE, op: 'resize-app', check: 'priv' },
  shrink: { setup: ONE, op: 'shrink-app', check: 'priv', shrink: true },
  resizeWhileSnapshotRuns: {
    setup: ['create-all', 'start-tpl', 'write-tpl-A', 'stop-tpl', 'start-app'],
    op: 'resize-tpl',
    check: 'tpl',
    snapshot: true,
    next: async (s) => {
      await s.priv.stop();
      await s.snap?.stop();
      await s.tpl.start();
      await s.tpl.stop();
    },
  },
  import: { setup: ONE, op: 'import-app', check: 'priv' },
  importVolume: {
    setup: ['create-all', 'start-tpl', 'write-tpl-A', 'stop-tpl', ...ONE.slice(1)],
    op: 'clone-tpl-into-app',
    check: 'priv',
  },
  remove: {
    setup: [...TWO, 'start-app', 'write-app-C', 'stop-app'],
    op: 'remove-app',
    check: 'priv',
    next: async (s) => {
      await s.snap?.remove();
      await s.priv.remove();
    },
  },
};

function child(pool: Pool, target: ConformanceTarget, withSnapshot: boolean, ops: string[], env: Record<string, string>): { killed: boolean; stdout: string } {
  const r = spawnSync(
    process.execPath,
    [CHILD, pool.driver, pool.name, JSON.stringify(reopenOptions(pool)), target.io.name, withSnapshot ? '1' : '0', ...ops],
    { env: { ...process.env, QUBES_STORAGE_FAILPOINTS: '', QUBES_STORAGE_FAILPOINT_TRACE: '', ...env }, encoding: 'utf8', timeout: 180_000 },
  );
  if (r.signal === 'SIGKILL') return { killed: true, stdout: r.stdout };
  assert.equal(r.status, 0, `child ${ops.join(' ')} failed: ${r.stderr || r.error}`);
  return { killed: false, stdout: r.stdout };
}

/** sha256 of the committed data (through export), null when there is none. */
async function committedHash(v: Volume): Promise<string | null> {
  let p: string;
  try {
    p = await v.export();
  } catch {
    return null;
  }
  try {
    return await sha256(p);
  } finally {
    await v.exportEnd(p);
  }
}

/** What the check compares: the committed data and each revision's data, by sha256 (null: none). */
interface VolumeState {
  committed: string | null;
  /** Oldest first; null when the volume lists none (removed). */
  revisions: string[] | null;
}

/** Revisions are read up to this many bytes (the crash cases' volumes are at most 12 MiB). */
const REVISION_READ = 16 * MiB;

async function stateOf(target: ConformanceTarget, v: Volume): Promise<VolumeState> {
  const committed = await committedHash(v);
  let revs;
  try {
    revs = await v.revisions();
  } catch {
    return { committed, revisions: null };
  }
  const revisions: string[] = [];
  for (const r of revs) {
    if (!target.revisionData) {
      revisions.push('(a revision: the target does not give its data)');
      continue;
    }
    const data = await target.revisionData(v, r, REVISION_READ);
    assert.ok(data.length < REVISION_READ, `revision ${r.id} of ${v.vid} read whole`);
    revisions.push(createHash('sha256').update(data).digest('hex'));
  }
  return { committed, revisions };
}

/** The state for a message: short hashes. */
function show(s: VolumeState): string {
  const h = (x: string | null): string => (x === null ? 'none' : x.slice(0, 12));
  return `data ${h(s.committed)}, revisions [${s.revisions === null ? 'none' : s.revisions.map(h).join(', ')}]`;
}

export function describeCrashRecovery(target: ConformanceTarget): void {
  const caps = target.driver.capabilities;
  const declared = [...FAILPOINTS].filter((f) => target.failpoints.some((p) => f.startsWith(p))).sort();

  describe('crash recovery at the failpoints', () => {
    if (target.failpoints.length === 0) {
      it('declares no failpoints: the driver has no crash points to test', (t) => {
        assert.deepEqual(declared, []);
        t.diagnostic(`${target.driver.name}: no failpoint prefixes given; its changes are single renames or none`);
      });
      return;
    }
    const withSnapshot = caps.volumeKinds.includes('snapshot');
    const keep = Math.min(2, caps.maxRevisions);
    const reachedAll = new Set<string>();
    const everyCase = process.env['QS_CONFORMANCE_CRASH'] === 'all';
    const reopen = async (p: Pool): Promise<CrashScenario> =>
      crashScenario(await openPool(p.driver, p.name, reopenOptions(p)), withSnapshot);
    /** The set-up operations, here (no failpoint is armed in this process), on objects of their own. */
    const setUp = async (p: Pool, ops: string[]): Promise<void> => {
      const run = crashOps(await reopen(p), target.io);
      for (const op of ops) await run[op]!();
    };

    for (const [name, c] of Object.entries(CASES)) {
      if (c.snapshot && !withSnapshot) continue; // the refusal of the kind is checked by the suite
      if (c.shrink && !canShrink(caps)) continue; // the refusal is checked by the suite
      it(`${name}: killed at each failpoint of ${c.op}, the next operation finds the old or new data and revisions, nothing lost, no debris`, async (t) => {
        // Reference run without a crash: the old and the new data, and the failpoints passed.
        const ref = await target.makePool({ revisions_to_keep: keep });
        await setUp(ref, c.setup);
        const refS = await reopen(ref);
        const oldHash = await committedHash(refS[c.check]);
        if (c.fullRevisions) assert.equal((await refS[c.check].revisions()).length, keep, `the set-up reaches revisions_to_keep ${keep}`);
        const traced = child(ref, target, withSnapshot, [c.op], { QUBES_STORAGE_FAILPOINT_TRACE: '1' });
        const line = traced.stdout.split('\n').find((l) => l.startsWith('REACHED '));
        assert.ok(line, 'the traced child lists the failpoints it passed');
        const passed = (JSON.parse(line.slice(8)) as string[]).filter((f) => declared.includes(f));
        const newHash = await committedHash((await reopen(ref))[c.check]);
        const killAt = passed.filter((fp) => everyCase || !reachedAll.has(fp));
        for (const fp of killAt) reachedAll.add(fp);
        if (killAt.length === 0) return;

        // The two clean outcomes, each followed by the next operation: done (this
        // pool), and not done (a fresh pool with the set-up only). Made one
        // after the other, before the crash pools (lvm_thin's pools share a VG).
        const next = c.next ?? APP_SESSION;
        const newS = await reopen(ref);
        await next(newS, target.io);
        const done = await stateOf(target, newS[c.check]);
        const oldPool = await target.makePool({ revisions_to_keep: keep });
        await setUp(oldPool, c.setup);
        const oldS = await reopen(oldPool);
        await next(oldS, target.io);
        const notDone = await stateOf(target, oldS[c.check]);

        for (const fp of killAt) {
          await t.test(`killed at ${fp}`, async () => {
            const pool = await target.makePool({ revisions_to_keep: keep });
            await setUp(pool, c.setup);
            assert.equal(child(pool, target, withSnapshot, [c.op], { QUBES_STORAGE_FAILPOINTS: fp }).killed, true, `killed at ${fp}`);
            const s = await reopen(pool);
            await s.pool.sweepLeftovers();
            const afterCrash = await committedHash(s[c.check]);
            assert.ok(afterCrash === oldHash || afterCrash === newHash, `right after the crash: ${afterCrash} is neither old ${oldHash} nor new ${newHash}`);
            await next(s, target.io);
            const after = await stateOf(target, s[c.check]);
            assert.ok(
              isDeepStrictEqual(after, notDone) || isDeepStrictEqual(after, done),
              `after the next operation: ${show(after)}; a clean run gives, not done: ${show(notDone)}, done: ${show(done)}`,
            );
            if (name === 'remove') assert.equal(after.committed, null, 'removed by the next remove');
            assert.deepEqual(await target.debris(s.pool), [], 'debris after the next operation');
            if (name !== 'remove' && name !== 'create') assert.ok((await s.priv.revisions()).length <= keep, `revisions within the limit ${keep}`);
          });
        }
      });
    }

    it('every failpoint the driver declares was reached by a case', () => {
      assert.ok(declared.length > 0, `no failpoints declared under ${target.failpoints.join(', ')}`);
      assert.deepEqual(declared.filter((f) => !reachedAll.has(f)), [], 'failpoints no case reached');
    });
  });
}
