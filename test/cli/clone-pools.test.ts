/**
 * qvm-clone and pools, the tools as child processes on a base directory on
 * each test filesystem, embedded and against a qubesd: without -P each
 * volume of the copy stays in the source's pool where that is not the
 * default pool for it (as the stock qvm-clone's clone_vm); with -P all
 * volumes that are not snapshots go to that pool, with --pool the ones named.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, it } from 'node:test';
import { describeEachFs } from '../helpers/filesystems.js';
import { MiB, pattern, sha256 } from '../helpers/data.js';
import { createHash } from 'node:crypto';
import { run, startDaemon, toolEnv, type Daemon } from './helpers.js';

const DATA = pattern(3 * MiB, 11);
const DATA_SHA = createHash('sha256').update(DATA).digest('hex');

for (const mode of ['embedded', 'qubesd'] as const)
  describeEachFs(`qvm-clone keeps the source's pools (${mode})`, (tfs, ctx) => {
    let base: string;
    let env: NodeJS.ProcessEnv;
    let daemon: Daemon | undefined;

    const tool = async (cmd: string, ...args: string[]): Promise<string> => {
      const r = await run(cmd, args, env);
      assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const poolOf = async (vmVol: string): Promise<string> => (await tool('qvm-volume', 'info', vmVol, 'pool')).trim();

    before(async () => {
      base = await ctx.tempDir('clone');
      if (mode === 'qubesd') daemon = await startDaemon(base);
      env = toolEnv(base, daemon?.socket);
      await tool('qvm-pool', 'add', 'p2', 'file-reflink', '-o', `dir_path=${path.join(base, 'p2')}`, '-o', `setup_check=${tfs.reflink ? 'True' : 'False'}`);
      await tool('qvm-create', '--class', 'TemplateVM', '--label', 'black', 'tpl');
      await tool('qvm-create', '--template', 'tpl', '--label', 'red', '--pool', 'private=p2', 'src');
      const img = path.join(base, 'in.img');
      await fs.writeFile(img, DATA);
      await tool('qvm-volume', 'import', 'src:private', img);
      await fs.unlink(img);
    });
    after(async () => {
      await daemon?.stop();
    });

    it('without -P: private stays in p2 (not its default pool), the rest in default; the data is copied', async () => {
      await tool('qvm-clone', 'src', 'dst1');
      assert.deepEqual(
        [await poolOf('dst1:root'), await poolOf('dst1:private'), await poolOf('dst1:volatile')],
        ['default', 'p2', 'default'],
      );
      const vid = (await tool('qvm-volume', 'info', 'dst1:private', 'vid')).trim();
      assert.equal(await sha256(path.join(base, 'p2', `${vid}.img`)), DATA_SHA);
      await tool('qvm-remove', '-f', 'dst1');
    });

    it('with -P default: all in default (the root, a snapshot, stays with its template)', async () => {
      await tool('qvm-clone', '-P', 'default', 'src', 'dst2');
      assert.deepEqual(
        [await poolOf('dst2:root'), await poolOf('dst2:private'), await poolOf('dst2:volatile')],
        ['default', 'default', 'default'],
      );
      await tool('qvm-remove', '-f', 'dst2');
    });

    it('--pool VOLUME=POOL: those volumes there, the others in their default pools (as the stock tool); not with -P', async () => {
      await tool('qvm-clone', '--pool', 'volatile=p2', 'src', 'dst3');
      assert.deepEqual(
        [await poolOf('dst3:root'), await poolOf('dst3:private'), await poolOf('dst3:volatile')],
        ['default', 'default', 'p2'],
      );
      await tool('qvm-remove', '-f', 'dst3');
      const both = await run('qvm-clone', ['-P', 'p2', '-p', 'private=p2', 'src', 'dst4'], env);
      assert.equal(both.code, 2, both.stderr);
      const bad = await run('qvm-clone', ['-p', 'private', 'src', 'dst4'], env);
      assert.deepEqual(bad, { stdout: '', stderr: "qvm-clone: error: --pool expects VOLUME=POOL, got 'private' (see qvm-clone --help)\n", code: 2 });
      const r = await run('qvm-volume', ['info', 'dst4:private'], env);
      assert.notEqual(r.code, 0, 'nothing was made');
    });

    it('a template: -P p2 puts every volume in p2, a clone of that copy keeps them there', async () => {
      await tool('qvm-clone', '-P', 'p2', 'tpl', 'tpl2');
      const all = async (vm: string): Promise<string[]> =>
        [await poolOf(`${vm}:root`), await poolOf(`${vm}:private`), await poolOf(`${vm}:volatile`)];
      assert.deepEqual(await all('tpl2'), ['p2', 'p2', 'p2']);
      await tool('qvm-clone', 'tpl2', 'tpl3');
      assert.deepEqual(await all('tpl3'), ['p2', 'p2', 'p2']);
      await tool('qvm-remove', '-f', 'tpl3', 'tpl2');
    });
  });
