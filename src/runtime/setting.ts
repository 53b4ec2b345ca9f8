/**
 * Which runtime runs domains: the setting (qubesd --runtime, else the
 * environment QUBES_STORAGE_RUNTIME; default `bookkeeping`), and the qemu
 * runtime's own (QUBES_STORAGE_QEMU: the binary; QUBES_STORAGE_QEMU_ACCEL:
 * auto, the default, tcg or kvm). Read by qubesd only; src/runtime/README.md.
 */
import { QubesValueError } from '../storage/errors.js';
import { ACCEL_SETTINGS, type AccelSetting } from './accel.js';

export const RUNTIME_NAMES = ['bookkeeping', 'qemu'] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];

export interface RuntimeSetting {
  readonly kind: RuntimeName;
  readonly qemu?: { readonly qemu?: string; readonly accel?: AccelSetting };
}

/** The setting from a --runtime value (or undefined) and the environment; throws on an unknown name. */
export function runtimeSetting(value: string | undefined, env: NodeJS.ProcessEnv = process.env): RuntimeSetting {
  const kind = value ?? (env['QUBES_STORAGE_RUNTIME'] || 'bookkeeping');
  if (!(RUNTIME_NAMES as readonly string[]).includes(kind))
    throw new QubesValueError(`unknown runtime '${kind}' (${RUNTIME_NAMES.join(' or ')})`);
  if (kind !== 'qemu') return { kind: kind as RuntimeName };
  const accel = env['QUBES_STORAGE_QEMU_ACCEL'] || 'auto';
  if (!(ACCEL_SETTINGS as readonly string[]).includes(accel))
    throw new QubesValueError(`QUBES_STORAGE_QEMU_ACCEL=${accel}: not ${ACCEL_SETTINGS.join(', ')}`);
  const bin = env['QUBES_STORAGE_QEMU'];
  return { kind: 'qemu', qemu: { accel: accel as AccelSetting, ...(bin ? { qemu: bin } : {}) } };
}
