// The power-cut test of the lvm_thin driver, run inside the test VM (by
// in-vm.ts, in the same guest as the other lvm_thin tests).
//
// The volume group `qs_cut` sits on a device-mapper device `qscutpv` over a
// scratch disk, whose table is `linear` normally. A child process
// (power-cut-child.ts) runs a seeded random plan of driver operations and
// acknowledges each one on stdout. At a random moment the power is cut:
//   1. `dmsetup suspend --noflush qscutpv` (writes in flight finish; new
//      ones wait), load a `flakey` table that drops every write (up 0 s,
//      down 1 s: always down; feature drop_writes: writes are completed
//      without reaching the disk, reads still work);
//   2. SIGKILL the child's process group (the node child and its lvm
//      commands) while the device is suspended, so nothing it does after the
//      cut can be acknowledged;
//   3. resume: from here on no write reaches the disk;
//   4. the reboot: every device-mapper device of the VG is removed (the thin
//      volumes, then the thin pool: what the kernel held in memory, the
//      thin pool's uncommitted metadata among it, is gone; what the teardown
//      writes is dropped), the page cache dropped, the linear table loaded
//      again, `vgchange -ay` (LVM checks the thin pool with thin_check).
// Then the pool is opened again with the driver and checked against the
// model (power-cut-plan.ts), whose expectations come from the plan: every
// acknowledged operation is there with its data; the operation in flight at
// the cut is either wholly there or wholly absent; the first operations
// after the reboot (a start and a stop of each dirty volume, an export of each volume)
// leave no debris (no -snap, -import LV, no export file).
//
// What it does not model: the scratch disk is a file on the host through
// virtio, so a write the guest's disk completed before the cut is kept even
// if no flush followed it (a disk's volatile cache losing unflushed writes
// would need dm-log-writes and a replay up to each flush).
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import { fileURLToPath } from 'node:url';
import { openPool } from '../../conformance/open-pool.js';
import { pattern, readAt, writeAt } from '../../helpers/data.js';
import type { LvmThinPool } from '../../../src/drivers/lvm-thin/index.js';
import { lvm, lvsOf, makeThinPools } from './lvm-cmd.js';
import { wipeThinVolumes } from './target.js';
import { makePlan, modelAfter, PAGE, planSeeds, rng, settle, VOLS, type CutOp, type Data, type Model } from './power-cut-plan.js';

/** The device-mapper device the PV sits on, and the VG and thin pool on it. */
export const CUT_PV = 'qscutpv';
export const CUT_PV_PATH = `/dev/mapper/${CUT_PV}`;
const VG = 'qs_cut';
const THIN = 'thin';
const KEEP = 2;
const PLAN_LENGTH = 9;
const CHILD = fileURLToPath(new URL('./power-cut-child.js', import.meta.url));

/** A command that hangs (a device left suspended) is killed after this, and the test fails with what blocks. */
const HANG_MS = 180_000;

/** `dmsetup ARGS...` managing its device nodes itself (no udev in the guest). */
function dmsetup(...args: string[]): string {
  return execFileSync('dmsetup', args, { encoding: 'utf8', env: { ...process.env, DM_DISABLE_UDEV: '1' }, stdio: ['ignore', 'pipe', 'pipe'], timeout: HANG_MS });
}

/** Progress on stderr (the host shows the guest's last lines when the guest fails or hangs). */
const t0 = Date.now();
function trace(what: string): void {
  process.stderr.write(`power-cut ${((Date.now() - t0) / 1000).toFixed(1)}s: ${what}\n`);
}

let disk = '';
let sectors = 0;
const linearTable = (): string => `0 ${sectors} linear ${disk} 0`;
/** Every write is completed without reaching the disk (always in the down interval); reads pass. */
const droppingTable = (): string => `0 ${sectors} flakey ${disk} 0 0 1 1 drop_writes`;

function loadTable(table: string, noflush: boolean): void {
  dmsetup('suspend', ...(noflush ? ['--noflush'] : []), CUT_PV);
  dmsetup('load', CUT_PV, '--table', table);
}

