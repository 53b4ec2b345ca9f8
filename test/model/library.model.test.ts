// Model-based tests of the storage library (fast-check): random sequences of
// start, write, stop, resize, revert and import on a template and two AppVMs
// over file-reflink, compared after every step with the model; one command
// runs sessions of both AppVMs concurrently.
import { it } from 'node:test';
import * as fs from 'node:fs/promises';
import fc from 'fast-check';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB, readAt, writeAt } from '../helpers/data.js';
import { domain, makePool } from '../helpers/reflink-scenario.js';
import type { DomainStorage } from '../../src/storage/domain-storage.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import { REVISIONS_TO_KEEP, TAG_BYTES, newModel, tagBytes, tagOf } from './volume-model.js';
import { VMS, commands, type Subject, type VmName } from './commands.js';

const RUNS = Number(process.env['QS_MODEL_RUNS'] ?? 25);
const read = async (file: string) => tagOf(await readAt(file, 0, TAG_BYTES));

function librarySubject(tpl: DomainStorage, vms: Record<VmName, DomainStorage>): Subject {
  const priv = (n: VmName) => vms[n].get('private') as FileReflinkVolume;
  return {
    start: (n) => vms[n].start(),
    stop: (n) => vms[n].stop(),
    write: async (n, tag) => writeAt(await priv(n).path(), 0, tagBytes(tag)),
    async templateSession(tag) {
      await tpl.start();
      await writeAt(await tpl.get('root').path(), 0, tagBytes(tag));
      await tpl.stop();
    },
    resize: (n, size) => priv(n).resize(size),
    revert: (n) => priv(n).revert(),
    async importData(n, tag, size) {
      const p = await priv(n).importData(size);
      await writeAt(p, 0, tagBytes(tag));
      await priv(n).importDataEnd(true);
    },
    committed: (n) => read(priv(n).files.clean),
    templateRoot: () => read((tpl.get('root') as FileReflinkVolume).files.clean),
    async revisions(n) {
      const revs = await priv(n).revisions();
      const tags = [];
      for (const r of revs) tags.push(await read(`${priv(n).files.clean}.${r.id}@${r.time}`));
      return { count: revs.length, tags };
    },
    async size(n) {
      const recorded = priv(n).size;
      const actual = (await fs.stat(priv(n).files.clean)).size;
      if (recorded !== actual) throw new Error(`${n}: recorded size ${recorded}, image ${actual}`);
      return recorded;
    },
    async running(n) {
      const root = vms[n].get('root');
      return {
        dirty: await priv(n).isDirty(),
        working: await read(await priv(n).path()),
        root: await read(await root.path()),
        outdated: await root.isOutdated(),
      };
    },
    isDirty: (n) => priv(n).isDirty(),
  };
}

describeEachFs('model-based: storage library', (tfs, ctx) => {
  it(`${RUNS} random sequences match the model of volume semantics`, async (t) => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.commands(commands(), { maxCommands: 25 }), async (cmds) => {
        const dir = await ctx.tempDir('model');
        const o = { setupCheck: tfs.reflink, revisionsToKeep: REVISIONS_TO_KEEP, rootSize: 2 * MiB, privateSize: 2 * MiB };
        const pool = makePool(dir, o);
        await pool.setup();
        const tpl = domain(pool, 'tpl', 'TemplateVM', o);
        await tpl.create();
        const vms = { a: domain(pool, 'a', 'AppVM', o, tpl), b: domain(pool, 'b', 'AppVM', o, tpl) };
        for (const n of VMS) await vms[n].create();
        try {
          await fc.asyncModelRun(() => ({ model: newModel([...VMS], 2 * MiB), real: librarySubject(tpl, vms) }), cmds);
        } finally {
          for (const n of VMS) await vms[n].stop().catch(() => undefined);
          await fs.rm(dir, { recursive: true, force: true });
        }
        runs++;
      }),
      { numRuns: RUNS, seed: Number(process.env['QS_MODEL_SEED'] ?? 42), endOnFailure: true },
    );
    t.diagnostic(`${runs} runs of up to 25 commands`);
  });
});
