// Crash-campaign child: opens the App of DIR and runs the operations it is
// given, logging every step to a journal (one JSON line per step, appended
// and fsynced before the step it announces is taken). The parent kills it
// with SIGKILL at a failpoint (QUBES_STORAGE_FAILPOINTS) or on a timer, or
// lets it finish; a `run` that does not stop the domain ends with a SIGKILL
// of its own (a host crash while the domain runs).
//
// Usage: node child.js DIR REFLINK(true|false) JOURNAL OPS_JSON
// Prints "R\n" on stdout once the App is open, just before the first op.
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { QubesApp } from '../../src/domain/app.js';
import { DriverRegistry } from '../../src/registry/drivers.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import type { Volume } from '../../src/storage/volume.js';
import { pattern, writeAt } from '../helpers/data.js';

export const PAGE = 4096;
export const ROOT_SIZE = 4 * 1024 * 1024;
export const PRIVATE_SIZE = 2 * 1024 * 1024;
export const REVISIONS_TO_KEEP = 2;

/** One operation, as the parent plans it. */
export type Op =
  | { kind: 'create'; name: string; template: string; pool: string }
  | { kind: 'clone'; src: string; dst: string; pool: string | null }
  | { kind: 'remove'; name: string }
  | { kind: 'run'; name: string; writes: { vol: 'private' | 'root'; offset: number; seed: number }[]; stop: boolean }
  | { kind: 'resize'; name: string; size: number }
  | { kind: 'revert'; name: string }
  | { kind: 'import'; name: string; size: number; offset: number; seed: number }
  | { kind: 'pool-add' }
  | { kind: 'pool-remove' };

/** One journal line. `i` is the index of the op in the child's list. */
export interface Step {
  i: number;
  s: string;
  [k: string]: unknown;
}

export function poolDir(dir: string, pool: string): string {
  return path.join(dir, pool === 'default' ? 'pool' : `${pool}-pool`);
}

export async function openCampaignApp(dir: string): Promise<QubesApp> {
  return QubesApp.open({
    stateFile: path.join(dir, 'qubes.xml'),
    pools: await DriverRegistry.open({ nodeModules: [] }),
    sizes: { root: ROOT_SIZE, private: PRIVATE_SIZE },
  });
}

export async function addCampaignPool(app: QubesApp, dir: string, name: string, reflink: boolean): Promise<void> {
  await app.addPool('file-reflink', name, {
    dir_path: poolDir(dir, name),
    setup_check: reflink,
    revisions_to_keep: REVISIONS_TO_KEEP,
  });
}

export function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** sha256 of `data` followed by zeros up to `size` bytes. */
export function shaPadded(data: Buffer, size: number): string {
  const h = createHash('sha256');
  h.update(data.subarray(0, Math.min(data.length, size)));
  let left = size - Math.min(data.length, size);
  const zeros = Buffer.alloc(1024 * 1024);
  while (left > 0) {
    const n = Math.min(left, zeros.length);
    h.update(zeros.subarray(0, n));
    left -= n;
  }
  return h.digest('hex');
}

function exists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

class Journal {
  private readonly fd: number;
  constructor(file: string) {
    this.fd = fs.openSync(file, 'a');
  }
  log(step: Step): void {
    fs.writeSync(this.fd, JSON.stringify(step) + '\n');
    fs.fsyncSync(this.fd);
  }
}

function files(v: Volume): FileReflinkVolume['files'] {
  return (v as FileReflinkVolume).files;
}

