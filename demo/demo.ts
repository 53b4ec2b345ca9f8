// A short tour of the storage core on a temporary directory: a pool, a
// template and an AppVM, start, write, stop, revisions, revert, usage, remove.
// Runs without root; on a filesystem without reflink it uses sparse copies.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileReflinkDriver } from '../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../src/drivers/file-reflink/pool.js';
import { reflinkSupported } from '../src/files/files.js';
import { DomainStorage } from '../src/storage/domain-storage.js';
import { defaultVolumeConfigs } from '../src/storage/volume-sets.js';

const MiB = 1024 * 1024;
const say = (s: string) => process.stdout.write(`${s}\n`);
const show = (s: string) => process.stdout.write(`    ${s}\n`);

async function main(): Promise<void> {
  const base = await fs.mkdtemp(path.join(process.env['QUBES_BASE_DIR'] ?? os.tmpdir(), 'qubes-storage-demo-'));
  try {
    const dir = path.join(base, 'pool');
    await fs.mkdir(dir);
    const reflink = await reflinkSupported(dir);
    say(`# pool "demo" (file-reflink) in ${dir}`);
    if (!reflink) say('  note: this filesystem has no reflink; copies will be sparse (setup_check=False)');
    const pool = fileReflinkDriver.createPool('demo', {
      dir_path: dir, setup_check: reflink, revisions_to_keep: 2, ephemeral_volatile: false,
    }) as FileReflinkPool;
    await pool.setup();
    const pools = () => pool;
    const sizes = { root: 256 * MiB, private: 128 * MiB };
    const p = { root: 'demo', private: 'demo', volatile: 'demo' };

    say('# create TemplateVM "fedora" and AppVM "work" based on it');
    const tpl = DomainStorage.init({ domain: { name: 'fedora', dirPrefix: 'vm-templates' }, volumes: defaultVolumeConfigs('TemplateVM', p, sizes) }, pools);
    await tpl.create();
    const work = DomainStorage.init({ domain: { name: 'work', dirPrefix: 'appvms' }, volumes: defaultVolumeConfigs('AppVM', p, sizes), template: tpl }, pools);
    await work.create();
    for (const v of await pool.listVolumes()) show(v);

    say('# start "work", write into its private volume through its path, stop');
    await work.start();
    const priv = work.get('private');
    show(`private is at ${await priv.path()} while running`);
    await fs.writeFile(await priv.path(), 'hello from work, first version\n', { flag: 'r+' });
    await work.stop();
    await work.start();
    await fs.writeFile(await priv.path(), 'hello from work, SECOND version\n', { flag: 'r+' });
    await work.stop();

    say('# revisions of work:private (oldest first)');
    for (const r of await priv.revisions()) show(`${r.id}  ${r.time}`);
    const head = async () => (await fs.readFile(await priv.path())).subarray(0, 32).toString().trim();
    show(`current data: "${await head()}"`);

    say('# revert work:private to the newest revision');
    await priv.revert();
    show(`current data: "${await head()}"`);
    show(`revisions now: ${(await priv.revisions()).map((r) => r.id).join(', ')} (the revert can be undone)`);

    say('# volume info and pool usage');
    const info = await priv.info();
    show(`size=${info.size} usage=${info.usage} revisions_to_keep=${info.revisions_to_keep} path=${info.path}`);
    const u = await pool.usageDetails();
    show(`pool data_usage=${u['data_usage']} data_size=${u['data_size']} (${((100 * u['data_usage']!) / u['data_size']!).toFixed(1)}%)`);

    say('# remove both domains');
    await work.remove();
    await tpl.remove();
    show(`volumes left: ${(await pool.listVolumes()).length}`);
    say('done');
  } finally {
    await fs.rm(base, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
