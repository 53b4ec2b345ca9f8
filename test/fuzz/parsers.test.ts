// Fuzzing of the parsers that read untrusted text: storage.conf, the state
// file (qubes.xml), the admin API framing and its field validators. Each gets
// thousands of mutated inputs: the result must be a parse or the documented
// error (a QubesException with file:line, or a FramingError), never another
// exception, and every input is handled within the test's time.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, mutate } from './mutate.js';
import { parseIni, poolDefinitions } from '../../src/registry/storage-conf.js';
import { StateDocument } from '../../src/domain/state-file.js';
import { QubesException } from '../../src/storage/errors.js';
import { FramingError, encodeRequest, parseRequest } from '../../src/admin/protocol/header.js';
import {
  parseBoolean,
  parseDestination,
  parseInteger,
  parseKeyValues,
  validateDomainName,
  validatePoolName,
  validateRevisionId,
} from '../../src/admin/protocol/validate.js';

const N = Number(process.env['QS_FUZZ_INPUTS'] ?? 3000);

const CONFS = [
  '[default]\ndriver=xen\n',
  '# host pools\n[default]\ndriver=file-reflink\ndir_path=/var/lib/qubes\nsetup_check=False\n\n; R3.2\n[foo]\ndriver=xen\ndir_path=/opt/qubes-vm\n',
  '[k]\nclass=./my-driver.js#BtrfsDriver\nrevisions_to_keep=3\n[l]\ndriver=linux-kernel\ndir_path=/var/lib/qubes/vm-kernels\n',
].map((s) => Buffer.from(s));

const XMLS = [
  `<?xml version='1.0' encoding='UTF-8'?>
<qubes version="3.0">
  <labels>
    <label color="0xcc0000" id="label-1">red</label>
    <label color="0x000000" id="label-8">black</label>
  </labels>
  <pools>
    <pool dir_path="/var/lib/qubes" driver="file-reflink" name="default" revisions_to_keep="1"/>
    <pool driver="lvm_thin" name="lvm" thin_pool="pool00" volume_group="qubes_dom0"/>
  </pools>
  <properties>
    <property name="default_template">fedora</property>
  </properties>
  <domains>
    <domain id="domain-0" class="AdminVM"><properties><property name="label" ref="label-8"/></properties><features/><tags/></domain>
    <domain id="domain-1" class="TemplateVM">
      <properties><property name="name">fedora</property><property name="qid">1</property><property name="label" ref="label-8"/></properties>
      <features><feature name="service.x">1</feature></features>
      <tags><tag name="t1"/></tags>
      <volume-config>
        <volume name="root" pool="default" revisions_to_keep="1" rw="True" save_on_stop="True" size="10737418240" snap_on_start="False" vid="vm-templates/fedora/root"/>
        <volume name="private" pool="default" rw="True" save_on_stop="True" size="2147483648" snap_on_start="False" vid="vm-templates/fedora/private"/>
      </volume-config>
    </domain>
  </domains>
</qubes>
`,
].map((s) => Buffer.from(s));

/** The only errors a parser may throw. */
function documented(e: unknown, what: string, input: Buffer): void {
  if (e instanceof QubesException) return;
  assert.fail(`${what}: undocumented ${(e as Error)?.name}: ${(e as Error)?.message} for input ${JSON.stringify(input.toString('latin1').slice(0, 200))}`);
}

describe('fuzz: storage.conf parser', () => {
  it(`${N} mutated files: a parse or FILE:LINE error`, (t) => {
    const rng = new Rng(1);
    let errors = 0;
    for (let i = 0; i < N; i++) {
      const input = mutate(rng.pick(CONFS), rng, CONFS);
      try {
        poolDefinitions(parseIni(input.toString('utf8'), '/etc/qubes/storage.conf'));
      } catch (e) {
        documented(e, 'storage.conf', input);
        assert.match((e as Error).message, /^\/etc\/qubes\/storage\.conf(:\d+)?: /, 'the error names file and line');
        errors++;
      }
    }
    t.diagnostic(`${N} inputs, ${errors} refused with a FILE:LINE error`);
  });
});

