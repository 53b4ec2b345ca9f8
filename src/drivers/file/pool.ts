/**
 * The `file` driver (Qubes R4) and its R3.2 name `xen`: plain sparse images in
 * a directory tree, at most one revision. It is the file-reflink machinery
 * with the Qubes file layout (`NAME-cow.img` while running, a volatile
 * volume's image is `volatile.img`) and without the reflink requirement:
 * where Qubes uses a device-mapper snapshot at start, this machine has none,
 * so the copy-on-write copy is a reflink where the filesystem can and a sparse
 * copy elsewhere.
 */
import { FileReflinkPool, type FilePoolFlavor } from '../file-reflink/pool.js';
import { XEN_NAMING } from '../file-reflink/layout.js';
import type { PoolOptions } from '../../storage/options.js';
import { FILE_CAPABILITIES } from './options.js';

export const FILE_FLAVOR: FilePoolFlavor = {
  driver: 'file',
  naming: XEN_NAMING,
  requireReflink: false,
  classDirs: ['appvms', 'vm-templates'],
  capabilities: FILE_CAPABILITIES,
};

/** R3.2 layout: service VMs (net, firewall) had their own directory. */
export const XEN_FLAVOR: FilePoolFlavor = {
  ...FILE_FLAVOR,
  driver: 'xen',
  classDirs: ['appvms', 'vm-templates', 'servicevms'],
};

export function createFilePool(name: string, options: PoolOptions, flavor: FilePoolFlavor): FileReflinkPool {
  return new FileReflinkPool(name, options, flavor);
}
