/**
 * One scripted session of the tools, run twice: embedded (no daemon: each
 * tool opens the state itself) and against a running qubesd. Every step's
 * full stdout, stderr and exit code is compared with the same expected text
 * for both transports ($BASE stands for the temporary base directory).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { normalize, run, startDaemon, tempBase, toolEnv, type Daemon } from './helpers.js';

interface Step {
  readonly cmd: string;
  readonly out?: string;
  readonly err?: string;
  readonly code?: number;
  /** Extra normalization of stdout (numbers that depend on the host filesystem). */
  readonly norm?: (s: string) => string;
  /** Runs before the command (e.g. writing into a volume through its path). */
  readonly before?: (base: string) => Promise<void>;
}

const SPARSE_NOTE = /^qvm-[a-z]+: note: the filesystem of .* cannot make reflink copies.*\n/m;
const hostNumbers = (s: string) => s.replace(/^(size|usage)( +)\d+$/gm, '$1$2N');
const usageNumbers = (s: string) => s.replace(/\d+(\.\d)? (B|KiB|MiB|GiB|TiB|PiB)/g, 'X').replace(/\d+\.\d%/g, 'P%').replace(/ +/g, ' ');

function t(strings: TemplateStringsArray): string {
  // Expected text blocks: drop the first newline, keep the rest verbatim.
  return strings.raw.join('').replace(/^\n/, '');
}

