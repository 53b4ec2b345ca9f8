// How a domain reads and writes an rbd volume (its path is rbd:POOL/IMAGE:...):
// through the rbd command, on the test cluster of scripts/with-ceph.sh.
import { readSpec, specOfPath, writeSpec } from '../drivers/rbd/helpers.js';
import type { VolumeIo } from './target.js';
import { fileIo } from './target.js';

export const rbdIo: VolumeIo = {
  name: 'rbd',
  async read(p, offset, length) {
    if (!p.startsWith('rbd:')) return fileIo.read(p, offset, length); // an export or import file
    return (await readSpec(specOfPath(p))).subarray(offset, offset + length);
  },
  async write(p, offset, data) {
    if (!p.startsWith('rbd:')) return fileIo.write(p, offset, data);
    await writeSpec(specOfPath(p), offset, data);
  },
};
