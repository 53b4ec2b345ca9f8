// Model-based tests of the daemon (fast-check): the same random command
// sequences as the library's, as admin API calls over the real socket
// (admin.vm.Start/Shutdown, volume Resize/Revert/ImportWithSize/Info/
// ListSnapshots/Export), sessions of two domains running concurrently on
// separate connections, compared after every step with the model.
import { it } from 'node:test';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB, readAt, writeAt } from '../helpers/data.js';
import { startRig } from '../admin/methods/helpers.js';
import { TAG_BYTES, newModel, tagBytes, tagOf } from '../conformance/volume-model.js';
import { VMS, commands, type Subject } from '../conformance/model-commands.js';
import type { AdminClient } from '../../src/admin/client.js';

const RUNS = Number(process.env['QS_MODEL_RUNS'] ?? 15);
const read = async (file: string) => tagOf(await readAt(file, 0, TAG_BYTES));

function daemonSubject(c: AdminClient): Subject {
  const call = async (method: string, dest: string, arg = '', payload = '') => (await c.call(method, dest, arg, payload)).toString('utf8');
  const info = async (dest: string, vol: string) =>
    Object.fromEntries((await call('admin.vm.volume.Info', dest, vol)).split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  const exported = async (dest: string, vol: string) => {
    const p = await call('admin.vm.volume.Export', dest, vol);
    try {
      return await read(p);
    } finally {
      await call('admin.vm.volume.ExportEnd', dest, vol, p);
    }
  };
  return {
    start: async (n) => void (await call('admin.vm.Start', n)),
    stop: async (n) => void (await call('admin.vm.Shutdown', n)),
    write: async (n, tag) => writeAt((await info(n, 'private'))['path']!, 0, tagBytes(tag)),
    async templateSession(tag) {
      await call('admin.vm.Start', 'tpl');
      await writeAt((await info('tpl', 'root'))['path']!, 0, tagBytes(tag));
      await call('admin.vm.Shutdown', 'tpl');
    },
    resize: async (n, size) => void (await call('admin.vm.volume.Resize', n, 'private', String(size))),
    revert: async (n) => void (await call('admin.vm.volume.Revert', n, 'private')),
    async importData(n, tag, size) {
      const data = Buffer.alloc(size);
      tagBytes(tag).copy(data);
      await c.callStream('admin.vm.volume.ImportWithSize', n, 'private', Readable.from([Buffer.from(`${size}\n`), data]));
    },
    committed: (n) => exported(n, 'private'),
    templateRoot: () => exported('tpl', 'root'),
    async revisions(n) {
      const ids = (await call('admin.vm.volume.ListSnapshots', n, 'private')).split('\n').filter(Boolean);
      // The API lists ids only: each revision's data is read from its file (IMAGE.ID@TIME), for the
      // model to compare with what it must hold.
      const image = (await info(n, 'private'))['path']!.replace(/-dirty\.img$/, '.img');
      const names = await fs.readdir(path.dirname(image));
      const tags = [];
      for (const id of ids) {
        const file = names.find((f) => f.startsWith(`${path.basename(image)}.${id}@`));
        tags.push(file ? await read(path.join(path.dirname(image), file)) : `(revision ${id}: no file)`);
      }
      return { count: ids.length, tags };
    },
    size: async (n) => Number((await info(n, 'private'))['size']),
    async running(n) {
      const priv = await info(n, 'private');
      const root = await info(n, 'root');
      return {
        dirty: true,
        working: await read(priv['path']!),
        root: await read(root['path']!),
        outdated: root['is_outdated'] === undefined ? null : root['is_outdated'] === 'True',
      };
    },
    isDirty: async (n) => (await call('admin.vm.CurrentState', n)).includes('power_state=Running'),
  };
}

describeEachFs('model-based: the daemon over its socket', (tfs, ctx) => {
  it(`${RUNS} random call sequences match the model of volume semantics`, async (t) => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.commands(commands(), { maxCommands: 20 }), async (cmds) => {
        const dir = await ctx.tempDir('dmodel');
        const rig = await startRig(tfs, dir, { sizes: { root: 2 * MiB, private: 2 * MiB } });
        try {
          await rig.rt.app.setPoolOption('default', 'revisions_to_keep', 2);
          const c = rig.client;
          await c.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
          for (const n of VMS) await c.call('admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${n} label=red`);
          await fc.asyncModelRun(() => ({ model: newModel([...VMS], 2 * MiB), real: daemonSubject(c) }), cmds);
        } finally {
          await rig.stop();
          await fs.rm(dir, { recursive: true, force: true });
        }
        runs++;
      }),
      { numRuns: RUNS, seed: Number(process.env['QS_MODEL_SEED'] ?? 7), endOnFailure: true },
    );
    t.diagnostic(`${runs} runs of up to 20 commands`);
  });
});
