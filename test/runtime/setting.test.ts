// Which runtime qubesd uses (src/runtime/setting.ts): --runtime, else
// QUBES_STORAGE_RUNTIME, else qemu where qemu is installed, bookkeeping
// elsewhere; and the line qubesd logs at start saying which and why. No
// guest boots here: the daemons start no domain.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { runtimeSetting } from '../../src/runtime/setting.js';
import { ensureDead, startQubesd } from '../daemon/helpers.js';

/** qemu-system-x86_64 as the shell finds it on PATH, or ''. */
function qemuOnPath(): string {
  try {
    return execFileSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}

describe('runtime setting', () => {
  it('--runtime wins over QUBES_STORAGE_RUNTIME, which wins over the default; unknown names are refused', async () => {
    const env = { PATH: '/usr/bin:/bin', QUBES_STORAGE_RUNTIME: 'qemu' };
    assert.deepEqual(await runtimeSetting('bookkeeping', env), { kind: 'bookkeeping', why: '--runtime' });
    assert.deepEqual(await runtimeSetting(undefined, env), { kind: 'qemu', qemu: { accel: 'auto' }, why: 'QUBES_STORAGE_RUNTIME' });
    assert.deepEqual(await runtimeSetting(undefined, { QUBES_STORAGE_RUNTIME: 'bookkeeping', QUBES_STORAGE_QEMU_ACCEL: 'tcg' }), {
      kind: 'bookkeeping',
      why: 'QUBES_STORAGE_RUNTIME',
    });
    await assert.rejects(runtimeSetting('xen', {}), /^QubesValueError: unknown runtime 'xen' \(bookkeeping or qemu\)$/);
    await assert.rejects(runtimeSetting(undefined, { QUBES_STORAGE_RUNTIME: 'vbox' }), /unknown runtime 'vbox'/);
    await assert.rejects(runtimeSetting('qemu', { QUBES_STORAGE_QEMU_ACCEL: 'hvf' }), /^QubesValueError: QUBES_STORAGE_QEMU_ACCEL=hvf: not auto, tcg, kvm$/);
  });

  it('the default: qemu where the binary QUBES_STORAGE_QEMU names is an executable file, bookkeeping where it is not, saying why', async () => {
    // Any executable file counts as installed (the setting does not run it): node itself.
    assert.deepEqual(await runtimeSetting(undefined, { QUBES_STORAGE_QEMU: process.execPath, QUBES_STORAGE_QEMU_ACCEL: 'tcg' }), {
      kind: 'qemu',
      qemu: { accel: 'tcg', qemu: process.execPath },
      why: `the default where qemu is installed: ${process.execPath}`,
    });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-setting-'));
    try {
      const notExec = path.join(dir, 'qemu');
      await fs.writeFile(notExec, '#!/bin/sh\n', { mode: 0o644 });
      for (const bin of [notExec, path.join(dir, 'missing')])
        assert.deepEqual(await runtimeSetting(undefined, { QUBES_STORAGE_QEMU: bin }), {
          kind: 'bookkeeping',
          why: `the default without qemu: QUBES_STORAGE_QEMU=${bin} is not an executable file; domains are not booted, their power state is only recorded`,
        });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('qubesd says at start which runtime it uses and why: the default here, and bookkeeping without qemu', async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-rt-'));
    try {
      const onPath = qemuOnPath();
      // The user's default (no QUBES_STORAGE_RUNTIME): qemu where it is on PATH.
      let d = await startQubesd(path.join(base, 'a'), path.join(base, 'a.sock'), [], { runtime: null, env: { QUBES_STORAGE_QEMU: '' } });
      await ensureDead(d);
      const first = d.stderr().split('\n')[0];
      if (onPath) assert.equal(first, `qubesd: runtime qemu (the default where qemu is installed: ${onPath})`);
      else assert.match(first ?? '', /^qubesd: runtime bookkeeping \(the default without qemu: no qemu-system-x86_64 on PATH/);
      d = await startQubesd(path.join(base, 'b'), path.join(base, 'b.sock'), [], { runtime: null, env: { QUBES_STORAGE_QEMU: path.join(base, 'no-qemu') } });
      await ensureDead(d);
      assert.equal(
        d.stderr().split('\n')[0],
        `qubesd: runtime bookkeeping (the default without qemu: QUBES_STORAGE_QEMU=${path.join(base, 'no-qemu')} is not an executable file; domains are not booted, their power state is only recorded)`,
      );
      // What every test's daemon gets (test/daemon/helpers.ts qubesdEnv): bookkeeping, named.
      d = await startQubesd(path.join(base, 'c'), path.join(base, 'c.sock'));
      await ensureDead(d);
      assert.equal(d.stderr().split('\n')[0], 'qubesd: runtime bookkeeping (QUBES_STORAGE_RUNTIME)');
    } finally {
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});