/**
 * The power cut: from now on no write reaches the disk. `pgid`: the child's
 * process group, killed while the device is suspended (it can acknowledge
 * nothing that the cut loses).
 */
function cutPower(pgid: number | null): void {
  try {
    loadTable(droppingTable(), true);
  } catch (e) {
    throw new Error(`the cut: ${(e as Error).message}\n${hangDump()}`, { cause: e });
  }
  if (pgid !== null) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  dmsetup('resume', CUT_PV);
}

async function groupGone(pgid: number): Promise<void> {
  for (let n = 0; n < 600; n++) {
    try {
      process.kill(-pgid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the child's process group ${pgid} is still there 60 s after SIGKILL`);
}

/** Device-mapper devices of the VG (dm names `qs_cut-...`). */
function vgDevices(): string[] {
  return dmsetup('ls')
    .split('\n')
    .map((l) => l.split('\t')[0]!.trim())
    .filter((n) => n.startsWith(`${VG}-`));
}

/**
 * The reboot after the cut: the VG's devices go (thin volumes first, then
 * the pool: in rounds, a device in use goes in a later one), with the
 * dropping table still under them; caches dropped; the linear table back;
 * the VG activated again as at boot.
 */
function reboot(): void {
  trace('reboot: removing the VG devices');
  for (const n of vgDevices()) spawnSync('dmsetup', ['resume', n], { env: { ...process.env, DM_DISABLE_UDEV: '1' }, timeout: HANG_MS });
  let left = vgDevices();
  for (let round = 0; left.length && round < 20; round++) {
    for (const n of left) spawnSync('dmsetup', ['remove', n], { env: { ...process.env, DM_DISABLE_UDEV: '1' }, timeout: HANG_MS });
    left = vgDevices();
  }
  if (left.length) throw new Error(`the reboot could not remove ${left.join(', ')}`);
  execFileSync('rm', ['-rf', `/dev/${VG}`]);
  execFileSync('sync', { timeout: HANG_MS });
  execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
  trace('reboot: the linear table back, vgchange -ay');
  loadTable(linearTable(), false);
  dmsetup('resume', CUT_PV);
  try {
    lvm('vgchange', '-q', '-ay', VG);
  } catch (e) {
    throw new Error(`the reboot: ${(e as Error).message.trim()}\n${stateDump()}`, { cause: e });
  }
}

/** What LVM and the kernel say about the VG, for a failure's message. */
function stateDump(): string {
  const show = (cmd: string, args: string[]): string => {
    const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, DM_DISABLE_UDEV: '1', LC_ALL: 'C' } });
    return `$ ${cmd} ${args.join(' ')}\n${r.stdout}${r.stderr}`;
  };
  return [
    show('lvm', ['lvs', '-a', '-o', 'lv_name,lv_attr,thin_id,transaction_id,origin,lv_size', VG]),
    show('dmsetup', ['status']),
    show('sh', ['-c', 'dmesg | tail -n 15']),
  ].join('\n');
}

/** What is blocked and which devices are suspended, for a hang's message (no LVM command: it could block too). */
function hangDump(): string {
  const show = (cmd: string, args: string[]): string => {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000, env: { ...process.env, DM_DISABLE_UDEV: '1', LC_ALL: 'C' } });
    return `$ ${cmd} ${args.join(' ')}\n${r.stdout}${r.stderr}`;
  };
  return [
    show('ps', ['-eo', 'pid,pgid,stat,wchan:32,args']),
    show('dmsetup', ['info', '-c', '-o', 'name,attr,open,devno']),
    show('sh', ['-c', 'for p in $(ps -eo pid=,stat= | awk \'$2 ~ /D/ {print $1}\'); do echo "== $p"; cat /proc/$p/stack; done']),
    show('sh', ['-c', 'dmesg | tail -n 20']),
  ].join('\n');
}

/** After a failed cut: every thin volume of the VG removed, active or not (one lvremove). */
function emptyThinPool(): void {
  const lvs = [...lvsOf(VG).entries()].filter(([, r]) => r['pool_lv'] === THIN).map(([n]) => `${VG}/${n}`);
  if (lvs.length) lvm('lvremove', '-q', '-ff', ...lvs);
}

