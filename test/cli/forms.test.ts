/**
 * Every spelling the tools accept for the same thing gives the same result:
 * sub-command aliases, the R4.0 flag forms of qvm-pool, `-Pfoo` / `-P foo` /
 * `--opt=value` / `--opt value`, repeated options, a negative number as a
 * value, `--` ending the options; and qubesd parses its options with the
 * same parser. Run as the tools are run (child processes, embedded).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { qubesdEnv, spawnQubesd } from '../daemon/helpers.js';
import { QUBESD, run, tempBase, toolEnv, type Result } from './helpers.js';
import { runNode, type NodeRun } from '../helpers/process.js';

describe('the same command, every way it can be written', () => {
  let base = '';
  let env: NodeJS.ProcessEnv = {};
  before(async () => {
    base = await tempBase('qs-forms-');
    env = toolEnv(base);
  });
  after(async () => {
    if (base) await fs.rm(base, { recursive: true, force: true });
  });

  async function ok(line: string): Promise<Result> {
    const [tool, ...args] = line.split(' ').map((w) => w.split('$BASE').join(base));
    const r = await run(tool!, args, env);
    assert.equal(r.code, 0, `${line}: exit ${r.code}\n${r.stderr}`);
    return r;
  }

  /** Each form's stdout, which must all be the first's (and not empty); `norm` hides what changes between runs. */
  async function same(forms: readonly string[], norm: (s: string) => string = (s) => s): Promise<string> {
    const first = norm((await ok(forms[0]!)).stdout);
    assert.notEqual(first, '', forms[0]);
    for (const f of forms.slice(1)) assert.equal(norm((await ok(f)).stdout), first, f);
    return first;
  }
  /** A pool's size and usage are the host filesystem's, which other processes change. */
  const hostNumbers = (s: string) => s.replace(/^(size|usage)( +)\d+$/gm, '$1$2N');

  const info = async (pool: string, key: string): Promise<string | undefined> =>
    /^(\S+) +(.*)$/m.exec((await ok(`qvm-pool info ${pool}`)).stdout.split('\n').find((l) => l.startsWith(`${key} `)) ?? '')?.[2];

  it('qvm-pool add: sub-command, R4.0 flags, -o repeated, comma-separated, attached', async () => {
    await ok('qvm-pool add p1 file-reflink -o dir_path=$BASE/p1 -o setup_check=False');
    await ok('qvm-pool --add p2 file-reflink -o dir_path=$BASE/p2,setup_check=False');
    await ok('qvm-pool -a p3 file-reflink --option=dir_path=$BASE/p3 -osetup_check=False');
    await ok('qvm-pool a p4 file-reflink --option dir_path=$BASE/p4 -o setup_check=False');
    for (const p of ['p1', 'p2', 'p3', 'p4']) {
      assert.equal(await info(p, 'dir_path'), path.join(base, p), p);
      assert.equal(await info(p, 'setup_check'), 'False', p);
    }
  });

  it('qvm-pool list: no command, list, ls, l, -l, --list', async () => {
    const out = await same(['qvm-pool', 'qvm-pool list', 'qvm-pool ls', 'qvm-pool l', 'qvm-pool -l', 'qvm-pool --list']);
    assert.match(out, /^p4 +file-reflink$/m);
    await same(['qvm-pool list --format json', 'qvm-pool ls --format=json', 'qvm-pool -l --format json']);
  });

  it('qvm-pool info: info, i, -i, --info, --info=, -iPOOL', async () => {
    const out = await same(['qvm-pool info p1', 'qvm-pool i p1', 'qvm-pool -i p1', 'qvm-pool --info p1', 'qvm-pool --info=p1', 'qvm-pool -ip1'], hostNumbers);
    assert.match(out, /^usage +N$/m);
  });

  it('qvm-pool drivers: drivers, d, --help-drivers', async () => {
    await same(['qvm-pool drivers', 'qvm-pool d', 'qvm-pool --help-drivers']);
  });

  it('qvm-pool set: set, s, -s, --set=', async () => {
    const forms: [string, string][] = [
      ['qvm-pool set p1 -o revisions_to_keep=3', 'p1'],
      ['qvm-pool s p2 -o revisions_to_keep=3', 'p2'],
      ['qvm-pool -s p3 -o revisions_to_keep=3', 'p3'],
      ['qvm-pool --set=p4 --option=revisions_to_keep=3', 'p4'],
    ];
    for (const [line, pool] of forms) {
      await ok(line);
      assert.equal(await info(pool, 'revisions_to_keep'), '3', line);
    }
  });

  it('qvm-create: -Pfoo, -P foo, --pool VOLUME=POOL repeated, --opt=value', async () => {
    await ok('qvm-create --class=TemplateVM --label black -Pp1 t1');
    await ok('qvm-create -C TemplateVM -l black -P p2 t2');
    await ok('qvm-create --class TemplateVM --label=black --pool root=p3 --pool=private=p4 t3');
    const pool = async (vv: string) => (await ok(`qvm-volume info ${vv} pool`)).stdout;
    assert.equal(await pool('t1:root'), 'p1\n');
    assert.equal(await pool('t1:private'), 'p1\n');
    assert.equal(await pool('t2:private'), 'p2\n');
    assert.equal(await pool('t3:root'), 'p3\n');
    assert.equal(await pool('t3:private'), 'p4\n');
  });

  it('qvm-volume list and info: aliases, -p POOL / -pPOOL / --pool=POOL', async () => {
    await same(['qvm-volume', 'qvm-volume list', 'qvm-volume ls', 'qvm-volume l']);
    const inP1 = await same(['qvm-volume list -p p1', 'qvm-volume ls -pp1', 'qvm-volume list --pool=p1', 'qvm-volume l --pool p1']);
    assert.doesNotMatch(inP1, /^p2:/m);
    await same(['qvm-volume info t1:private', 'qvm-volume i t1:private']);
  });

  it('qvm-volume config: config, c, set, s; a negative number is a value; -- ends the options', async () => {
    const forms: [string, string][] = [
      ['qvm-volume config t1:private revisions_to_keep -1', '-1'],
      ['qvm-volume c t1:private revisions_to_keep 2', '2'],
      ['qvm-volume set t1:private revisions_to_keep 1', '1'],
      ['qvm-volume s t1:private revisions_to_keep 0', '0'],
      ['qvm-volume config -- t1:private revisions_to_keep -1', '-1'],
    ];
    for (const [line, want] of forms) {
      await ok(line);
      assert.equal((await ok('qvm-volume info t1:private revisions_to_keep')).stdout, `${want}\n`, line);
    }
  });

  it('qvm-pool remove: remove, rm, r, -r, --remove=', async () => {
    for (const p of ['e1', 'e2', 'e3', 'e4', 'e5']) await ok(`qvm-pool add ${p} file-reflink -o dir_path=$BASE/${p} -o setup_check=False`);
    for (const line of ['qvm-pool remove e1', 'qvm-pool rm e2', 'qvm-pool r e3', 'qvm-pool -r e4', 'qvm-pool --remove=e5']) await ok(line);
    assert.doesNotMatch((await ok('qvm-pool')).stdout, /^e\d /m);
  });
});

