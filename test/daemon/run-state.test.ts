// Power state without a hypervisor: recorded beside the state, restored by
// the next runtime, forgotten after a reboot.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { describeEachFs } from '../helpers/filesystems.js';
import { openRuntime } from '../../src/daemon/runtime.js';
import { RUN_STATE_FILE } from '../../src/runtime/bookkeeping.js';
import { MiB } from '../helpers/data.js';

describeEachFs('power state across runtimes', (tfs, ctx) => {
  it('a started domain runs for the next runtime, until a reboot', async () => {
    const dir = await ctx.tempDir('power');
    const open = () => openRuntime({ baseDir: dir, storageConf: null, nodeModules: [], sizes: { root: 4 * MiB, private: 2 * MiB } });
    let rt = await open();
    await rt.app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: tfs.reflink });
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.start('tpl');
    await rt.close();

    rt = await open();
    assert.equal(rt.app.domain('tpl').powerState, 'Running', 'still running for the next runtime');
    await rt.close();

    // A reboot: the recorded boot id no longer matches, so nothing runs.
    const file = path.join(dir, RUN_STATE_FILE);
    const text = await fs.readFile(file, 'utf8');
    assert.match(text, /^boot \S+\ntpl [0-9a-f-]{36}\n$/);
    await fs.writeFile(file, text.replace(/^boot \S+/, 'boot 00000000-dead-beef-0000-000000000000'));
    rt = await open();
    assert.equal(rt.app.domain('tpl').powerState, 'Halted', 'halted after a reboot');
    // ... and its next start picks up what it had not committed (the crash contract).
    assert.equal(await rt.app.domain('tpl').storage.get('root').isDirty(), true);
    await rt.app.start('tpl');
    await rt.app.shutdown('tpl');
    assert.equal(await rt.app.domain('tpl').storage.get('root').isDirty(), false);
    await rt.close();
  });
});