/** Sets up the PV device over `scratch` and the VG with its thin pool. */
export function setupPowerCut(scratch: string): void {
  disk = scratch;
  sectors = Number(execFileSync('blockdev', ['--getsz', scratch], { encoding: 'utf8' }).trim());
  dmsetup('create', CUT_PV, '--table', linearTable());
  dmsetup('mknodes', CUT_PV);
  makeThinPools(CUT_PV_PATH, VG, [{ name: THIN, size: '300M' }]);
}

const lvOf = (vol: string): string => `vm-${vol}-private`;

/** Which seed's page a device holds at offset 0 (-1: none of the plan's). */
async function seedAt(dev: string, seeds: readonly number[]): Promise<number> {
  const got = await readAt(dev, 0, PAGE);
  for (const s of seeds) if ((s === 0 ? Buffer.alloc(PAGE) : pattern(PAGE, s)).equals(got)) return s;
  return -1;
}

interface Observed {
  size: number;
  seed: number;
  revs: number[];
}

/** What the VG holds per volume, read with plain LVM commands and the devices (not the driver). */
async function observe(seeds: readonly number[]): Promise<Map<string, Observed>> {
  const lvs = lvsOf(VG);
  const out = new Map<string, Observed>();
  for (const vol of VOLS) {
    const lv = lvOf(vol);
    const revs = [...lvs.keys()]
      .map((n) => (n.startsWith(`${lv}-`) ? /^([0-9]+)-back$/.exec(n.slice(lv.length + 1)) : null))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ lv: `${lv}-${m[0]}`, t: Number(m[1]) }))
      .sort((a, b) => a.t - b.t);
    // The committed data: LV, else (a commit or revert cut between its renames) the newest revision.
    const cur = lvs.has(lv) ? lv : revs.pop()?.lv;
    if (!cur) continue;
    const revSeeds: number[] = [];
    for (const r of revs) revSeeds.push(await seedAt(`/dev/${VG}/${r.lv}`, seeds));
    out.set(vol, { size: Number(lvs.get(cur)!['lv_size']), seed: await seedAt(`/dev/${VG}/${cur}`, seeds), revs: revSeeds });
  }
  return out;
}

/** Why `obs` is not `m` ('' when it is); `revsSubset`: that volume's revisions may be any of the model's (a remove cut off). */
function mismatch(obs: Map<string, Observed>, m: Model, revsSubset: string | null): string {
  const why: string[] = [];
  for (const vol of VOLS) {
    const o = obs.get(vol);
    const e = m.get(vol);
    if (!o && !e) continue;
    if (!o || !e) {
      why.push(`${vol}: ${o ? 'present' : 'absent'}, expected ${e ? 'present' : 'absent'}`);
      continue;
    }
    if (o.size !== e.data.size) why.push(`${vol}: size ${o.size}, expected ${e.data.size}`);
    const ok = [e.data.seed, ...e.data.maybe];
    if (!ok.includes(o.seed)) why.push(`${vol}: data ${o.seed}, expected ${ok.join(' or ')}`);
    const allowed = (d: Data): number[] => [d.seed, ...d.maybe];
    const sameRevs =
      revsSubset === vol
        ? o.revs.every((s) => e.revs.some((r) => allowed(r).includes(s)))
        : o.revs.length === e.revs.length && o.revs.every((s, i) => allowed(e.revs[i]!).includes(s));
    if (!sameRevs) why.push(`${vol}: revisions [${o.revs.join(',')}], expected [${e.revs.map((r) => allowed(r).join('|')).join(',')}]`);
  }
  return why.join('; ');
}

