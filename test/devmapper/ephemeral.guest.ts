// Ephemeral volatile volumes for real: runs INSIDE the test VM (Debian's
// kernel, with device-mapper and dm-crypt), booted by ephemeral-vm.test.ts
// on the host, which counts these tests there. Scratch disk 1 holds an ext4
// filesystem with the state and the pool (so "never written to disk" is
// checked against a whole real disk); scratch disk 2 is a raw block device.
// What is checked is read from the kernel and the disks with the system's
// own tools (dmsetup, sysfs), never from the code under test.
//
// dmsetup and losetup are reached through wrappers that log their command
// lines: the key must never be among them (argv is readable by anyone in
// /proc); the wrapper can also be told to make `dmsetup create` fail.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AdminServer } from '../../src/admin/index.js';
import { openRuntime, type Runtime } from '../../src/daemon/runtime.js';
import { closeCryptMapping, openCryptMapping } from '../../src/devmapper/crypt.js';
import { failsWith, ok } from '../admin/methods/helpers.js';
import { collectingLog } from '../admin/helpers.js';
import { MiB, readAt } from '../helpers/data.js';
import { runNode } from '../helpers/process.js';
import { CHECKOUT } from '../helpers/test-vm.js';

const DISK = process.env['QS_TEST_VM_DISK_1'] ?? '';
const RAW = process.env['QS_TEST_VM_DISK_2'] ?? '';
const MNT = '/mnt/qs-ephemeral';
const BASE = `${MNT}/base`;
const BIN = '/tmp/qs-ephemeral-bin';
const ARGV_LOG = '/tmp/qs-ephemeral-argv.log';
const FAIL_CREATE = '/tmp/qs-ephemeral-fail-create';
const SOCKET = '/tmp/qs-ephemeral.sock';
const DMSETUP = '/usr/sbin/dmsetup';
const LOSETUP = '/usr/sbin/losetup';
const NAME_RE = /^\/dev\/mapper\/(qs-eph-[0-9a-f]{32})$/;

/** Runs a system tool for the test's own view (not through the wrappers). */
function sh(cmd: string, args: string[], input?: Buffer): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Mapping names present, as the kernel lists them. */
function mappings(): string[] {
  const out = sh(DMSETUP, ['ls']);
  return out.includes('No devices found') ? [] : out.trim().split('\n').map((l) => l.split(/\s+/)[0]!);
}

/** The devices a mapping sits on (dmsetup deps): e.g. ['loop0']. */
function depsOf(name: string): string[] {
  return [...sh(DMSETUP, ['deps', '-o', 'devname', name]).matchAll(/\(([^)]+)\)/g)].map((m) => m[1]!);
}

/** Loop devices and the file each shows (sysfs). */
async function loops(): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  for (const dev of await fs.readdir('/sys/block')) {
    if (!dev.startsWith('loop')) continue;
    const file = await fs.readFile(`/sys/block/${dev}/loop/backing_file`, 'utf8').catch(() => '');
    if (file) m.set(dev, file.trim());
  }
  return m;
}

/** The key of a crypt mapping, from the kernel (`dmsetup table --showkeys`). */
function keyOf(name: string): string {
  const fields = sh(DMSETUP, ['table', '--showkeys', name]).trim().split(/\s+/);
  assert.equal(fields[2], 'crypt', `${name} is a crypt mapping`);
  return fields[4]!;
}

/** Every way the key could have been written: raw bytes, hex in either case. */
function keyForms(hex: string): Buffer[] {
  return [Buffer.from(hex, 'hex'), Buffer.from(hex.toLowerCase(), 'latin1'), Buffer.from(hex.toUpperCase(), 'latin1')];
}

/** Which of `needles` occur in the file or device (one pass, in chunks that overlap by the longest needle). */
async function found(file: string, needles: readonly Buffer[]): Promise<Buffer[]> {
  const overlap = Math.max(...needles.map((n) => n.length)) - 1;
  const hits = new Set<Buffer>();
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(8 * MiB);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      for (const n of needles) if (chunk.includes(n)) hits.add(n);
      if (bytesRead <= overlap) break;
      pos += bytesRead - overlap;
    }
  } finally {
    await fh.close();
  }
  return needles.filter((n) => hits.has(n));
}

async function contains(file: string, needle: Buffer): Promise<boolean> {
  return (await found(file, [needle])).length > 0;
}

