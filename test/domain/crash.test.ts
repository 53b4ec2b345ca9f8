// Creating, cloning and removing domains survive a crash at every step: the
// write-ahead mark in the state file lets the next start finish the job, so
// no volume is left that no domain owns and the name can be used again.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeEachFs } from '../helpers/filesystems.js';
import { listFiles } from '../helpers/data.js';
import { openTestApp } from '../helpers/app-child.js';
import { FAILPOINTS } from '../../src/files/failpoint.js';
import '../../src/domain/app.js'; // declares the app.* failpoints

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), '../helpers/app-child.js');

function child(dir: string, reflink: boolean, args: string[], failpoint = ''): 'killed' | 'done' {
  const r = spawnSync(process.execPath, [CHILD, dir, String(reflink), ...args], {
    env: { ...process.env, QUBES_STORAGE_FAILPOINTS: failpoint },
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.signal === 'SIGKILL') return 'killed';
  assert.equal(r.status, 0, `child ${args.join(' ')} failed: ${r.stderr}`);
  return 'done';
}

const CASES: { fp: string; op: string[]; gone: string }[] = [
  { fp: 'app.create.after-mark', op: ['create-appvm', 'work', 'tpl'], gone: 'appvms/work' },
  { fp: 'app.create.after-volumes', op: ['create-appvm', 'work', 'tpl'], gone: 'appvms/work' },
  { fp: 'app.create.after-volumes', op: ['clone', 'tpl', 'tpl2'], gone: 'vm-templates/tpl2' },
  { fp: 'reflink.commit.after-rename', op: ['clone', 'tpl', 'tpl2'], gone: 'vm-templates/tpl2' },
  { fp: 'app.remove.after-mark', op: ['remove', 'old'], gone: 'appvms/old' },
  { fp: 'app.remove.after-volumes', op: ['remove', 'old'], gone: 'appvms/old' },
];

describeEachFs('domain create/clone/remove crash safety', (tfs, ctx) => {
  it('every app failpoint is covered', () => {
    // app.compact.* are the journal's: state-journal.test.ts kills at them
    const covered = new Set([...CASES.map((c) => c.fp), 'app.compact.after-write']);
    assert.deepEqual([...FAILPOINTS].filter((f) => f.startsWith('app.')).filter((f) => !covered.has(f)), []);
  });

  for (const c of CASES) {
    it(`killed at ${c.fp} during ${c.op.join(' ')}: the next start leaves no orphan volumes and the name is free`, async () => {
      const dir = await ctx.tempDir('appcrash');
      child(dir, tfs.reflink, ['create-template', 'tpl']);
      child(dir, tfs.reflink, ['create-appvm', 'old', 'tpl']);
      assert.equal(child(dir, tfs.reflink, c.op, c.fp), 'killed', `${c.fp} not reached`);
      const app = await openTestApp(dir, tfs.reflink);
      try {
        const name = c.op[0] === 'remove' ? c.op[1]! : c.op[0] === 'clone' ? c.op[2]! : c.op[1]!;
        assert.equal(app.findDomain(name), undefined, `${name} must be rolled back or removed`);
        const files = await listFiles(path.join(dir, 'pool'));
        assert.deepEqual(files.filter((f) => f.startsWith(c.gone + '/')), [], 'no volume without a domain');
        const xml = await fs.readFile(path.join(dir, 'qubes.xml'), 'utf8');
        assert.doesNotMatch(xml, /qubes-storage-pending/, 'the mark is gone');
        // the name is free again, and the template is intact
        if (c.op[0] === 'clone') await app.cloneDomain('tpl', name);
        else await app.createDomain({ klass: 'AppVM', name, label: 'red', template: 'tpl' });
        await app.start(name);
        await app.shutdown(name);
      } finally {
        await app.close();
      }
    });
  }
});