/** Runs the child until `cutAfter` acknowledgements and `delayMs` more, cuts the power; the acknowledged count. */
async function runAndCut(plan: CutOp[], cutAfter: number, delayMs: number): Promise<{ acked: number; log: string }> {
  const child = spawn(process.execPath, [CHILD, VG, THIN, String(KEEP), JSON.stringify(plan)], { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const pgid = child.pid!;
  let out = '';
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
  let exited = false;
  child.on('exit', () => (exited = true));
  const acks = (): number => out.split('\n').filter((l) => l.startsWith('ACK ')).length;
  // A child that stops making progress (an operation blocked) fails the test with what blocks, rather than hanging the guest.
  let stuck = false;
  await new Promise<void>((resolve) => {
    let guard = setTimeout(() => ((stuck = true), resolve()), HANG_MS);
    const check = (): void => {
      if (acks() >= cutAfter || /^(DONE|FAIL)/m.test(out) || exited) {
        clearTimeout(guard);
        resolve();
      }
    };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      clearTimeout(guard);
      guard = setTimeout(() => ((stuck = true), resolve()), HANG_MS);
      check();
    });
    child.on('exit', check);
  });
  if (stuck) {
    const dump = hangDump();
    process.kill(-pgid, 'SIGKILL');
    throw new Error(`the child made no progress for ${HANG_MS / 1000} s before the cut: ${out.trim()}\n${dump}`);
  }
  if (/^FAIL/m.test(out) || (exited && !/^DONE/m.test(out))) {
    await closed;
    throw new Error(`the child failed before the cut (no cut was made; its messages are on stderr): ${out}`);
  }
  await new Promise((r) => setTimeout(r, delayMs));
  trace(`the cut, after ${acks()} acknowledgements`);
  cutPower(pgid);
  let guard: NodeJS.Timeout | undefined;
  const ended = await Promise.race([closed.then(() => true), new Promise<boolean>((r) => (guard = setTimeout(() => r(false), HANG_MS)))]);
  clearTimeout(guard);
  if (!ended) throw new Error(`the child's output did not end ${HANG_MS / 1000} s after SIGKILL\n${hangDump()}`);
  await groupGone(pgid);
  return { acked: acks(), log: out.trim().replace(/\n/g, ' ') };
}

/** The first operations after the reboot, through the driver: each dirty volume started and stopped (committed), each exported. */
async function settleWithDriver(seeds: readonly number[]): Promise<Map<string, { size: number; seed: number }>> {
  const pool = (await openPool('lvm_thin', 'reboot', { volume_group: VG, thin_pool: THIN, revisions_to_keep: KEEP })) as LvmThinPool;
  await pool.setup();
  await pool.sweepLeftovers();
  const lvs = lvsOf(VG);
  const exported = new Map<string, { size: number; seed: number }>();
  for (const vol of VOLS) {
    const lv = lvOf(vol);
    if (![...lvs.keys()].some((n) => n === lv || n.startsWith(`${lv}-`))) continue;
    const v = pool.initVolume({ name: vol, dirPrefix: 'appvms' }, { name: 'private', rw: true, save_on_stop: true, size: 8 * 1024 * 1024 });
    // A dirty volume's domain starts again (its running copy is kept) and shuts down (the copy is committed).
    if (await v.isDirty()) {
      await v.start();
      await v.stop();
    }
    const p = await v.export();
    try {
      exported.set(vol, { size: (await fs.stat(p)).size, seed: await seedAt(p, seeds) });
    } finally {
      await v.exportEnd(p);
    }
  }
  return exported;
}

function cutCount(): number {
  const n = Number(process.env['QS_LVM_POWERCUTS'] ?? '3');
  if (!Number.isInteger(n) || n < 0 || n > 1000) throw new Error(`QS_LVM_POWERCUTS=${process.env['QS_LVM_POWERCUTS']}: not a count from 0 to 1000`);
  return n;
}

function baseSeed(): number {
  const env = process.env['QS_LVM_POWERCUT_SEED'];
  if (env !== undefined) {
    if (!/^[0-9]{1,9}$/.test(env)) throw new Error(`QS_LVM_POWERCUT_SEED=${env}: not a number`);
    return Number(env);
  }
  return Math.floor(Math.random() * 1e6);
}

