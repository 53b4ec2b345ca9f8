// Crash-campaign child: opens the App of DIR and runs the operations it is
// given, logging every step to a journal (one JSON line per step, appended
// and fsynced before the step it announces is taken). The journal says how
// far the child got; it carries no expected data (the parent's model computes
// that from the plan), only what a start showed, to be checked. The parent kills it
// with SIGKILL at a failpoint (QUBES_STORAGE_FAILPOINTS) or on a timer, or
// lets it finish; a `run` that does not stop the domain ends with a SIGKILL
// of its own (a host crash while the domain runs).
//
// Usage: node child.js DIR REFLINK(true|false) JOURNAL OPS_JSON [app|daemon]
// Prints "R\n" on stdout once the App is open, just before the first op.
// `daemon`: the operations go to a daemon over its socket instead
// (child-daemon.ts).
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { QubesApp } from '../../src/domain/app.js';
import { crashNow } from '../../src/files/failpoint.js';
import { runViaDaemon } from './child-daemon.js';
import { DriverRegistry } from '../../src/registry/drivers.js';
import type { FileReflinkVolume } from '../../src/drivers/file-reflink/volume.js';
import type { Volume } from '../../src/storage/volume.js';
import { pattern, writeAt } from '../helpers/data.js';

export const PAGE = 4096;
export const ROOT_SIZE = 4 * 1024 * 1024;
export const PRIVATE_SIZE = 2 * 1024 * 1024;

/**
 * The file-based drivers the campaigns run pools of: file-reflink (keeps 2
 * revisions here), and file and its R3.2 name xen (the same volume code with
 * the Qubes file layout, `NAME-cow.img`, at most 1 revision; 0 too).
 */
export const CAMPAIGN_DRIVERS = ['file-reflink', 'file', 'xen'] as const;
export type CampaignDriver = (typeof CAMPAIGN_DRIVERS)[number];
/** What a pool of the campaign is made with. */
export interface PoolSpec {
  driver: string;
  /** The pool's revisions_to_keep. */
  keep: number;
}

/** One operation, as the parent plans it. */
export type Op =
  | { kind: 'create'; name: string; template: string; pool: string }
  | { kind: 'clone'; src: string; dst: string; pool: string | null }
  | { kind: 'remove'; name: string }
  | { kind: 'run'; name: string; writes: { vol: 'private' | 'root'; offset: number; seed: number }[]; stop: boolean }
  | { kind: 'resize'; name: string; size: number }
  | { kind: 'revert'; name: string }
  | { kind: 'import'; name: string; size: number; offset: number; seed: number }
  | { kind: 'pool-add'; driver: string; keep: number }
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

/** The options of a campaign pool (setup_check is file-reflink's alone: the file driver always allows sparse copies). */
export function campaignPoolOptions(dir: string, name: string, reflink: boolean, spec: PoolSpec): Record<string, string | number | boolean> {
  return {
    dir_path: poolDir(dir, name),
    ...(spec.driver === 'file-reflink' ? { setup_check: reflink } : {}),
    revisions_to_keep: spec.keep,
  };
}

export async function addCampaignPool(app: QubesApp, dir: string, name: string, reflink: boolean, spec: PoolSpec): Promise<void> {
  await app.addPool(spec.driver, name, campaignPoolOptions(dir, name, reflink, spec));
}

export function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
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

function writeUnflushed(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
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
      await addCampaignPool(app, dir, 'extra', reflink, op);
      break;
    case 'pool-remove':
      await app.removePool('extra');
      break;
    case 'run': {
      const d = app.domain(op.name);
      await app.start(op.name);
      // What the domain sees of each origin volume right after the start: an
      // observation the parent checks against its model.
      const seen: Record<string, string> = {};
      for (const name of ['private', 'root']) {
        const v = d.storage.volumes.get(name);
        if (!v || !v.save_on_stop || v.snap_on_start) continue;
        seen[name] = sha(fs.readFileSync(await v.path()));
      }
      log('started', { seen });
      for (const [k, w] of op.writes.entries()) {
        log('writing', { vol: w.vol, w: k });
        // One page at a page offset: a kill cannot leave it half written. Not flushed, as a
        // domain's writes often are not: only the commit at the stop makes it durable.
        writeUnflushed(await d.storage.get(w.vol).path(), w.offset, pattern(PAGE, w.seed));
        log('wrote', { vol: w.vol, w: k });
      }
      if (!op.stop) {
        log('left-running');
        crashNow(); // a host crash (a power cut in the power-loss campaign) while the domain runs
      }
      log('stopping');
      await app.shutdown(op.name);
      break;
    }
    case 'resize': {
      const v = app.domain(op.name).storage.get('private');
      log('resizing');
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
      if ((await v.revisions()).length === 0 || exists(files(v).dirty)) {
        log('skip', { why: exists(files(v).dirty) ? 'dirty' : 'no revision' });
        break;
      }
      log('reverting');
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
      await writeAt(p, op.offset, pattern(PAGE, op.seed));
      log('importing');
      await v.importDataEnd(true);
      log('imported');
      await app.save();
      break;
    }
  }
  log('done');
}

async function main(): Promise<void> {
  const [dir, reflink, journal, opsJson, mode] = process.argv.slice(2);
  const ops = JSON.parse(opsJson!) as Op[];
  const j = new Journal(journal!);
  if (mode === 'daemon') {
    const log = (i: number, s: string, extra: Record<string, unknown> = {}): void => j.log({ i, s, ...extra });
    return runViaDaemon(dir!, reflink === 'true', ops, log, sha, path.dirname(journal!));
  }
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
