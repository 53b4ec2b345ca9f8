// The volumes the conformance suite and its crash children make, and the
// tags they write: 16 bytes at the start of a volume, read back through
// path() (what a domain sees) or export (what is committed).
import { MiB } from '../helpers/data.js';
import type { Pool } from '../../src/storage/pool.js';
import type { DomainRef, Volume, VolumeKind, VolumeSpec } from '../../src/storage/volume.js';

export const KINDS: readonly VolumeKind[] = ['volatile', 'snapshot', 'origin', 'origin_snapshot'];
/** Size of the volumes made here. */
export const SIZE = 4 * MiB;
export const TAG = 16;

export function tagBytes(s: string): Buffer {
  const b = Buffer.alloc(TAG);
  b.write(s, 'latin1');
  return b;
}
export function untag(b: Buffer): string {
  return b.subarray(0, TAG).toString('latin1').replace(/\0+$/, '');
}

/** Volumes of one domain `d` in `pool`, by kind (source volumes given). */
export function volumesOf(pool: Pool, d: string) {
  const app: DomainRef = { name: d, dirPrefix: 'appvms' };
  // A template of its own name: Qubes' domain names are unique across classes, and
  // drivers that name volumes by domain name alone (lvm_thin: vm-NAME-VOLUME) rely on it.
  const tpl: DomainRef = { name: `${d}-tpl`, dirPrefix: 'vm-templates' };
  const spec = (s: Partial<VolumeSpec>): VolumeSpec => ({ name: 'private', rw: true, size: SIZE, ...s });
  return {
    origin: (extra: Partial<VolumeSpec> = {}) => pool.initVolume(app, spec({ save_on_stop: true, ...extra })),
    templateRoot: (extra: Partial<VolumeSpec> = {}) => pool.initVolume(tpl, spec({ name: 'root', save_on_stop: true, ...extra })),
    snapshot: (source: Volume) => pool.initVolume(app, spec({ name: 'root', snap_on_start: true, source })),
    volatile: () => pool.initVolume(app, spec({ name: 'volatile' })),
    originSnapshot: (source: Volume) => pool.initVolume(app, spec({ name: 'root', snap_on_start: true, save_on_stop: true, source })),
    /** Any kind, for refusals (`source` for the snapshot kinds). */
    ofKind(kind: VolumeKind, source: Volume): Volume {
      if (kind === 'origin') return this.origin();
      if (kind === 'volatile') return this.volatile();
      if (kind === 'snapshot') return this.snapshot(source);
      return this.originSnapshot(source);
    },
  };
}

