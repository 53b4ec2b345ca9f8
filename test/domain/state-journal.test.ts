// The state journal (src/domain/state-journal.ts): saves of a big state go
// to an append-only journal, folded into qubes.xml later. These tests force
// the journal on small states (QUBES_STORAGE_JOURNAL_FROM=0) and check that
// what a crash leaves reads back as the state every acknowledged save made,
// byte for byte the file a clean close would have written.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeEachFs } from '../helpers/filesystems.js';
import { listFiles } from '../helpers/data.js';
import { openTestApp } from '../helpers/app-child.js';
import { modelAfter, modelOf, type SessionModel } from './journal-child.js';
import { encodeRecord, JOURNAL_HEADER, readJournal, type JournalUnit } from '../../src/domain/state-journal.js';
import { StateFileError } from '../../src/domain/xml.js';
import { exists } from '../../src/files/files.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'journal-child.js');
const STEPS = 40;

interface ChildRun {
  outcome: 'killed' | 'done';
  acked: number;
}

function session(dir: string, reflink: boolean, opts: { journalFrom: number; kill?: boolean; failpoint?: string }): ChildRun {
  const r = spawnSync(process.execPath, [CHILD, dir, String(reflink), String(STEPS), opts.kill ? 'kill' : ''], {
    env: { ...process.env, QUBES_STORAGE_JOURNAL_FROM: String(opts.journalFrom), QUBES_STORAGE_FAILPOINTS: opts.failpoint ?? '' },
    encoding: 'utf8',
    timeout: 120_000,
  });
  const acked = Math.max(0, ...[...r.stdout.matchAll(/^ack (\d+)$/gm)].map((m) => Number(m[1])));
  if (r.signal === 'SIGKILL') return { outcome: 'killed', acked };
  assert.equal(r.status, 0, `journal child failed: ${r.stderr}`);
  return { outcome: 'done', acked };
}

const sorted = (m: SessionModel): unknown =>
  [...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([n, v]) => [n, v.features, [...v.tags].sort(), v.label]);

/** qubes.xml with what differs between two runs of the same session (uuids, the directory) taken out. */
async function normalisedState(dir: string): Promise<string> {
  const xml = await fs.readFile(path.join(dir, 'qubes.xml'), 'utf8');
  return xml.replace(/<property name="uuid">[^<]*<\/property>/g, '<property name="uuid"/>').replaceAll(dir, 'DIR');
}

describeEachFs('state journal', (tfs, ctx) => {
  it('a session saved through the journal and killed reopens to the file a clean close writes, byte for byte', async () => {
    const viaJournal = await ctx.tempDir('journal');
    const whole = await ctx.tempDir('whole');
    const killed = session(viaJournal, tfs.reflink, { journalFrom: 0, kill: true });
    assert.equal(killed.outcome, 'killed');
    assert.equal(killed.acked, STEPS);
    const journal = await readJournal(path.join(viaJournal, 'qubes.xml.journal'), 1 << 30);
    assert.ok(journal && journal.records.length > 0, 'saves went to the journal');
    const stale = await fs.readFile(path.join(viaJournal, 'qubes.xml'), 'utf8');

    assert.equal(session(whole, tfs.reflink, { journalFrom: 1 << 30 }).outcome, 'done');
    assert.equal(await exists(path.join(whole, 'qubes.xml.journal')), false, 'small states are rewritten whole: no journal');

    const app = await openTestApp(viaJournal, tfs.reflink);
    try {
      assert.deepEqual(sorted(modelOf(app)), sorted(await modelAfter(STEPS)));
      // The open folded the journal in (the file rewritten): its backup holds that file, not the bytes read.
      const backups = (await fs.readdir(path.join(viaJournal, 'backup'))).filter((n) => n.endsWith('Z.xml')).sort();
      assert.deepEqual(
        await fs.readFile(path.join(viaJournal, 'backup', backups.at(-1)!)),
        await fs.readFile(path.join(viaJournal, 'qubes.xml')),
        'the backup taken at open holds the state with the journal folded in',
      );
    } finally {
      await app.close();
    }
    assert.equal(await exists(path.join(viaJournal, 'qubes.xml.journal')), false, 'a clean close folds the journal in and removes it');
    assert.notEqual(await fs.readFile(path.join(viaJournal, 'qubes.xml'), 'utf8'), stale, 'the last changes were only in the journal');
    assert.equal(await normalisedState(viaJournal), await normalisedState(whole));
  });

  const CRASHES: Array<[string, number]> = [
    ['state.journal.before-sync', 1],
    ['state.journal.before-sync', 23],
    ['state.journal.after-sync', 2],
    ['state.journal.after-sync', 31],
    ['app.compact.after-write', 1],
    ['app.compact.after-write', 3],
  ];
  for (const [fp, n] of CRASHES) {
    it(`killed at ${fp}:${n}: the reopened state has every acknowledged change, and the one in flight wholly or not at all`, async () => {
      const dir = await ctx.tempDir('crash');
      const run = session(dir, tfs.reflink, { journalFrom: 0, failpoint: `${fp}:${n}` });
      assert.equal(run.outcome, 'killed', `${fp}:${n} not reached`);
      const app = await openTestApp(dir, tfs.reflink);
      try {
        const got = sorted(modelOf(app));
        const before = sorted(await modelAfter(run.acked));
        const after = sorted(await modelAfter(run.acked + 1));
        assert.ok(
          JSON.stringify(got) === JSON.stringify(before) || JSON.stringify(got) === JSON.stringify(after),
          `state after ${run.acked} acknowledged steps: ${JSON.stringify(got)}`,
        );
        // no volume without its domain (the write-ahead marks went through the journal too)
        const vols = new Set((await listFiles(path.join(dir, 'pool'))).filter((f) => f.startsWith('appvms/')).map((f) => f.split('/')[1]));
        assert.deepEqual([...vols].sort(), [...modelOf(app).keys()].sort());
        // (killed before the template was saved: the session had not begun)
        if (!app.findDomain('tpl')) await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
        await app.createDomain({ klass: 'AppVM', name: 'after', label: 'red', template: 'tpl' });
      } finally {
        await app.close();
      }
      const again = await openTestApp(dir, tfs.reflink);
      try {
        assert.ok(again.findDomain('after'), 'a save after the recovery is kept');
      } finally {
        await again.close();
      }
    });
  }
});