describe('fuzz: state file loader', () => {
  it(`${N} mutated qubes.xml: a parse or FILE:LINE error`, (t) => {
    const rng = new Rng(2);
    let errors = 0;
    for (let i = 0; i < N; i++) {
      const input = mutate(rng.pick(XMLS), rng, XMLS);
      try {
        const doc = StateDocument.parse(input.toString('utf8'), '/var/lib/qubes/qubes.xml');
        doc.readLabels();
        doc.readPools();
        doc.readGlobalProperties();
        doc.readDomains();
        doc.serialize();
      } catch (e) {
        documented(e, 'qubes.xml', input);
        assert.match((e as Error).message, /qubes\.xml/, 'the error names the file');
        errors++;
      }
    }
    t.diagnostic(`${N} inputs, ${errors} refused`);
  });

  it('refuses deep nesting and entity tricks without hanging', () => {
    const deep = '<qubes>' + '<a>'.repeat(100_000) + '</a>'.repeat(100_000) + '</qubes>';
    assert.throws(() => StateDocument.parse(deep, 'deep.xml'), QubesException);
    const bomb = '<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><qubes>&b;</qubes>';
    try {
      StateDocument.parse(bomb, 'bomb.xml');
    } catch (e) {
      assert.ok(e instanceof QubesException);
    }
  });
});

describe('fuzz: admin API framing and validators', () => {
  const calls = [
    encodeRequest({ method: 'admin.vm.List', arg: '', source: 'dom0', dest: 'dom0' }),
    encodeRequest({ method: 'admin.vm.volume.Info', arg: 'private', source: 'dom0', dest: 'work' }),
    encodeRequest({ method: 'admin.pool.Add', arg: 'file-reflink', source: 'dom0', dest: 'dom0' }, 'name=p\ndir_path=/x\n'),
    encodeRequest({ method: 'admin.vm.volume.Resize', arg: 'private', source: 'dom0', dest: 'work' }, '2147483648'),
    Buffer.from('admin.vm.List dom0 keyword adminvm\0'),
  ].map((b) => Buffer.from(b));

  it(`${N} mutated requests: a request or a FramingError`, (t) => {
    const rng = new Rng(3);
    let refused = 0;
    for (let i = 0; i < N; i++) {
      const input = mutate(rng.pick(calls), rng, calls);
      try {
        parseRequest(input);
      } catch (e) {
        if (!(e instanceof FramingError) && !(e instanceof QubesException))
          assert.fail(`framing: ${(e as Error).name}: ${(e as Error).message}`);
        refused++;
      }
    }
    t.diagnostic(`${N} inputs, ${refused} refused`);
  });

  it(`${N} random fields per validator: a value or the documented error`, (t) => {
    const rng = new Rng(4);
    const seeds = ['0', '42', '-1', '2147483648', 'work', 'default', 'True', 'uuid:0b2d3c4e-1111-4222-8333-944455556666', 'name=p\ndir_path=/x\n', 'r1:2', 'fedora-40'].map((s) => Buffer.from(s));
    const checks: [string, (s: string) => unknown][] = [
      ['parseInteger', (s) => parseInteger(s, { allowNegative: rng.int(2) === 0 })],
      ['parseBoolean', (s) => parseBoolean(s)],
      ['validatePoolName', (s) => validatePoolName(s)],
      ['validateRevisionId', (s) => validateRevisionId(s)],
      ['validateDomainName', (s) => validateDomainName(s)],
      ['parseDestination', (s) => parseDestination(s)],
      ['parseKeyValues', (s) => parseKeyValues(s, { keys: ['name', 'dir_path', 'pool'], separator: rng.int(2) ? 'line' : 'space' })],
    ];
    let total = 0;
    for (const [name, fn] of checks) {
      for (let i = 0; i < N; i++) {
        const input = mutate(rng.pick(seeds), rng, seeds);
        total++;
        try {
          const v = fn(input.toString('utf8'));
          if (name === 'parseInteger') assert.ok(Number.isSafeInteger(v), `${name} gave ${String(v)}`);
        } catch (e) {
          documented(e, name, input);
        }
      }
    }
    t.diagnostic(`${total} inputs over ${checks.length} validators`);
  });
});
