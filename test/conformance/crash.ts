// Crash recovery at the driver's failpoints, for any driver. Each case runs
// its set-up in this process, then its operation in a child traced for
// the failpoints it passes (src/files/failpoint.ts); for each of those a
// fresh pool gets the same set-up and a child killed (SIGKILL) there. The
// next operation, in this process, must find the old or the new data (by
// hash of the export), right after the crash and after the next operation,
// nothing the domain wrote lost, nothing left that is not at rest, revisions
// within the limit. As the App does when it opens, the pool's
// sweepLeftovers() runs first. A last test checks every failpoint the driver
// declares was reached by some case. Each failpoint is killed at in the
// first case that reaches it (commit failpoints in the commit itself);
// QS_CONFORMANCE_CRASH=all kills at it in every case that reaches it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS } from '../../src/files/failpoint.js';
import { canShrink } from '../../src/storage/driver.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Volume } from '../../src/storage/volume.js';
import { sha256 } from '../helpers/data.js';
import { openPool, reopenOptions } from './open-pool.js';
import { crashOps, crashScenario, type CrashScenario } from './crash-scenario.js';
import type { ConformanceTarget } from './target.js';
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
  /** The next operation, in the test process (default: a session of the AppVM). */
  next?: (s: CrashScenario) => Promise<void>;
}

const APP_SESSION = async (s: CrashScenario): Promise<void> => {
  await s.snap?.start();
  await s.priv.start();
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
  commit: { setup: [...ONE, 'start-app', 'write-app-B'], op: 'stop-app', check: 'priv' },
  snapshotStart: { setup: ['create-all', 'start-tpl', 'write-tpl-A', 'stop-tpl'], op: 'start-app', check: 'tpl', snapshot: true },
  revert: { setup: TWO, op: 'revert-app', check: 'priv' },
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
      it(`${name}: killed at each failpoint of ${c.op}, the next operation finds old or new data, nothing lost, no debris`, async (t) => {
        // Reference run without a crash: the old and the new data, and the failpoints passed.
        const ref = await target.makePool({ revisions_to_keep: keep });
        await setUp(ref, c.setup);
        const refS = await reopen(ref);
        const oldHash = await committedHash(refS[c.check]);
        const traced = child(ref, target, withSnapshot, [c.op], { QUBES_STORAGE_FAILPOINT_TRACE: '1' });
        const line = traced.stdout.split('\n').find((l) => l.startsWith('REACHED '));
        assert.ok(line, 'the traced child lists the failpoints it passed');
        const passed = (JSON.parse(line.slice(8)) as string[]).filter((f) => declared.includes(f));
        const newHash = await committedHash((await reopen(ref))[c.check]);
        const workingBefore = c.op === 'stop-app' ? 'app B' : null;

        for (const fp of passed) {
          if (reachedAll.has(fp) && !everyCase) continue;
          reachedAll.add(fp);
          await t.test(`killed at ${fp}`, async () => {
            const pool = await target.makePool({ revisions_to_keep: keep });
            await setUp(pool, c.setup);
            assert.equal(child(pool, target, withSnapshot, [c.op], { QUBES_STORAGE_FAILPOINTS: fp }).killed, true, `killed at ${fp}`);
            const s = await reopen(pool);
            await s.pool.sweepLeftovers();
            const afterCrash = await committedHash(s[c.check]);
            assert.ok(afterCrash === oldHash || afterCrash === newHash, `right after the crash: ${afterCrash} is neither old ${oldHash} nor new ${newHash}`);
            if (workingBefore !== null) {
              // The domain's writes survive: committed, or still in the working copy at the next start.
              await s.snap?.start();
              await s.priv.start();
              assert.equal(untag(await target.io.read(await s.priv.path(), 0, 16)), workingBefore, 'uncommitted data lost');
              await s.priv.stop();
              await s.snap?.stop();
            } else await (c.next ?? APP_SESSION)(s);
            const after = await committedHash(s[c.check]);
            if (name !== 'create' && name !== 'remove')
              assert.ok(after === oldHash || after === newHash, `after the next operation: ${after} is neither old ${oldHash} nor new ${newHash}`);
            if (name === 'remove') assert.equal(after, null, 'removed by the next remove');
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
