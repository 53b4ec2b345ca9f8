// A tour of the command-line tools on the embedded default: no daemon, no
// root, a temporary base directory (QUBES_BASE_DIR). Each step runs the real
// tool as a child process and prints the command and what it printed: add a
// pool, create a template and an AppVM, start, write into the private
// volume through its path, stop, see the new revision, revert, pool usage,
// remove everything. Then, where qemu and a guest kernel are here, a real
// boot (boot.ts); elsewhere it says why it is left out.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { reflinkSupported } from '../src/files/files.js';
import { bootTour } from './boot.js';
import { say, toolRunner } from './tools.js';

const MiB = 1024 * 1024;

async function main(): Promise<number> {
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'qubes-storage-demo-'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    QUBES_BASE_DIR: base,
    // No daemon (not even one of the machine's): the tools run embedded, on BASE.
    QUBESD_SOCKET: '',
    QUBES_STORAGE_EMBEDDED: '1',
  };
  const { tool, shown } = toolRunner(env, base);

  try {
    say(`# QUBES_BASE_DIR=${base} (shown as $BASE); no daemon answers, so each tool opens the state itself`);
    say('# first use: the default pool and the kernel pool (linux-kernel, BASE/vm-kernels) are made on the spot');
    tool('qvm-pool');

    const poolDir = path.join(base, 'demo-pool');
    await fs.mkdir(poolDir);
    const reflink = await reflinkSupported(poolDir);
    say(`# a pool of our own (file-reflink; this filesystem ${reflink ? 'makes reflink copies' : 'has no reflink, so setup_check=False: sparse copies'})`);
    tool(`qvm-pool add demo file-reflink -o dir_path=${poolDir} -o setup_check=${reflink ? 'True' : 'False'} -o revisions_to_keep=2`);
    tool('qvm-pool info demo');

    say('# a template in that pool (R3.2 spelling -Pdemo), given a small root image');
    tool('qvm-create --class TemplateVM --label black -Pdemo tpl');
    const rootImg = path.join(base, 'root.img');
    await fs.writeFile(rootImg, 'a tiny root filesystem\n');
    await fs.truncate(rootImg, 64 * MiB);
    tool(`qvm-volume import tpl:root ${rootImg}`);

    say('# an AppVM on it; shrinking its 2 GiB private volume is refused, importing a 32 MiB image sets the size');
    tool('qvm-create --template tpl --label red -P demo work');
    tool('qvm-volume resize work:private 32Mi', 1);
    const privImg = path.join(base, 'private.img');
    await fs.truncate(await fs.open(privImg, 'w').then(async (fh) => (await fh.close(), privImg)), 32 * MiB);
    tool(`qvm-volume import --size 32Mi work:private ${privImg}`);
    tool('qvm-ls');
    tool('qvm-volume list work');

    say('# start it, write into its private volume through the path the driver gives, stop it');
    tool('qvm-start work');
    const p = tool('qvm-volume info work:private path').trim();
    const fh = await fs.open(p, 'r+');
    await fh.write(Buffer.from('hello from the demo\n'), 0, 20, 0);
    await fh.close();
    say(`# (wrote "hello from the demo" at the start of ${shown(p)})`);
    tool('qvm-shutdown --wait work');

    say('# stopping committed the data; the data before it is a revision to revert to');
    tool('qvm-volume info work:private');
    tool('qvm-volume revert work:private');
    tool('qvm-volume info work:private');

    say('# pool usage (exit code 3 when a pool is above --threshold)');
    tool('qvm-pool usage');

    say('# clean up');
    tool('qvm-remove -f work tpl');
    tool('qvm-pool remove demo');
    tool('qvm-ls');
  } catch (e) {
    say(`demo failed: ${(e as Error).message}`);
    return 1;
  } finally {
    await fs.rm(base, { recursive: true, force: true });
  }

  say('');
  say('# a real boot: the qemu runtime runs the domain on its volumes');
  try {
    await bootTour();
  } catch (e) {
    say(`demo failed in the real boot: ${(e as Error).message}`);
    return 1;
  }
  say('# done');
  return 0;
}

process.exitCode = await main();