const STEPS: Step[] = [
  // A new state: the default pool and Qubes' kernel pool.
  { cmd: 'qvm-pool', out: t`
NAME          DRIVER
default       file-reflink
linux-kernel  linux-kernel
` },
  { cmd: 'qvm-pool add p2 file-reflink -o dir_path=$BASE/p2 -o setup_check=False,revisions_to_keep=2' },
  { cmd: 'qvm-pool -l', out: t`
NAME          DRIVER
default       file-reflink
linux-kernel  linux-kernel
p2            file-reflink
` },
  { cmd: 'qvm-pool info p2', norm: hostNumbers, out: t`
name                p2
dir_path            $BASE/p2
driver              file-reflink
ephemeral_volatile  False
revisions_to_keep   2
setup_check         False
size                N
usage               N
` },
  { cmd: 'qvm-pool set p2 -o dir_path=/x', code: 1, err: 'qvm-pool: error: Setting option dir_path is not supported for pool p2\n' },
  { cmd: 'qvm-pool -s p2 -o revisions_to_keep=3' },
  { cmd: 'qvm-pool -i nosuch', code: 1, err: "qvm-pool: error: no such pool: 'nosuch'\n" },
  { cmd: 'qvm-create --class TemplateVM --label black -Pp2 tpl' },
  { cmd: 'qvm-create --template tpl --label red work' },
  { cmd: 'qvm-create -P p2 --pool root=p2 --label red w2', code: 2, err: 'qvm-create: error: -P and --pool cannot be used together (see qvm-create --help)\n' },
  { cmd: 'qvm-create --template nosuch --label red w3', code: 1, err: "qvm-create: error: no such domain: 'nosuch' (given as --template)\n" },
  { cmd: 'qvm-create --label purple --pool private=nopool w4', code: 1, err: "qvm-create: error: no such pool: 'nopool'\n" },
  { cmd: 'qvm-ls', out: t`
NAME  STATE    CLASS       LABEL  TEMPLATE  NETVM  POOL
dom0  Running  AdminVM     black  -         -      -
tpl   Halted   TemplateVM  black  -         -      p2
work  Halted   AppVM       red    tpl       -      default
` },
  { cmd: 'qvm-volume list', out: t`
POOL:VOLUME                   VMNAME  VOLUME_NAME  REVERT_POSSIBLE
default:appvms/work/private   work    private      No
default:appvms/work/volatile  work    volatile     No
linux-kernel:                 tpl     kernel       No
p2:appvms/work/root           work    root         No
p2:vm-templates/tpl/private   tpl     private      No
p2:vm-templates/tpl/root      tpl     root         No
p2:vm-templates/tpl/volatile  tpl     volatile     No
` },
  { cmd: 'qvm-volume info work:private', out: t`
pool               default
vid                appvms/work/private
rw                 True
source
save_on_stop       True
snap_on_start      False
size               2147483648
usage              0
revisions_to_keep  1
ephemeral          False
is_outdated        False
List of available revisions (for revert): none
` },
  { cmd: 'qvm-volume resize work:private 3Gi' },
  { cmd: 'qvm-volume resize work:private 1G', code: 1, err: 'qvm-volume: error: shrinking work:private from 3221225472 to 1000000000 bytes would lose data; refused without -f\n' },
  { cmd: 'qvm-volume resize work:private 2x', code: 2, err: "qvm-volume: error: invalid size '2x': give bytes, or a number with a suffix (any case): K M G T (x1000, also KB...), Ki Mi Gi Ti (x1024, also KiB...); decimals allowed (1.5G) (see qvm-volume --help)\n" },
  { cmd: 'qvm-volume info work:size', code: 1, err: "qvm-volume: error: no such volume: 'work:size' (work has root, private, volatile, kernel)\n" },
  { cmd: 'qvm-volume info nosuch:private', code: 1, err: "qvm-volume: error: no such domain: 'nosuch'\n" },
  { cmd: 'qvm-volume info work:private size', out: '3221225472\n' },
  { cmd: 'qvm-start work' },
  { cmd: 'qvm-start work', code: 1, err: 'qvm-start: error: domain work is already running\n' },
  { cmd: 'qvm-ls --running', out: t`
NAME  STATE    CLASS    LABEL  TEMPLATE  NETVM  POOL
dom0  Running  AdminVM  black  -         -      -
work  Running  AppVM    red    tpl       -      default
` },
  { cmd: 'qvm-volume info work:private path', out: '$BASE/pools/default/appvms/work/private-dirty.img\n' },
  {
    cmd: 'qvm-shutdown --wait work',
    before: async (base) => {
      const fh = await fs.open(path.join(base, 'pools/default/appvms/work/private-dirty.img'), 'r+');
      await fh.write(Buffer.alloc(65536, 0x61), 0, 65536, 0);
      await fh.close();
    },
  },
  { cmd: 'qvm-volume info work:private', out: t`
pool               default
vid                appvms/work/private
rw                 True
source
save_on_stop       True
snap_on_start      False
size               3221225472
usage              65536
revisions_to_keep  1
ephemeral          False
is_outdated        False
List of available revisions (for revert):
  1
` },
  { cmd: 'qvm-volume revert work:private 7', code: 1, err: "qvm-volume: error: volume work:private has no revision '7' (available: 1)\n" },
  { cmd: 'qvm-volume revert work:private' },
  { cmd: 'qvm-volume info work:private usage', out: '0\n' },
  { cmd: 'qvm-volume info work:private revisions', out: '2\n' },
  // A shrink with -f: the daemon (or the embedded App) cuts, and the data before the cut is the newest revision.
  { cmd: 'qvm-volume resize -f work:private 1G' },
  { cmd: 'qvm-volume info work:private size', out: '1000000000\n' },
  { cmd: 'qvm-volume info work:private revisions', out: '3\n' },
  { cmd: 'qvm-volume revert work:private' },
  { cmd: 'qvm-volume info work:private size', out: '3221225472\n' },
  { cmd: 'qvm-volume config work:private revisions_to_keep -1' },
  { cmd: 'qvm-volume info work:private revisions_to_keep', out: '-1\n' },
  { cmd: 'qvm-volume info work:root', out: t`
pool               p2
vid                appvms/work/root
rw                 True
source             vm-templates/tpl/root
save_on_stop       False
snap_on_start      True
size               10737418240
usage              0
revisions_to_keep  3
ephemeral          False
is_outdated        False
List of available revisions (for revert): none
` },
  { cmd: 'qvm-prefs work label', out: 'red\n' },
  { cmd: 'qvm-prefs work label blue' },
  { cmd: 'qvm-prefs work nosuch', code: 1, err: "qvm-prefs: error: domain work has no property 'nosuch'\n" },
  // QubesPropertyValueError from the daemon (Qubes' class): one clean line, exit 1.
  { cmd: 'qvm-prefs work netvm ghost', code: 1, err: "qvm-prefs: error: no such domain: 'ghost'\n" },
  { cmd: 'qvm-clone -P p2 work work2' },
  { cmd: 'qvm-ls work work2', out: t`
NAME   STATE   CLASS  LABEL  TEMPLATE  NETVM  POOL
work   Halted  AppVM  blue   tpl       -      default
work2  Halted  AppVM  blue   tpl       -      p2
` },
  { cmd: 'qvm-volume list -p p2 --exclude tpl', out: t`
POOL:VOLUME               VMNAME  VOLUME_NAME  REVERT_POSSIBLE
p2:appvms/work/root       work    root         No
p2:appvms/work2/private   work2   private      Yes
p2:appvms/work2/root      work2   root         No
p2:appvms/work2/volatile  work2   volatile     No
` },
  {
    cmd: 'qvm-volume clone work2:private work:private',
    code: 1,
    err: t`
This replaces the data of work:private with a copy of work2:private (3.0 GiB). Continue? [y/N]
qvm-volume: error: stdin is not a terminal, so nobody can answer: taking that as "no" (use -f to skip the question); nothing changed
`,
  },
  { cmd: 'qvm-volume clone -f work2:private work:private' },
  // revisions_to_keep -1: the data replaced is not kept, and neither is the older revision.
  { cmd: 'qvm-volume info work:private revisions', out: '' },
  { cmd: 'qvm-pool usage --threshold 100 p2', norm: usageNumbers, out: t`
POOL USED SIZE USE%
p2 X X P%
` },
  { cmd: 'qvm-pool rm p2', code: 1, err: 'qvm-pool: error: pool p2 is in use by: tpl:root, tpl:private, tpl:volatile, work:root, work2:root, work2:private, work2:volatile\n' },
  {
    cmd: 'qvm-remove tpl',
    code: 1,
    err: t`
This will completely remove these domains and all their data:
  tpl
Are you sure? [y/N]
qvm-remove: error: stdin is not a terminal, so nobody can answer: taking that as "no" (use -f to skip the question); nothing removed
`,
  },
  { cmd: 'qvm-remove -f tpl', code: 1, err: 'qvm-remove: error: tpl: domain tpl is in use by: work (template), work2 (template)\n' },
  { cmd: 'qvm-remove -f work work2 tpl' },
  { cmd: 'qvm-pool remove p2' },
  { cmd: 'qvm-ls --format json', out: t`
[
  {
    "name": "dom0",
    "state": "Running",
    "class": "AdminVM",
    "label": "black",
    "template": null,
    "netvm": null,
    "pool": null
  }
]
` },
];

