// The path an rbd volume gives a hypervisor: QEMU's rbd: name, which QEMU
// splits at `:` and `@` (a `\` escapes). No cluster is needed: making the
// name makes no Ceph call.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rbdDriver } from '../../../src/drivers/rbd/index.js';
import { DomainStorage } from '../../../src/storage/domain-storage.js';
import { defaultVolumeConfigs } from '../../../src/storage/volume-sets.js';

function privatePath(options: Record<string, string>): Promise<string> {
  const pool = rbdDriver.createPool('ceph', {
    ceph_pool: 'rbd',
    namespace: '',
    image_prefix: 'qubes-',
    ceph_conf: '',
    client_id: '',
    keyring: '',
    host_id: 'h',
    break_stale_locks: '',
    timeout: 30,
    tmp_dir: '',
    revisions_to_keep: 1,
    ephemeral_volatile: false,
    ...options,
  });
  const storage = DomainStorage.init(
    {
      domain: { name: 'work', dirPrefix: 'appvms' },
      volumes: defaultVolumeConfigs('StandaloneVM', { root: 'ceph', private: 'ceph', volatile: 'ceph' }, { root: 1 << 20, private: 1 << 20 }),
      template: null,
    },
    () => pool,
  );
  return storage.get('private').path();
}

describe('rbd: the path QEMU opens', () => {
  it('names pool and image, then the client, ceph.conf and keyring, in QEMU\'s rbd: syntax', async () => {
    assert.equal(await privatePath({}), 'rbd:rbd/qubes-appvms=work=private');
    assert.equal(
      await privatePath({ client_id: 'qubes', ceph_conf: '/etc/ceph/c.conf', keyring: '/etc/ceph/k', namespace: 'ns' }),
      'rbd:rbd/ns/qubes-appvms=work=private:id=qubes:conf=/etc/ceph/c.conf:keyring=/etc/ceph/k',
    );
  });

  it('escapes the characters QEMU splits at (: and @) and its escape (\\) in every part', async () => {
    assert.equal(
      await privatePath({ ceph_conf: '/etc/ce:ph/a@b.conf', keyring: '/k\\x' }),
      'rbd:rbd/qubes-appvms=work=private:conf=/etc/ce\\:ph/a\\@b.conf:keyring=/k\\\\x',
    );
  });
});
