// What the tests that boot real guests under the qemu runtime share: whether
// a guest can boot here (qemu and the guest kernel entry of
// scripts/guest-kernel.sh), the raw disk images their scripts read, the
// AppVM's script, and the guest's console lines.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { findQemu } from '../../src/runtime/qemu.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const MiB = 1 << 20;

/** Why guests cannot boot here (null: they can), and the guest kernel entry's directory. */
export async function guestSetup(): Promise<{ reason: string | null; kernelDir: string }> {
  if (!(await findQemu())) return { reason: 'qemu-system-x86_64 not found (Debian package qemu-system-x86)', kernelDir: '' };
  const dir = process.getuid?.() === 0 ? undefined : path.join(os.tmpdir(), 'qs-guest-kernel');
  try {
    const { stdout } = await promisify(execFile)('bash', [path.join(ROOT, 'scripts', 'guest-kernel.sh'), ...(dir ? [dir] : [])], { maxBuffer: 1 << 20 });
    return { reason: null, kernelDir: stdout.trim().split('\n').pop()! };
  } catch (e) {
    return { reason: `scripts/guest-kernel.sh failed: ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim()}`, kernelDir: '' };
  }
}

/** Puts the guest kernel entry into BASE's linux-kernel pool (its only kernel: a new state takes it as default_kernel). */
export async function installGuestKernel(base: string, kernelDir: string): Promise<void> {
  const dest = path.join(base, 'vm-kernels', path.basename(kernelDir));
  await fs.mkdir(dest, { recursive: true });
  for (const f of ['vmlinuz', 'initramfs', 'modules.img']) await fs.copyFile(path.join(kernelDir, f), path.join(dest, f));
}

/** A raw image: the guest script at 0 (first line `#qs-guest-script`), optional data at 1 MiB. */
export function privateImage(script: string, data = ''): Buffer {
  const img = Buffer.alloc(2 * MiB);
  img.write(`#qs-guest-script\n${script}`, 0);
  img.write(data, MiB);
  return img;
}

/** The template's root: a marker at 0. */
export const TEMPLATE_ROOT = 'TEMPLATE-ROOT-1';
export function templateRootImage(): Buffer {
  const root = Buffer.alloc(2 * MiB);
  root.write(TEMPLATE_ROOT, 0);
  return root;
}

// The script of the AppVM: says what it finds on root, private (at 1 MiB) and
// volatile, then writes a boot counter to private, a mark to root and to volatile.
export const COUNTER_SCRIPT = `
prev="$(dd if=/dev/xvdb bs=1M skip=1 count=1 2>/dev/null | head -c 64 | tr -d '\\000\\n')"
echo "qs-guest: root is [$(head -c 64 /dev/xvda | tr -d '\\000\\n')]"
echo "qs-guest: private was [$prev]"
echo "qs-guest: volatile is [$(head -c 4096 /dev/xvdc | tr -d '\\000\\n')]"
n=$(( \${prev#boot-} + 1 ))
printf 'boot-%s' "$n" | dd of=/dev/xvdb bs=1M seek=1 conv=notrunc,fsync 2>/dev/null || echo "qs-guest: write to private failed"
printf 'APPVM-WROTE-ROOT' | dd of=/dev/xvda conv=notrunc,fsync 2>/dev/null || echo "qs-guest: write to root failed"
printf 'VOLATILE-JUNK' | dd of=/dev/xvdc conv=notrunc,fsync 2>/dev/null || echo "qs-guest: write to volatile failed"
echo 3 >/proc/sys/vm/drop_caches
echo "qs-guest: root now [$(head -c 16 /dev/xvda | tr -d '\\000\\n')]"
echo "qs-guest: wrote boot-$n"
# Modes from the kernel command line (the domain's kernelopts):
# qs.scribble: keep writing private (to be killed mid-write); qs.wait: wait for the power button.
case " $(cat /proc/cmdline) " in
*" qs.scribble "*)
  i=0
  while :; do
    i=$((i + 1))
    printf 'scribble-%s' "$i" | dd of=/dev/xvdb bs=1M seek=1 conv=notrunc,fsync 2>/dev/null
    # Said once the first write is on the disk: a kill from then on finds one there.
    [ "$i" = 1 ] && echo "qs-guest: scribbling"
  done ;;
*" qs.wait "*)
  echo "qs-guest: waiting"
  while :; do sleep 1; done ;;
esac
`;

/** The guest's `qs-guest: ` lines in BASE/log/VM.console.log. */
export async function guestLines(base: string, vm: string): Promise<string[]> {
  const text = await fs.readFile(path.join(base, 'log', `${vm}.console.log`), 'utf8');
  return text.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('qs-guest: '));
}