describe('state journal file', () => {
  const unit = (i: number): JournalUnit => ({ domain: String(i), xml: `<domain id="domain-${i}" class="AppVM"/>` });
  async function journalWith(records: Uint8Array[], tail: Uint8Array = Buffer.alloc(0)): Promise<string> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-journal-'));
    const file = path.join(dir, 'qubes.xml.journal');
    await fs.writeFile(file, Buffer.concat([Buffer.from(JOURNAL_HEADER), ...records, tail]));
    return file;
  }
  const cleanup = (file: string) => fs.rm(path.dirname(file), { recursive: true, force: true });

  it('reads records back in order', async () => {
    const file = await journalWith([encodeRecord([unit(1)]), encodeRecord([unit(2), { domain: '1', xml: null }])]);
    try {
      const j = await readJournal(file, 1 << 20);
      assert.deepEqual(j, { records: [[unit(1)], [unit(2), { domain: '1', xml: null }]], tornBytes: 0 });
    } finally {
      await cleanup(file);
    }
  });

  it('drops a torn last record, whatever byte it was cut at', async () => {
    const last = encodeRecord([unit(3)]);
    for (const cut of [1, 5, 20, last.length - 1]) {
      const file = await journalWith([encodeRecord([unit(1)])], last.subarray(0, cut));
      try {
        const j = await readJournal(file, 1 << 20);
        assert.deepEqual(j, { records: [[unit(1)]], tornBytes: cut }, `cut at ${cut}`);
      } finally {
        await cleanup(file);
      }
    }
  });

  it('refuses a damaged record that good records follow, naming it', async () => {
    const bad = encodeRecord([unit(2)]);
    bad[bad.length - 5] ^= 0x20;
    const file = await journalWith([encodeRecord([unit(1)]), bad, encodeRecord([unit(3)])]);
    try {
      await assert.rejects(readJournal(file, 1 << 20), (e: Error) => e instanceof StateFileError && /record 2 .* damaged \(checksum mismatch\)/.test(e.message));
    } finally {
      await cleanup(file);
    }
  });

  it('refuses what is not a journal, units of unknown shape, and journals over the limit', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-journal-'));
    try {
      const file = path.join(dir, 'j');
      await fs.writeFile(file, '<qubes/>\n and more text than a header');
      await assert.rejects(readJournal(file, 1 << 20), /not a qubes-storage state journal/);
      // a well-framed record whose unit names no known section
      const odd = encodeRecord([{ section: '../../etc', xml: '<x/>' } as unknown as JournalUnit]);
      await fs.writeFile(file, Buffer.concat([Buffer.from(JOURNAL_HEADER), odd]));
      await assert.rejects(readJournal(file, 1 << 20), /record 1: unknown section/);
      await fs.writeFile(file, Buffer.concat([Buffer.from(JOURNAL_HEADER), encodeRecord([unit(1)])]));
      await assert.rejects(readJournal(file, 40), /more than the limit of 40/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('an App refuses to start from a journal whose state file is gone', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-journal-'));
    try {
      await fs.writeFile(path.join(dir, 'qubes.xml.journal'), Buffer.concat([Buffer.from(JOURNAL_HEADER), encodeRecord([unit(1)])]));
      await assert.rejects(openTestApp(dir, false), /a state journal without its state file/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
