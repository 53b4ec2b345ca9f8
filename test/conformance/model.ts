// Model-based test of a driver (fast-check): random sequences of start,
// write, stop, resize, revert and import on a template root and two AppVMs
// (private origin volumes, root snapshots of the template), compared after
// every step with the model of volume-model.ts; one command runs sessions of
// both AppVMs at once. The committed data is read through export, as a
// backup or clone reads it, so the same test fits every driver.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import fc from 'fast-check';
import type { Pool } from '../../src/storage/pool.js';
import type { Volume } from '../../src/storage/volume.js';
import { MiB, readAt, writeAt } from '../helpers/data.js';
import { TAG_BYTES, newModel, tagBytes, tagOf } from './volume-model.js';
import { VMS, commands, type Subject, type VmName } from './model-commands.js';
import type { ConformanceTarget } from './target.js';
import { volumesOf } from './volumes.js';

interface ModelVolumes {
  tpl: Volume;
  vms: Record<VmName, { root: Volume; priv: Volume }>;
}

async function makeVolumes(pool: Pool, size: number): Promise<ModelVolumes> {
  const tpl = volumesOf(pool, 'tpl').templateRoot({ size });
  await tpl.create();
  const vms = {} as ModelVolumes['vms'];
  for (const n of VMS) {
    const d = volumesOf(pool, n);
    vms[n] = { root: d.snapshot(tpl), priv: d.origin({ size }) };
    await vms[n].root.create();
    await vms[n].priv.create();
  }
  return { tpl, vms };
}

function subject(target: ConformanceTarget, m: ModelVolumes): Subject {
  const io = target.io;
  const read = async (p: string) => tagOf(await io.read(p, 0, TAG_BYTES));
  const exported = async (v: Volume): Promise<{ tag: string; size: number }> => {
    const p = await v.export();
    try {
      return { tag: tagOf(await readAt(p, 0, TAG_BYTES)), size: (await fs.stat(p)).size };
    } finally {
      await v.exportEnd(p);
    }
  };
  const priv = (n: VmName) => m.vms[n].priv;
  return {
    async start(n) {
      await m.vms[n].root.start();
      await priv(n).start();
    },
    async stop(n) {
      await priv(n).stop();
      await m.vms[n].root.stop();
    },
    write: async (n, tag) => io.write(await priv(n).path(), 0, tagBytes(tag)),
    async templateSession(tag) {
      await m.tpl.start();
      await io.write(await m.tpl.path(), 0, tagBytes(tag));
      await m.tpl.stop();
    },
    resize: (n, size) => priv(n).resize(size),
    revert: (n) => priv(n).revert(),
    async importData(n, tag, size) {
      const p = await priv(n).importData(size);
      await writeAt(p, 0, tagBytes(tag));
      await priv(n).importDataEnd(true);
    },
    committed: async (n) => (await exported(priv(n))).tag,
    templateRoot: async () => (await exported(m.tpl)).tag,
    async revisions(n) {
      const revs = await priv(n).revisions();
      if (!target.revisionData) return { count: revs.length, tags: null };
      const tags = [];
      for (const r of revs) tags.push(tagOf(await target.revisionData(priv(n), r, TAG_BYTES)));
      return { count: revs.length, tags };
    },
    async size(n) {
      // The recorded size and the data's own size agree.
      const recorded = priv(n).size;
      const { size } = await exported(priv(n));
      assert.equal(size, recorded, `${n}: recorded size ${recorded}, exported data ${size}`);
      return recorded;
    },
    async running(n) {
      return {
        dirty: await priv(n).isDirty(),
        working: await read(await priv(n).path()),
        root: await read(await m.vms[n].root.path()),
        outdated: await m.vms[n].root.isOutdated(),
      };
    },
    isDirty: (n) => priv(n).isDirty(),
  };
}

export function describeModel(target: ConformanceTarget, keep: number): void {
  const kinds = target.driver.capabilities.volumeKinds;
  const runs = Number(process.env['QS_MODEL_RUNS'] ?? target.modelRuns ?? 15);
  if (!kinds.includes('snapshot')) {
    it('model-based: needs origin and snapshot volumes, which the driver does not declare (their refusal is checked above)', (t) => {
      t.diagnostic(`kinds ${kinds.join(',')}`);
    });
    return;
  }
  it(`model-based: ${runs} random sequences match the model of volume semantics (revisions_to_keep ${keep})`, async (t) => {
    let done = 0;
    await fc.assert(
      fc.asyncProperty(fc.commands(commands(), { maxCommands: 25 }), async (cmds) => {
        const pool = await target.makePool({ revisions_to_keep: keep });
        await pool.setup();
        const m = await makeVolumes(pool, 2 * MiB);
        try {
          await fc.asyncModelRun(() => ({ model: newModel([...VMS], 2 * MiB, keep), real: subject(target, m) }), cmds);
        } finally {
          for (const n of VMS) {
            await m.vms[n].priv.stop().catch(() => undefined);
            await m.vms[n].root.stop().catch(() => undefined);
          }
        }
        done++;
      }),
      { numRuns: runs, seed: Number(process.env['QS_MODEL_SEED'] ?? 42), endOnFailure: true },
    );
    t.diagnostic(`${done} runs of up to 25 commands`);
  });
}