/** A whole disk as it is on the device now: written data flushed, the device's own page cache dropped. */
function flushedDisk(dev: string): string {
  sh('sync', []);
  sh('blockdev', ['--flushbufs', dev]);
  return dev;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** 1 MiB of recognisable plaintext. */
const MARK = Buffer.from('QS-EPHEMERAL-PLAINTEXT-MARK-0123456789-');
const PLAINTEXT = Buffer.alloc(MiB, MARK);

async function writeThrough(dev: string, offset: number, data: Buffer): Promise<void> {
  const fh = await fs.open(dev, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

describe('ephemeral volatile volumes through dm-crypt, in the test VM', () => {
  let rt: Runtime;
  let server: AdminServer;

  async function open(): Promise<void> {
    rt = await openRuntime({ baseDir: BASE, storageConf: null, nodeModules: [], createDefaultPool: true, sizes: { root: 32 * MiB, private: 8 * MiB } });
    server = new AdminServer({ socketPath: SOCKET, methods: rt.methods, log: collectingLog(), lingerMs: 100 });
    await server.listen();
  }
  async function close(): Promise<void> {
    await server.close({ timeoutMs: 5000 });
    await rt.close();
  }
  const volatile = () => rt.app.domain('eph').storage.get('volatile');

  before(async () => {
    assert.ok(DISK && RAW, 'two scratch disks (QS_TEST_VM_DISKS=2)');
    // A host's boot makes /dev/loop-control (systemd's static nodes), whose first open loads the loop
    // driver; this guest has neither: load it.
    sh('modprobe', ['loop']);
    sh('mkfs.ext4', ['-q', '-F', DISK]);
    await fs.mkdir(MNT, { recursive: true });
    sh('mount', [DISK, MNT]);
    await fs.mkdir(BIN, { recursive: true });
    for (const [tool, real] of [['dmsetup', DMSETUP], ['losetup', LOSETUP]]) {
      const fail = tool === 'dmsetup' ? `[ "$1" = create ] && [ -e ${FAIL_CREATE} ] && { echo "made to fail" >&2; exit 1; }\n` : '';
      await fs.writeFile(`${BIN}/${tool}`, `#!/bin/sh\necho "${tool} $*" >> ${ARGV_LOG}\n${fail}exec ${real} "$@"\n`, { mode: 0o755 });
    }
    process.env['PATH'] = `${BIN}:${process.env['PATH'] ?? ''}`;
    await open();
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.createDomain({ klass: 'AppVM', name: 'eph', label: 'red', template: 'tpl' });
  });
  after(async () => {
    await close().catch(() => undefined);
    sh('umount', [MNT]);
  });

  test('ephemeral=True is accepted where dm-crypt works (volume and pool)', async () => {
    assert.equal(await ok(SOCKET, 'admin.vm.volume.Set.ephemeral', 'eph', 'volatile', 'True'), '');
    assert.match(await ok(SOCKET, 'admin.vm.volume.Info', 'eph', 'volatile'), /\nephemeral=True\n/);
    assert.equal(await ok(SOCKET, 'admin.pool.Set.ephemeral_volatile', 'dom0', 'default', 'True'), '');
    assert.equal(await ok(SOCKET, 'admin.pool.Set.ephemeral_volatile', 'dom0', 'default', 'False'), '');
  });

  let device = '';
  let name = '';
  let image = '';

  test('start: the domain is given a dm-crypt mapping over a loop device of the volatile image', async () => {
    assert.equal(await ok(SOCKET, 'admin.vm.Start', 'eph'), '');
    device = (await volatile().blockDevice()).path;
    name = NAME_RE.exec(device)?.[1] ?? assert.fail(`blockDevice path ${device} is not a qs-eph mapping`);
    const [dep, ...more] = depsOf(name);
    image = (await loops()).get(dep ?? '') ?? '';
    assert.match(await ok(SOCKET, 'admin.vm.volume.Info', 'eph', 'volatile'), new RegExp(`\\npath=${device}\\n`));
    assert.ok((await fs.stat(device)).isBlockDevice());
    assert.match(sh(DMSETUP, ['table', name]), /^0 \d+ crypt aes-xts-plain64 /);
    assert.deepEqual(more, []);
    assert.match(dep!, /^loop\d+$/);
    assert.ok(image.startsWith(`${BASE}/`), `the loop device shows ${image}, in the pool`);
    assert.equal((await fs.stat(image)).size, 32 * MiB, 'the volatile image');
    // The start of the mapping reads as zeros (no random "partition table" for the domain).
    assert.ok((await readAt(device, 0, 64 * 1024)).equals(Buffer.alloc(64 * 1024)));
  });

  test('data written through the mapping reads back there, and is not in the backing image nor on the disk', async () => {
    await writeThrough(device, MiB, PLAINTEXT);
    assert.ok((await readAt(device, MiB, MiB)).equals(PLAINTEXT));
    const stored = await readAt(image, MiB, MiB);
    assert.ok(!stored.equals(Buffer.alloc(MiB)), 'the image holds the data written (encrypted)');
    assert.equal(await contains(image, MARK), false, 'plaintext in the backing image');
    assert.equal(await contains(flushedDisk(DISK), MARK), false, 'plaintext on the disk');
  });

  test('the key is never written: not on any command line, not in the state directory, not on the disk', async () => {
    const key = keyOf(name);
    assert.match(key, /^[0-9a-f]{128}$/, 'a 512-bit key (AES-256-XTS)');
    const argv = await fs.readFile(ARGV_LOG, 'utf8');
    assert.match(argv, new RegExp(`^dmsetup create ${name} `, 'm'), 'the wrapper saw the mapping made');
    assert.equal(argv.toLowerCase().includes(key), false, 'key on a command line');
    for (const pid of await fs.readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '');
      assert.equal(cmdline.toLowerCase().includes(key), false, `key in the command line of ${pid}`);
    }
    const forms = keyForms(key);
    for (const f of await filesUnder(BASE)) assert.deepEqual(await found(f, forms), [], `key in ${f}`);
    assert.deepEqual(await found(flushedDisk(DISK), forms), [], 'key on the disk');
  });

  test('shutdown removes the mapping and its loop device, then the image: the key and the data are gone', async () => {
    assert.equal(await ok(SOCKET, 'admin.vm.Shutdown', 'eph'), '');
    assert.ok(!mappings().includes(name), `${name} still mapped`);
    await assert.rejects(fs.stat(device), { code: 'ENOENT' });
    assert.deepEqual([...(await loops()).values()].filter((f) => f.startsWith(image)), [], 'a loop device still shows the image');
    await assert.rejects(fs.stat(image), { code: 'ENOENT' });
    assert.doesNotMatch(await ok(SOCKET, 'admin.vm.volume.Info', 'eph', 'volatile'), /\/dev\/mapper\//);
  });

  test('kill removes them too, and a new start has a new key', async () => {
    await rt.app.start('eph');
    const key = keyOf(name);
    assert.equal(await ok(SOCKET, 'admin.vm.Kill', 'eph'), '');
    assert.ok(!mappings().includes(name));
    assert.equal([...(await loops()).values()].some((f) => f.startsWith(image)), false);
    await rt.app.start('eph');
    assert.notEqual(keyOf(name), key, 'a throw-away key: new at each start');
    await rt.app.shutdown('eph');
  });

  test('a start that fails leaves no mapping and no loop device (dm-crypt refused; the domain runner failed)', async () => {
    await fs.writeFile(FAIL_CREATE, '');
    try {
      await failsWith(SOCKET, 'StoragePoolException', ['admin.vm.Start', 'eph'], /volume appvms\/eph\/volatile of pool default: cannot encrypt it with dm-crypt: dmsetup create .* made to fail/);
    } finally {
      await fs.rm(FAIL_CREATE);
    }
    assert.ok(!mappings().includes(name));
    assert.equal([...(await loops()).values()].some((f) => f.startsWith(image)), false, 'the loop device made for it is detached');
    // Storage started, then the runner failed (its record cannot be written): storage is stopped again.
    const record = path.join(BASE, 'running-domains');
    await fs.mkdir(record);
    try {
      await assert.rejects(rt.app.start('eph'));
    } finally {
      await fs.rmdir(record);
    }
    assert.ok(!mappings().includes(name));
    assert.equal([...(await loops()).values()].some((f) => f.startsWith(image)), false);
    assert.equal(rt.app.domain('eph').isRunning, false);
  });

  test('a mapping a crash left is removed when the state is opened next, or at the next start (a lone loop device too); other mappings are left alone', async () => {
    // Others: a qs-eph- mapping that is not ours (another UUID) and an unrelated one, each on a loop device of its own.
    const other = `${MNT}/other.img`;
    await fs.writeFile(other, Buffer.alloc(MiB));
    const otherLoop = sh(LOSETUP, ['--find', '--show', other]).trim();
    const sectors = MiB / 512;
    const foreign = `qs-eph-${'0'.repeat(32)}`;
    sh(DMSETUP, ['create', foreign, '--uuid', 'SOMEONE-ELSE-1'], Buffer.from(`0 ${sectors / 2} linear ${otherLoop} 0\n`));
    sh(DMSETUP, ['create', 'qs-test-unrelated'], Buffer.from(`0 ${sectors / 2} linear ${otherLoop} ${sectors / 2}\n`));
    try {
      // A daemon that dies once the mapping is made (before the domain is recorded as running).
      await close();
      const crash = async (at = 'ephemeral.open.after-create'): Promise<void> => {
        const script = '/tmp/qs-ephemeral-crash.mjs';
        await fs.writeFile(
          script,
          `const { openRuntime } = await import(${JSON.stringify(`${CHECKOUT}/dist/src/daemon/runtime.js`)});\n` +
            `const rt = await openRuntime({ baseDir: ${JSON.stringify(BASE)}, storageConf: null, nodeModules: [] });\n` +
            `await rt.app.start('eph');\nprocess.exit(3);\n`,
        );
        const run = await runNode(script, [], { ...process.env, QUBES_STORAGE_FAILPOINTS: at });
        assert.equal(run.code, null, `killed at the failpoint: ${run.stderr}`);
        assert.equal(mappings().includes(name), at === 'ephemeral.open.after-create', 'the crash left the mapping (if made)');
        assert.equal([...(await loops()).values()].filter((f) => f === image).length, 1, 'and its loop device');
      };

      await crash();
      await open(); // the runtime sweeps what the crash left
      assert.ok(!mappings().includes(name), 'removed when the state was opened');
      assert.equal([...(await loops()).values()].some((f) => f.startsWith(image)), false);

      // Held open while the state is opened: the sweep cannot remove it, and says so; the next start does.
      await close();
      await crash();
      const leftoverKey = keyOf(name);
      const holder = await fs.open(`/dev/mapper/${name}`, 'r');
      try {
        await open();
        assert.ok(rt.notices.some((l) => l.includes(`cannot remove its dm-crypt mapping ${name}`)), rt.notices.join('\n'));
      } finally {
        await holder.close();
      }
      assert.ok(mappings().includes(name));
      await rt.app.start('eph');
      assert.notEqual(keyOf(name), leftoverKey, 'the leftover was replaced');
      assert.equal([...(await loops()).values()].filter((f) => f.startsWith(image)).length, 1, "the leftover's loop device is gone");
      await rt.app.shutdown('eph');
      assert.ok(!mappings().includes(name));

      // Killed between losetup and dmsetup: a loop device of the image and no mapping. The next start detaches it.
      await close();
      await crash('ephemeral.open.after-loop');
      await open();
      await rt.app.start('eph');
      assert.equal([...(await loops()).values()].filter((f) => f.startsWith(image)).length, 1, 'the stale loop device is gone');
      await rt.app.shutdown('eph');
      assert.equal([...(await loops()).values()].filter((f) => f.startsWith(image)).length, 0);

      const left = mappings();
      assert.ok(left.includes(foreign) && left.includes('qs-test-unrelated'), `others untouched: ${left.join(', ')}`);
    } finally {
      for (const m of [foreign, 'qs-test-unrelated']) if (mappings().includes(m)) sh(DMSETUP, ['remove', m]);
      sh(LOSETUP, ['--detach', otherLoop]);
    }
  });

  test('a block device is mapped as it is (no loop device), and left in place when the mapping goes', async () => {
    const raw = `qs-eph-${'f'.repeat(32)}`;
    const dev = await openCryptMapping(raw, RAW);
    try {
      assert.equal(dev, `/dev/mapper/${raw}`);
      assert.deepEqual(depsOf(raw), [path.basename(RAW)]);
      await writeThrough(dev, 4 * MiB, PLAINTEXT);
      assert.ok((await readAt(dev, 4 * MiB, MiB)).equals(PLAINTEXT));
    } finally {
      assert.equal(await closeCryptMapping(raw), true);
    }
    assert.ok(!mappings().includes(raw));
    assert.ok((await fs.stat(RAW)).isBlockDevice());
    assert.equal(await contains(flushedDisk(RAW), MARK), false, 'plaintext on the raw device');
  });
});
