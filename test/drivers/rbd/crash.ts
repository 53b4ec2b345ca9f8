// Crash safety of rbd: a child process is killed (SIGKILL) at each rbd.*
// failpoint; the next operation, in this process, must find the data at the
// old or the new state (by hash), never between, nothing the domain wrote
// lost, and no leftover snapshots. Imported by rbd.test.ts.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS } from '../../../src/files/failpoint.js';
import { RBD_FAILPOINTS } from '../../../src/drivers/rbd/volume.js';
import { pattern } from '../../helpers/data.js';
import { cleanupAfter, crashVolume, describeRbd, makeRbdPool, sha, snapsOf, text, uniquePrefix, volumeBytes } from './helpers.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'crash-child.js');

/** Runs the child; true when it was killed at the failpoint. `pid` gets its process id. */
function child(prefix: string, ops: string[], failpoint = '', pid: { pid?: number } = {}): boolean {
  const r = spawnSync(process.execPath, [CHILD, prefix, ...ops], {
    env: { ...process.env, QUBES_STORAGE_FAILPOINTS: failpoint },
    encoding: 'utf8',
    timeout: 120_000,
  });
  pid.pid = r.pid;
  if (r.signal === 'SIGKILL') return true;
  assert.equal(r.status, 0, `child ${ops.join(' ')} failed: ${r.stderr}`);
  return false;
}

interface Case {
  /** Run before, without a crash. */
  setup: string[];
  /** Killed at the failpoint. */
  op: string[];
  /** The data the next operation may find: old and/or new (null: either). */
  expect: 'old' | 'new' | 'either';
}

const CASES: Record<string, Case> = {
  [RBD_FAILPOINTS.startAfterLock]: { setup: [], op: ['start'], expect: 'old' },
  [RBD_FAILPOINTS.stopAfterRename]: { setup: ['start', 'write:v2'], op: ['stop'], expect: 'new' },
  [RBD_FAILPOINTS.importAfterOldSnapshot]: { setup: [], op: ['import:5'], expect: 'old' },
  [RBD_FAILPOINTS.importAfterDiff]: { setup: [], op: ['import:5'], expect: 'new' },
  [RBD_FAILPOINTS.revertAfterRename]: { setup: [], op: ['revert'], expect: 'new' },
};

describeRbd('rbd crash safety (a process killed at each failpoint)', () => {
  it('has a case for every rbd failpoint', () => {
    assert.deepEqual([...FAILPOINTS].filter((f) => f.startsWith('rbd.')).sort(), Object.keys(CASES).sort());
  });

  for (const [fp, c] of Object.entries(CASES)) {
    const prefix = uniquePrefix('crash');
    cleanupAfter(prefix);
    it(`${fp}: the next operation finds the ${c.expect} state`, async () => {
      const pool = makeRbdPool({ prefix, revisionsToKeep: 2 });
      await pool.setup();
      const priv = crashVolume(pool);
      await priv.create();
      child(prefix, ['start', 'write:v1', 'stop', ...c.setup]);
      const old = sha(await volumeBytes(priv));
      const revsBefore = (await priv.revisions()).length;
      const killed: { pid?: number } = {};
      assert.equal(child(prefix, c.op, fp, killed), true, `killed at ${fp}`);
      // The next operation: a start (recovers) and a stop.
      await priv.start();
      const now = sha(await volumeBytes(priv));
      await priv.stop();
      const after = sha(await volumeBytes(priv));
      assert.equal(after, now, 'a stop without writes keeps the data');
      if (c.op[0] === 'stop') assert.equal(await text(priv), 'v2', 'nothing the domain wrote is lost');
      else if (c.op[0]!.startsWith('import')) {
        const imported = sha(pattern(priv.size, 5));
        assert.equal(now, c.expect === 'old' ? old : imported);
      } else if (c.op[0] === 'revert') assert.notEqual(now, old, 'the revert was finished');
      else assert.equal(now, old);
      const snaps = snapsOf(priv.image);
      assert.ok(!snaps.some((s) => /^qs-(import|reverting|start)/.test(s)), `leftover snapshots: ${snaps.join(' ')}`);
      assert.ok((await priv.revisions()).length <= 2, 'revisions pruned to the limit');
      await pool.sweepTmpOnce();
      const left = (await fs.readdir(os.tmpdir())).filter((f) => f.startsWith(`qs-rbd-import-${killed.pid}-`));
      assert.deepEqual(left, [], 'the killed import\'s file is swept');
      assert.ok(revsBefore >= 0);
      await priv.remove();
    });
  }
});
