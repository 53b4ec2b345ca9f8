/**
 * LVM's own commands, as the lvm_thin driver runs them: `lvm SUBCOMMAND
 * ARGS...` through execFile with an argument array (no shell), LC_ALL=C,
 * output bounded, reports read as JSON (`--reportformat json`) with sizes in
 * bytes without suffix, never parsed from human text. A failure is an
 * LvmError naming the command and what LVM said on stderr.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs/promises';

/** Largest stdout or stderr taken from one LVM command (a report of some 100,000 LVs). */
export const MAX_LVM_OUTPUT = 64 * 1024 * 1024;

/** The lvm binary (LVM's single entry point; `lvs` etc. are its subcommands). */
export const LVM = process.env['QUBES_STORAGE_LVM'] || 'lvm';

export class LvmError extends Error {
  constructor(
    message: string,
    /** The subcommand and its arguments. */
    readonly args: readonly string[],
    /** LVM's stderr, without the over-provisioning warnings. */
    readonly stderr: string,
    /** Exit status, or null when the command could not run (ENOENT: no lvm here). */
    readonly status: number | null,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** Warnings LVM prints on success that say nothing wrong (thin over-provisioning, which is the point). */
function filterStderr(s: string): string {
  return s
    .split('\n')
    .filter((l) => l.trim() !== '' && !/exceeds the size of thin pool|WARNING: Sum of all thin volume sizes|thin_pool_autoextend|To protect the pool from running out|Consider enabling auto/.test(l))
    .join('\n');
}

/** Runs `lvm ARGS...`; resolves with stdout. */
export function runLvm(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      LVM,
      [...args],
      { env: { ...process.env, LC_ALL: 'C', LVM_SUPPRESS_FD_WARNINGS: '1' }, maxBuffer: MAX_LVM_OUTPUT, encoding: 'utf8', windowsHide: true },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const e = err as NodeJS.ErrnoException & { code?: string | number };
        const said = filterStderr(String(stderr ?? ''));
        const cmd = `lvm ${args.join(' ')}`;
        if (e.code === 'ENOENT')
          return reject(new LvmError(`${cmd}: the lvm command is not installed here (Debian package lvm2)`, args, said, null, 'ENOENT'));
        if (e.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER')
          return reject(new LvmError(`${cmd}: output larger than ${MAX_LVM_OUTPUT} bytes`, args, said, null, 'E2BIG'));
        const status = typeof e.code === 'number' ? e.code : null;
        const last = said.split('\n').slice(-3).join('; ') || `exit status ${status ?? String(e.code)}`;
        reject(new LvmError(`${cmd} failed: ${last}`, args, said, status));
      },
    );
  });
}

/** One logical volume, as `lvs` reports it. */
export interface LvInfo {
  readonly name: string;
  /** The thin pool it lives in ('' for the thin pool itself and for other LVs). */
  poolLv: string;
  size: number;
  /** Bytes the LV uses (size * data_percent), null when LVM reports no percentage (inactive). */
  usage: number | null;
  /** lv_attr: [0] 't' thin pool, 'V' thin volume; [4] 'a' active. */
  attr: string;
  /** The LV a thin snapshot was taken of, while that LV exists ('' otherwise). */
  origin: string;
  /** Thin pools only: metadata size and usage in bytes. */
  metadataSize: number | null;
  metadataUsage: number | null;
}

/** The fields of `lvs` the driver reads (as Qubes' driver reads them). */
export const LVS_FIELDS = 'vg_name,lv_name,pool_lv,lv_size,data_percent,lv_attr,origin,lv_metadata_size,metadata_percent';

/** `lvm lvs` of one volume group, as JSON with byte sizes. */
export function lvsArgs(vg: string): string[] {
  return ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_FIELDS, '--', vg];
}

/** A field of the report as text (LVM writes strings; anything else is no value). */
function text(v: unknown): string {
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '';
}

/** A byte count of the report ('' or absent: null). */
function bytes(v: unknown, what: string): number | null {
  const s = text(v);
  if (s === '') return null;
  if (!/^[0-9]{1,18}$/.test(s)) throw new Error(`lvs reported ${what} '${s.slice(0, 40)}', not a number of bytes`);
  return Number(s);
}

function percent(v: unknown, what: string): number | null {
  const s = text(v);
  if (s === '') return null;
  if (!/^[0-9]{1,3}(\.[0-9]{1,6})?$/.test(s)) throw new Error(`lvs reported ${what} '${s.slice(0, 40)}', not a percentage`);
  return Number(s);
}

/** `part` percent of `size`, in whole bytes (as Qubes computes data_usage and metadata_usage). */
export function ofPercent(size: number, pct: number): number {
  return Math.floor((size * pct) / 100);
}

/** Parses the JSON report of lvsArgs: the LVs of volume group `vg`, by name. */
export function parseLvs(json: string, vg: string): Map<string, LvInfo> {
  const doc = JSON.parse(json) as { report?: { lv?: Record<string, unknown>[] }[] };
  const rows = doc.report?.[0]?.lv;
  if (!Array.isArray(rows)) throw new Error('lvs gave no report of logical volumes');
  const out = new Map<string, LvInfo>();
  for (const r of rows) {
    if (r['vg_name'] !== vg) continue;
    const name = text(r['lv_name']);
    if (!name) continue;
    const size = bytes(r['lv_size'], `lv_size of ${name}`) ?? 0;
    const dataPct = percent(r['data_percent'], `data_percent of ${name}`);
    const metaSize = bytes(r['lv_metadata_size'], `lv_metadata_size of ${name}`);
    const metaPct = percent(r['metadata_percent'], `metadata_percent of ${name}`);
    out.set(name, {
      name,
      poolLv: text(r['pool_lv']),
      size,
      usage: dataPct === null ? null : ofPercent(size, dataPct),
      attr: text(r['lv_attr']),
      origin: text(r['origin']),
      metadataSize: metaSize,
      metadataUsage: metaSize !== null && metaPct !== null ? ofPercent(metaSize, metaPct) : null,
    });
  }
  return out;
}

/** Bytes of the block device at `p` (through its sysfs size), or null when it is not one. */
export async function deviceSize(p: string): Promise<number | null> {
  try {
    const real = await fs.realpath(p);
    const st = await fs.stat(real);
    if (!st.isBlockDevice()) return null;
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    const sectors = (await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim();
    return /^[0-9]+$/.test(sectors) ? Number(sectors) * 512 : null;
  } catch {
    return null;
  }
}
