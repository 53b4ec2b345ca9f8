// Fuzzing the running daemon: mutated requests over its real socket, against
// the full method table on a real App. Every answer is a well-formed reply
// with a known error class, or a dropped connection (a framing error); the
// daemon keeps serving, no promise is left rejected, and the state file it
// saved still loads.
import { it, after } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, mutate } from './mutate.js';
import { describeEachFs } from '../helpers/filesystems.js';
import { startRig, ok, type Rig } from '../admin/methods/helpers.js';
import { rawExchange } from '../admin/helpers.js';
import { decodeReply } from '../../src/admin/protocol/reply.js';
import { encodeRequest } from '../../src/admin/protocol/header.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import * as errors from '../../src/storage/errors.js';

const N = Number(process.env['QS_FUZZ_REQUESTS'] ?? 1500);
const KNOWN = new Set(Object.keys(errors).filter((k) => /^[A-Z]/.test(k)).concat(['QubesException']));

describeEachFs('fuzz: the daemon over its socket', (tfs, ctx) => {
  let rig: Rig | undefined;
  const rejections: unknown[] = [];
  const onRejection = (e: unknown) => rejections.push(e);
  process.on('unhandledRejection', onRejection);
  after(async () => {
    process.off('unhandledRejection', onRejection);
    await rig?.stop();
  });

  it(`${N} mutated requests: documented replies only, and the daemon keeps serving`, async (t) => {
    const dir = await ctx.tempDir('fuzz');
    rig = await startRig(tfs, dir);
    await rig.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rig.rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
    const h = (method: string, dest: string, arg = '', payload = '') =>
      Buffer.from(encodeRequest({ method, arg, source: 'dom0', dest }, payload));
    const corpus = [
      h('admin.vm.List', 'dom0'),
      h('admin.vm.volume.Info', 'work', 'private'),
      h('admin.vm.volume.ListSnapshots', 'work', 'private'),
      h('admin.vm.volume.Resize', 'work', 'private', '8388608'),
      h('admin.vm.volume.Set.revisions_to_keep', 'work', 'private', '2'),
      h('admin.pool.Info', 'dom0', 'default'),
      h('admin.pool.Add', 'dom0', 'file-reflink', `name=p2\ndir_path=${dir}/p2\nsetup_check=False\n`),
      h('admin.vm.property.Get', 'work', 'label'),
      h('admin.vm.property.Set', 'work', 'label', 'blue'),
      h('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=w2 label=red'),
      h('admin.vm.CurrentState', 'work'),
      h('admin.vm.feature.Set', 'work', 'f', 'v'),
    ];
    const rng = new Rng(5);
    let dropped = 0;
    let okReplies = 0;
    let errorReplies = 0;
    for (let i = 0; i < N; i++) {
      const input = mutate(rng.pick(corpus), rng, corpus);
      const { data } = await rawExchange(rig.socketPath, input, { timeoutMs: 30_000 });
      if (data.length === 0) {
        dropped++;
        continue;
      }
      const reply = decodeReply(data);
      if (reply.kind === 'ok') okReplies++;
      else {
        errorReplies++;
        assert.ok(KNOWN.has(reply.name), `unknown error class ${reply.name}: ${reply.message}`);
        assert.notEqual(reply.name, 'QubesException', `a generic error means an unexpected exception: ${reply.message} for ${JSON.stringify(input.toString('latin1'))}`);
      }
    }
    t.diagnostic(`${N} requests: ${okReplies} ok, ${errorReplies} documented errors, ${dropped} dropped`);
    assert.match(await ok(rig.socketPath, 'admin.vm.List', 'dom0'), /^dom0 class=AdminVM state=Running/);
    assert.deepEqual(rejections, []);
    await rig.stop();
    rig = undefined;
    const rt = await openRuntime({ baseDir: dir, storageConf: null, nodeModules: [] });
    assert.ok(rt.app.findDomain('work'), 'the saved state loads');
    await rt.close();
  });
});
