// lvm_thin on the host (no device-mapper needed): the `lvs` JSON report as
// the driver reads it, and a pool whose LVM or volume group is not there.
// The driver's real work is tested in the test VM (lvm-thin.test.ts).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseLvs } from '../../../src/drivers/lvm-thin/lvm.js';
import { LvmThinPool } from '../../../src/drivers/lvm-thin/index.js';
import { QubesValueError, StoragePoolException } from '../../../src/storage/errors.js';

// As `lvm lvs --reportformat json --units b --nosuffix -o ...` prints it (LVM 2.03).
const REPORT = `  {
      "report": [
          {
              "lv": [
                  {"vg_name":"qubes_dom0", "lv_name":"vm-pool", "pool_lv":"", "lv_size":"314572800", "data_percent":"12.50", "lv_attr":"twi-aotz--", "origin":"", "lv_metadata_size":"4194304", "metadata_percent":"10.25"},
                  {"vg_name":"qubes_dom0", "lv_name":"vm-work-private", "pool_lv":"vm-pool", "lv_size":"4194304", "data_percent":"50.00", "lv_attr":"Vwi-a-tz--", "origin":"", "lv_metadata_size":"", "metadata_percent":""},
                  {"vg_name":"qubes_dom0", "lv_name":"vm-work-private-snap", "pool_lv":"vm-pool", "lv_size":"4194304", "data_percent":"", "lv_attr":"Vwi---tz-k", "origin":"vm-work-private", "lv_metadata_size":"", "metadata_percent":""},
                  {"vg_name":"other", "lv_name":"x", "pool_lv":"", "lv_size":"1", "data_percent":"", "lv_attr":"-wi-a-----", "origin":"", "lv_metadata_size":"", "metadata_percent":""}
              ]
          }
      ]
  }
`;

describe('lvm_thin: the lvs report', () => {
  it('reads sizes in bytes, usage as percent of size (whole bytes), metadata of the thin pool, origins; other VGs left out', () => {
    const lvs = parseLvs(REPORT, 'qubes_dom0');
    assert.deepEqual([...lvs.keys()], ['vm-pool', 'vm-work-private', 'vm-work-private-snap']);
    const tp = lvs.get('vm-pool')!;
    assert.equal(tp.size, 314572800);
    assert.equal(tp.usage, 39321600); // 12.5 % of 300 MiB
    assert.equal(tp.metadataSize, 4194304);
    assert.equal(tp.metadataUsage, 429916); // 10.25 % of 4 MiB = 429916.16
    assert.equal(tp.attr[0], 't');
    assert.equal(lvs.get('vm-work-private')!.usage, 2097152);
    assert.equal(lvs.get('vm-work-private-snap')!.usage, null, 'inactive: no percentage');
    assert.equal(lvs.get('vm-work-private-snap')!.origin, 'vm-work-private');
  });

  it('refuses what is not a report of numbers', () => {
    assert.throws(() => parseLvs('{"report":[{}]}', 'vg'), /no report/);
    assert.throws(() => parseLvs(REPORT.replace('"314572800"', '"300M"'), 'qubes_dom0'), /lv_size of vm-pool '300M', not a number of bytes/);
    assert.throws(() => parseLvs(REPORT.replace('"12.50"', '"1e9"'), 'qubes_dom0'), /not a percentage/);
  });
});

describe('lvm_thin: a pool whose thin pool is not on this host', () => {
  it('refuses names LVM would not take (QubesValueError), before anything runs', () => {
    for (const [k, v] of [['volume_group', '-x'], ['thin_pool', 'a/b'], ['volume_group', '']] as const)
      assert.throws(() => new LvmThinPool('p', { volume_group: 'vg', thin_pool: 'tp', [k]: v }), QubesValueError, `${k}=${v}`);
  });

  it('is unusable with a reason naming the driver and the thin pool (no such volume group here)', async () => {
    const pool = new LvmThinPool('lvm', { volume_group: 'qs_no_such_vg', thin_pool: 'pool00', revisions_to_keep: 1, ephemeral_volatile: false });
    await assert.rejects(pool.checkUsable(), (e: unknown) => {
      assert.ok(e instanceof StoragePoolException);
      assert.match(e.message, /^lvm_thin: thin pool qs_no_such_vg\/pool00 cannot be read: /);
      return true;
    });
    await assert.rejects(pool.setup(), StoragePoolException);
  });
});