describe('qubesd parses its options with the same parser', () => {
  it('--help lists every option; mistakes exit 2 with the usage line', async () => {
    const help = await runQubesd(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: qubesd \[-h\] \[--socket PATH\] \[--socket-group GROUP\] \[--base-dir DIR\]/);
    for (const o of ['--socket PATH', '--socket-group GROUP', '--base-dir DIR', '--policy FILE', '--storage-conf FILE', '--init', '--debug'])
      assert.match(help.stdout, new RegExp(`^  ${o} `, 'm'), o);
    assert.match(help.stdout, /^ {2}--internal-socket PATH\n {24}the internal socket/m);
    const bad: [string[], RegExp][] = [
      [['--init=1'], /^qubesd: error: option --init takes no value\nusage: qubesd /],
      [['--socket'], /^qubesd: error: option --socket expects a value \(PATH\)\nusage: qubesd /],
      [['stray'], /^qubesd: error: unrecognized arguments: stray\nusage: qubesd /],
      [['--bogus'], /^qubesd: error: unrecognized argument: --bogus\nusage: qubesd /],
    ];
    for (const [args, re] of bad) {
      const r = await runQubesd(args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.stderr, re);
    }
  });

  it('--opt=value starts it where asked', async () => {
    const base = await tempBase('qs-forms-d-');
    const d = spawnQubesd([`--base-dir=${base}`, `--socket=${base}/s`, `--storage-conf=${base}/storage.conf`]);
    try {
      await d.waitFor(`qubesd: listening on ${base}/s\n`);
      assert.ok((await fs.stat(path.join(base, 'qubes.xml'))).isFile());
    } finally {
      if (d.child.exitCode === null) d.child.kill('SIGTERM');
      await d.exited;
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});

function runQubesd(args: readonly string[]): Promise<NodeRun> {
  return runNode(QUBESD, args, qubesdEnv({ PATH: process.env['PATH'] }));
}