async function session(base: string, socket: string | undefined): Promise<void> {
  const env = toolEnv(base, socket);
  let sparseNotes = 0;
  for (const step of STEPS) {
    await step.before?.(base);
    const args = step.cmd.split(' ').map((a) => a.split('$BASE').join(base));
    const r = await run(args[0]!, args.slice(1), env);
    let err = normalize(r.stderr, base);
    if (SPARSE_NOTE.test(err)) {
      sparseNotes++;
      err = err.replace(SPARSE_NOTE, '');
    }
    const out = (step.norm ?? ((s: string) => s))(normalize(r.stdout, base));
    const expectErr = step.err ?? '';
    const got = { out, err, code: r.code };
    assert.deepEqual(got, { out: step.out ?? '', err: expectErr, code: step.code ?? 0 }, `step: ${step.cmd}`);
  }
  // Embedded, the first tool made the default pool and said so (when copies are sparse); never twice.
  assert.ok(sparseNotes <= 1, `the sparse-copy notice was printed ${sparseNotes} times`);
}

describe('a scripted session gives the same output on both transports', () => {
  it('embedded (no daemon)', async () => {
    const base = await tempBase();
    try {
      await session(base, undefined);
      // The embedded tools hold no lock once they are done.
      await assert.rejects(fs.stat(path.join(base, 'qubes.xml.lock')), { code: 'ENOENT' });
    } finally {
      await fs.rm(base, { recursive: true, force: true });
    }
  });

  describe('against qubesd', () => {
    let base: string;
    let daemon: Daemon;
    before(async () => {
      base = await tempBase();
      daemon = await startDaemon(base);
    });
    after(async () => {
      await daemon?.stop();
      await fs.rm(base, { recursive: true, force: true });
    });
    it('socket', async () => {
      await session(base, daemon.socket);
      // Finding the daemon must not look like a faulty client in its log.
      assert.doesNotMatch(daemon.log(), /dropped connection/);
    });
  });
});
