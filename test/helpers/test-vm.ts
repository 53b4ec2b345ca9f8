/**
 * Running a command inside the test VM (scripts/with-test-vm.sh: a Debian
 * kernel under qemu, with device-mapper, on this machine's root filesystem
 * and this checkout). No skip: where the VM cannot boot the script exits 125
 * and the caller's assertions fail.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { childOutput, type NodeRun } from './process.js';

/** The checkout's top directory (this file is dist/test/helpers/test-vm.js). */
export const CHECKOUT = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');
export const WITH_TEST_VM = `${CHECKOUT}/scripts/with-test-vm.sh`;

export interface TestVmOptions {
  /** Variables for with-test-vm.sh (QS_TEST_VM_DISKS, QS_TEST_VM_TIMEOUT, TMPDIR, ...), over this process's. */
  readonly env?: NodeJS.ProcessEnv;
  /** The host directory to start in (inside the checkout: COMMAND starts there in the guest). */
  readonly cwd?: string;
  /** Runs the harness (and so qemu) under `nice -n N`: a guest emulated beside other tests takes the CPU left over. */
  readonly nice?: number;
}

/** Starts `with-test-vm.sh command...`; its stdout and stderr are piped. */
export function startTestVm(command: readonly string[], options: TestVmOptions = {}): ChildProcess {
  const argv = ['bash', WITH_TEST_VM, ...command];
  if (options.nice !== undefined) argv.unshift('nice', '-n', String(options.nice));
  return spawn(argv[0]!, argv.slice(1), {
    cwd: options.cwd ?? CHECKOUT,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** Runs `command` in the test VM; resolves with its exit status and output once the guest is gone. */
export function runInTestVm(command: readonly string[], options: TestVmOptions = {}): Promise<NodeRun> {
  return childOutput(startTestVm(command, options));
}
