/**
 * The default volume set of each domain class (sizes: root 10 GiB, private
 * 2 GiB; volatile follows the root, for a DispVM root + private).
 */
import { QubesValueError } from './errors.js';
import type { VolumeConfig } from './volume.js';

export type DomainClass = 'AdminVM' | 'TemplateVM' | 'AppVM' | 'StandaloneVM' | 'DispVM';

export const GiB = 1024 ** 3;
export const DEFAULT_ROOT_SIZE = 10 * GiB;
export const DEFAULT_PRIVATE_SIZE = 2 * GiB;

/** Pools per volume name; `kernel` absent means the domain gets no kernel volume. */
export interface VolumePools {
  root: string;
  private: string;
  volatile: string;
  kernel?: string | null;
}

export function dirPrefixOf(klass: DomainClass): string {
  return klass === 'TemplateVM' ? 'vm-templates' : 'appvms';
}

export function defaultVolumeConfigs(
  klass: DomainClass,
  pools: VolumePools,
  sizes: { root?: number; private?: number } = {},
): VolumeConfig[] {
  const root = sizes.root ?? DEFAULT_ROOT_SIZE;
  const priv = sizes.private ?? DEFAULT_PRIVATE_SIZE;
  const origin = (name: string, size: number, pool: string): VolumeConfig => ({
    name, pool, size, rw: true, snap_on_start: false, save_on_stop: true,
  });
  const snapshot = (name: string, size: number, pool: string): VolumeConfig => ({
    name, pool, size, rw: true, snap_on_start: true, save_on_stop: false,
  });
  const volatile = (size: number): VolumeConfig => ({
    name: 'volatile', pool: pools.volatile, size, rw: true, snap_on_start: false, save_on_stop: false,
  });
  const kernel: VolumeConfig[] = pools.kernel
    ? [{ name: 'kernel', pool: pools.kernel, rw: false, snap_on_start: false, save_on_stop: false, size: 0 }]
    : [];
  switch (klass) {
    case 'AdminVM':
      return [];
    case 'TemplateVM':
    case 'StandaloneVM':
      return [origin('root', root, pools.root), origin('private', priv, pools.private), volatile(root), ...kernel];
    case 'AppVM':
      return [snapshot('root', root, pools.root), origin('private', priv, pools.private), volatile(root), ...kernel];
    case 'DispVM':
      return [snapshot('root', root, pools.root), snapshot('private', priv, pools.private), volatile(root + priv), ...kernel];
    default:
      throw new QubesValueError(`unknown domain class '${String(klass)}'`);
  }
}