async function runOp(app: QubesApp, dir: string, reflink: boolean, op: Op, i: number, j: Journal): Promise<void> {
  const log = (s: string, extra: Record<string, unknown> = {}): void => j.log({ i, s, ...extra });
  log('begin');
  switch (op.kind) {
    case 'create':
      await app.createDomain({ klass: 'AppVM', name: op.name, label: 'red', template: op.template, pool: op.pool });
      break;
    case 'clone':
      await app.cloneDomain(op.src, op.dst, op.pool ? { pool: op.pool } : {});
      break;
    case 'remove':
      await app.removeDomain(op.name);
      break;
    case 'pool-add':
      await addCampaignPool(app, dir, 'extra', reflink);
      break;
    case 'pool-remove':
      await app.removePool('extra');
      break;
    case 'run': {
      const d = app.domain(op.name);
      await app.start(op.name);
      // What the domain sees of each origin volume right after the start.
      const bufs = new Map<string, Buffer>();
      const seen: Record<string, string> = {};
      for (const name of ['private', 'root']) {
        const v = d.storage.volumes.get(name);
        if (!v || !v.save_on_stop || v.snap_on_start) continue;
        const b = fs.readFileSync(await v.path());
        bufs.set(name, b);
        seen[name] = sha(b);
      }
      log('started', { seen });
      for (const w of op.writes) {
        const v = d.storage.get(w.vol);
        const b = bufs.get(w.vol)!;
        const data = pattern(PAGE, w.seed);
        const off = Math.min(w.offset, Math.max(0, b.length - PAGE)) & ~(PAGE - 1);
        data.copy(b, off);
        log('writing', { vol: w.vol, h: sha(b) });
        // One page at a page offset: a kill cannot leave it half written.
        await writeAt(await v.path(), off, data);
        log('wrote', { vol: w.vol });
      }
      if (!op.stop) {
        log('left-running');
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => undefined);
      }
      log('stopping');
      await app.shutdown(op.name);
      break;
    }
    case 'resize': {
      const v = app.domain(op.name).storage.get('private');
      const f = files(v);
      const clean = fs.readFileSync(f.clean);
      const work = exists(f.dirty) ? fs.readFileSync(f.dirty) : null;
      log('resizing', { clean: shaPadded(clean, op.size), work: work ? shaPadded(work, op.size) : null, size: op.size, cleanSize: clean.length });
      try {
        await v.resize(op.size);
      } catch (e) {
        // Planned from a size the state recorded before a crash; the image is larger: a shrink, refused.
        if (!/shrinking/.test((e as Error).message)) throw e;
        log('refused', { why: (e as Error).message });
        break;
      }
      log('resized');
      await app.save();
      break;
    }
    case 'revert': {
      const v = app.domain(op.name).storage.get('private');
      const revs = await v.revisions();
      const newest = revs.at(-1);
      if (!newest || exists(files(v).dirty)) {
        log('skip', { why: newest ? 'dirty' : 'no revision' });
        break;
      }
      const h = sha(fs.readFileSync(files(v).revision(Number(newest.id), newest.time)));
      log('reverting', { h });
      await v.revert();
      log('reverted');
      await app.save(); // as admin.vm.volume.Revert does: the size may have changed
      break;
    }
    case 'import': {
      const v = app.domain(op.name).storage.get('private');
      if (exists(files(v).dirty)) {
        log('skip', { why: 'dirty' });
        break;
      }
      const p = await v.importData(op.size);
      log('import-open');
      const data = pattern(PAGE, op.seed);
      const img = Buffer.alloc(op.size);
      const off = Math.min(op.offset, op.size - PAGE) & ~(PAGE - 1);
      data.copy(img, off);
      log('importing', { h: sha(img), size: op.size });
      await writeAt(p, off, data);
      await v.importDataEnd(true);
      log('imported');
      await app.save();
      break;
    }
  }
  log('done');
}

async function main(): Promise<void> {
  const [dir, reflink, journal, opsJson] = process.argv.slice(2);
  const ops = JSON.parse(opsJson!) as Op[];
  const j = new Journal(journal!);
  const app = await openCampaignApp(dir!);
  process.stdout.write('R\n');
  try {
    for (let i = 0; i < ops.length; i++) await runOp(app, dir!, reflink === 'true', ops[i]!, i, j);
  } finally {
    await app.close();
  }
}

if (process.argv[1]?.endsWith(`${path.sep}child.js`)) {
  main().catch((e) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
