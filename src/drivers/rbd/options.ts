/** Options and capabilities of the rbd driver, declared once (see storage/options.ts, storage/driver.ts). */
import type { DriverCapabilities } from '../../storage/driver.js';
import { COMMON_POOL_OPTIONS, type OptionSpec } from '../../storage/options.js';

export const RBD_CAPABILITIES: DriverCapabilities = {
  volumeKinds: ['volatile', 'snapshot', 'origin', 'origin_snapshot'],
  maxRevisions: Infinity,
  remote: true,
  writable: true,
  shrink: true,
};

export const RBD_OPTIONS: readonly OptionSpec[] = [
  { name: 'ceph_pool', type: 'string', default: 'rbd', help: 'Ceph (RADOS) pool holding the images' },
  { name: 'namespace', type: 'string', default: '', help: 'RADOS namespace inside the Ceph pool (made at setup when missing); empty: none' },
  {
    name: 'image_prefix',
    type: 'string',
    default: 'qubes-',
    help: 'prefix of every image name; pools sharing a Ceph pool and namespace must differ in it (letters, digits, _ . -)',
  },
  { name: 'ceph_conf', type: 'path', default: '', help: 'path of ceph.conf; empty: the Ceph default (/etc/ceph/ceph.conf, or $CEPH_CONF)' },
  { name: 'client_id', type: 'string', default: '', help: 'Ceph client id (NAME of client.NAME); empty: admin' },
  { name: 'keyring', type: 'path', default: '', help: 'keyring of the client; empty: as ceph.conf says' },
  {
    name: 'host_id',
    type: 'string',
    default: '',
    help: 'name of this host in the locks of running volumes, unique per daemon; empty at add: HOSTNAME-RANDOM is made and saved with the pool (a pool saved with it empty uses the host name)',
  },
  {
    name: 'break_stale_locks',
    type: 'string',
    default: '',
    mutable: true,
    help: 'host id whose locks on volumes this host may break at start (that host is known dead); empty: never break a lock (see also $QUBES_RBD_BREAK_STALE_LOCKS)',
  },
  { name: 'timeout', type: 'int', default: 30, min: 1, max: 3600, mutable: true, help: 'seconds a Ceph call may wait for the cluster before it fails' },
  { name: 'tmp_dir', type: 'path', default: '', help: 'local directory for export and import files; empty: the system temp directory' },
  ...COMMON_POOL_OPTIONS,
];