export function describePowerCut(scratch: string): void {
  describe('lvm_thin survives power cuts: the PV on dm-flakey dropping every write from a random moment [vm]', () => {
    before(() => setupPowerCut(scratch));

    it('the cut bites: a write and an LV made after the cut are gone after the reboot, what came before stays', async () => {
      await wipeThinVolumes(VG, THIN);
      lvm('lvcreate', '-q', '--thin', '-V', '4M', '-n', 'canary', `${VG}/${THIN}`);
      await writeAt(`/dev/${VG}/canary`, 0, pattern(PAGE, 1));
      cutPower(null);
      await writeAt(`/dev/${VG}/canary`, 0, pattern(PAGE, 2));
      let madeAfter = true;
      try {
        lvm('lvcreate', '-q', '--thin', '-V', '4M', '-n', 'aftercut', `${VG}/${THIN}`);
      } catch {
        madeAfter = false; // LVM may notice that its metadata did not reach the disk
      }
      reboot();
      assert.equal(await seedAt(`/dev/${VG}/canary`, [0, 1, 2]), 1, 'the canary holds what was written before the cut');
      assert.ok(!lvsOf(VG).has('aftercut'), `the LV made after the cut (lvcreate ${madeAfter ? 'succeeded' : 'failed'}) is gone`);
      lvm('lvremove', '-q', '--force', `${VG}/canary`);
    });

    let unclean = false;
    const base = baseSeed();
    const cuts = cutCount();
    for (let i = 0; i < cuts; i++) {
      it(`power cut ${i + 1} of ${cuts} (QS_LVM_POWERCUT_SEED=${base} QS_LVM_POWERCUTS=${cuts}): every acknowledged operation survives, the one in flight is all or nothing, no debris after the first operations`, async (t) => {
        const seed = base + i;
        // Each cut starts from an empty thin pool (after a failed one, inactive thin volumes are removed too).
        trace(`cut ${i + 1}: emptying the thin pool`);
        if (unclean) emptyThinPool();
        else await wipeThinVolumes(VG, THIN);
        unclean = true;
        const plan = makePlan(seed, PLAN_LENGTH, KEEP);
        const rand = rng(seed ^ 0x5bd1e995);
        const cutAfter = 2 + Math.floor(rand() * (plan.length - 1));
        const delayMs = Math.floor(rand() * 2500);
        trace(`cut ${i + 1}: seed ${seed}, the child runs, cut ${delayMs} ms after acknowledgement ${cutAfter}`);
        const { acked, log } = await runAndCut(plan, cutAfter, delayMs);
        const inFlight = acked < plan.length ? plan[acked]! : null;
        t.diagnostic(`seed ${seed}: plan ${JSON.stringify(plan)}`);
        t.diagnostic(`cut ${delayMs} ms after acknowledgement ${cutAfter}: child said ${log}; in flight: ${inFlight ? JSON.stringify(inFlight) : 'nothing'}`);
        reboot();
        const seeds = planSeeds(plan);
        trace(`cut ${i + 1}: the first operations after the reboot`);
        const exported = await settleWithDriver(seeds);
        const obs = await observe(seeds);
        t.diagnostic(`after the reboot and the first operations: ${JSON.stringify([...obs])}`);

        const old = settle(modelAfter(plan, acked, KEEP), KEEP);
        const whyOld = mismatch(obs, old, inFlight?.op === 'remove' ? inFlight.vol : null);
        const whyNew = inFlight ? mismatch(obs, settle(modelAfter(plan, acked + 1, KEEP), KEEP), null) : 'no operation in flight';
        assert.ok(whyOld === '' || whyNew === '', `neither the state before the operation in flight (${whyOld}) nor after it (${whyNew})`);

        // The driver's export is the committed data the devices hold.
        for (const [vol, o] of obs) {
          assert.deepEqual(exported.get(vol), { size: o.size, seed: o.seed }, `${vol}: the driver's export (size, data) is the committed LV`);
        }
        // No debris: running copies and imports are gone after the first operations; no export file is left.
        const debris = [...lvsOf(VG).keys()].filter((n) => /-(snap|import)$/.test(n));
        debris.push(...(await fs.readdir(os.tmpdir())).filter((n) => n.startsWith('qs-lvm-export-')));
        assert.deepEqual(debris, [], 'debris after the first operations');
        unclean = false;
      });
    }
  });
}
