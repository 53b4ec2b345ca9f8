// The demo's second part: a real boot. A daemon with the qemu runtime
// (qubesd --runtime qemu) on a base directory of its own boots an AppVM on
// its volumes under qemu, twice: the guest's console lines show what it read
// (the template's root through its snapshot, its private data, an empty
// volatile) and what it wrote; between the boots the host shows the private
// volume committed with a new revision. Left out, saying why, where qemu or
// a guest kernel is not here: the kernel entry comes from the packages the
// test VM's cache holds (scripts/install-test-deps.sh fetches them, as root),
// and the demo never downloads them itself.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { QubesClient } from '../src/client/index.js';
import { findQemu, killRecordedGuests } from '../src/runtime/qemu.js';
import { say, toolRunner } from './tools.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const QUBESD = path.join(ROOT, 'dist', 'src', 'daemon', 'qubesd.js');
const MiB = 1024 * 1024;
const TEST_VM_CACHE = process.env['QS_TEST_VM_CACHE'] ?? '/var/cache/qubes-storage/test-vm';

// Run by the guest's init (scripts/guest-init.sh) from the first 64 KiB of
// private; the guest powers off when it ends. Raw disks, no filesystem:
// private's data is at 1 MiB, root's mark at 0.
const GUEST_SCRIPT = `#qs-guest-script
say() { echo "qs-guest: $*"; }
prev="$(dd if=/dev/xvdb bs=1M skip=1 count=1 2>/dev/null | head -c 64 | tr -d '\\000\\n')"
say "root reads [$(head -c 64 /dev/xvda | tr -d '\\000\\n')]"
say "private reads [$prev]"
say "volatile reads [$(head -c 64 /dev/xvdc | tr -d '\\000\\n')]"
n=$(( \${prev#boot-} + 1 ))
printf 'boot-%s' "$n" | dd of=/dev/xvdb bs=1M seek=1 conv=notrunc,fsync 2>/dev/null && say "wrote boot-$n to private"
printf 'CHANGED-BY-WORK' | dd of=/dev/xvda conv=notrunc,fsync 2>/dev/null && say "wrote CHANGED-BY-WORK to root"
printf 'scratch' | dd of=/dev/xvdc conv=notrunc,fsync 2>/dev/null && say "wrote scratch to volatile"
`;

/** Why a real boot cannot be shown here, or the guest kernel entry's directory. */
async function guestKernel(): Promise<{ why: string } | { dir: string }> {
  if (!(await findQemu())) return { why: 'no qemu-system-x86_64 here (Debian package qemu-system-x86)' };
  try {
    await fs.access(path.join(TEST_VM_CACHE, 'current'));
  } catch {
    return { why: `no guest kernel packages in ${TEST_VM_CACHE} (scripts/install-test-deps.sh fetches them, as root)` };
  }
  const out = process.getuid?.() === 0 ? [] : [path.join(os.tmpdir(), 'qs-guest-kernel')];
  try {
    const { stdout } = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'guest-kernel.sh'), ...out], { maxBuffer: 1 << 20 });
    return { dir: stdout.trim().split('\n').pop()! };
  } catch (e) {
    return { why: `scripts/guest-kernel.sh failed: ${((e as { stderr?: string }).stderr ?? String(e)).trim().split('\n')[0]}` };
  }
}

/** The real boot; false when it could not be shown (why is said), true when it was; throws when it failed. */
export async function bootTour(): Promise<boolean> {
  const kernel = await guestKernel();
  if ('why' in kernel) {
    say(`# a real boot is left out: ${kernel.why}`);
    return false;
  }
  const base = await fs.mkdtemp(path.join(os.tmpdir(), 'qubes-storage-boot-'));
  const socket = path.join(base, 'qubesd.sock');
  const { tool } = toolRunner({ PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBESD_SOCKET: socket }, base);
  let log = '';
  const daemon = spawn(process.execPath, [QUBESD, '--base-dir', base, '--socket', socket, '--runtime', 'qemu'], {
    env: { PATH: process.env['PATH'], HOME: base },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  daemon.stderr.setEncoding('utf8').on('data', (x: string) => (log += x));
  const client = QubesClient.overSocket(socket, { timeoutMs: 600_000 });
  try {
    // The kernel pool's only kernel: a new state takes it as default_kernel.
    const version = path.basename(kernel.dir);
    await fs.mkdir(path.join(base, 'vm-kernels', version), { recursive: true });
    for (const f of ['vmlinuz', 'initramfs', 'modules.img']) await fs.copyFile(path.join(kernel.dir, f), path.join(base, 'vm-kernels', version, f));
    for (const until = Date.now() + 60_000; !log.includes('listening on'); await new Promise((r) => setTimeout(r, 100)))
      if (daemon.exitCode !== null || Date.now() > until) throw new Error(`qubesd did not start:\n${log}`);

    say(`# QUBES_BASE_DIR=${base} (shown as $BASE): qubesd --runtime qemu, kernel ${version} (Debian's, with a busybox init)`);
    tool('qvm-create --class TemplateVM --label black tpl');
    const root = Buffer.alloc(2 * MiB);
    root.write('THE-TEMPLATE-ROOT');
    const img = path.join(base, 'image');
    await fs.writeFile(img, root);
    tool(`qvm-volume import tpl:root ${img}`);
    tool('qvm-create --template tpl --label red --prop memory=128 --prop vcpus=1 work');
    const priv = Buffer.alloc(2 * MiB);
    priv.write(GUEST_SCRIPT);
    await fs.writeFile(img, priv);
    say("# work's private volume holds the script its guest runs (then it powers off)");
    tool(`qvm-volume import work:private ${img}`);
    await fs.rm(img);

    const boot = async (n: number): Promise<void> => {
      say(`# boot ${n}: qvm-start launches qemu on the volumes (root xvda, private xvdb, volatile xvdc, modules xvdd)`);
      const t0 = Date.now();
      tool('qvm-start work');
      for (const until = Date.now() + 600_000; (await client.powerState('work')) !== 'Halted'; await new Promise((r) => setTimeout(r, 250)))
        if (Date.now() > until) throw new Error('the guest did not power off within 600 s');
      const console = await fs.readFile(path.join(base, 'log', 'work.console.log'), 'utf8');
      say(`# the guest powered off after ${((Date.now() - t0) / 1000).toFixed(0)} s; what it said on its console ($BASE/log/work.console.log):`);
      for (const line of console.split('\n').map((l) => l.trim()))
        if (/^qs-guest: (root|private|volatile|wrote)/.test(line)) say(`    ${line}`);
    };
    await boot(1);
    say('# the host: its private data was committed at power-off (the data before it kept as a revision); its root changes are gone');
    tool('qvm-volume info work:private');
    await boot(2);
    return true;
  } finally {
    await client.close();
    if (daemon.exitCode === null) {
      const exited = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      await exited;
    }
    // A guest still running (the demo failed mid-way): ended by the pid its runtime recorded.
    await killRecordedGuests(base);
    await fs.rm(base, { recursive: true, force: true });
  }
}
