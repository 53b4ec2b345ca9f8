/**
 * Which runtime runs domains: `qubesd --runtime NAME`, else the environment
 * QUBES_STORAGE_RUNTIME, else the default: `qemu` where qemu is installed
 * (the binary QUBES_STORAGE_QEMU names, else qemu-system-x86_64 on PATH, is
 * an executable file), `bookkeeping` elsewhere. The qemu runtime's own:
 * QUBES_STORAGE_QEMU (the binary), QUBES_STORAGE_QEMU_ACCEL (auto, the
 * default, tcg or kvm). Read by qubesd only, which logs the choice and why;
 * src/runtime/README.md.
 */
import { QubesValueError } from '../storage/errors.js';
import { ACCEL_SETTINGS, type AccelSetting } from './accel.js';
import { findQemu } from './qemu.js';

export const RUNTIME_NAMES = ['bookkeeping', 'qemu'] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];
export const DEFAULT_QEMU = 'qemu-system-x86_64';

export interface RuntimeSetting {
  readonly kind: RuntimeName;
  readonly qemu?: { readonly qemu?: string; readonly accel?: AccelSetting };
}

/** The setting and why it is that one (for the log). */
export interface ChosenRuntime extends RuntimeSetting {
  readonly why: string;
}

/**
 * The setting from a --runtime value (or undefined) and the environment;
 * throws on an unknown name or accelerator. Where neither names a runtime,
 * looks for the qemu binary.
 */
export async function runtimeSetting(value: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<ChosenRuntime> {
  const named = value ?? (env['QUBES_STORAGE_RUNTIME'] || undefined);
  if (named !== undefined && !(RUNTIME_NAMES as readonly string[]).includes(named))
    throw new QubesValueError(`unknown runtime '${named}' (${RUNTIME_NAMES.join(' or ')})`);
  const accel = env['QUBES_STORAGE_QEMU_ACCEL'] || 'auto';
  if (!(ACCEL_SETTINGS as readonly string[]).includes(accel))
    throw new QubesValueError(`QUBES_STORAGE_QEMU_ACCEL=${accel}: not ${ACCEL_SETTINGS.join(', ')}`);
  const bin = env['QUBES_STORAGE_QEMU'] || undefined;
  const qemu = { kind: 'qemu' as const, qemu: { accel: accel as AccelSetting, ...(bin ? { qemu: bin } : {}) } };
  if (named !== undefined) {
    const why = value !== undefined ? '--runtime' : 'QUBES_STORAGE_RUNTIME';
    return named === 'qemu' ? { ...qemu, why } : { kind: named as RuntimeName, why };
  }
  const found = await findQemu(bin ?? DEFAULT_QEMU, env);
  if (found) return { ...qemu, why: `the default where qemu is installed: ${found}` };
  const missing = bin ? `QUBES_STORAGE_QEMU=${bin} is not an executable file` : `no ${DEFAULT_QEMU} on PATH (Debian package qemu-system-x86)`;
  return { kind: 'bookkeeping', why: `the default without qemu: ${missing}; domains are not booted, their power state is only recorded` };
}
