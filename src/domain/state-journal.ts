/**
 * The state journal: changes to a big state file, appended instead of
 * rewriting the whole file for each save.
 *
 * With 10,000 domains qubes.xml is ~10 MB; rewriting and fsyncing it for
 * every created domain makes creating N domains cost O(N^2). A save that
 * changes a few domains instead appends one record to `qubes.xml.journal`
 * and fdatasyncs it: O(change). The App folds the journal into qubes.xml
 * (compaction: the usual atomic rewrite, then the journal is emptied) when
 * the journal grows past half of the state file, at open after a crash, and
 * at close, so a stopped daemon leaves a complete qubes.xml as Qubes does.
 *
 * Format: a header line, then records, each
 *
 *     @ LENGTH CHECKSUM\n PAYLOAD \n
 *
 * with PAYLOAD LENGTH bytes of JSON (a list of units) and CHECKSUM the first
 * 16 hex digits of its SHA-256. A unit sets one part of the document to
 * what it is now: `{"section": "pools", "xml": "<pools>...</pools>"}` (also
 * labels, properties), `{"domain": "QID", "xml": "<domain ...>...</domain>"}`
 * or `{"domain": "QID", "xml": null}` (removed; dom0's key is "dom0"). Units
 * set state rather than describe edits, so replaying a journal onto a state
 * file that already holds its changes (a crash between a compaction's
 * rewrite and its emptying of the journal) changes nothing.
 *
 * A crash can tear only the last record (each is written once and synced
 * before the next): an incomplete or mismatching last record is dropped. A
 * bad record followed by a good one is corruption and refused by name.
 */
import { createHash } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fsyncDir, writeAll } from '../files/files.js';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { StateFileError } from './xml.js';

export const JOURNAL_HEADER = 'qubes-storage state journal 1\n';
const HEADER_BYTES = Buffer.byteLength(JOURNAL_HEADER);

export const FP_JOURNAL = {
  /** The record is written, not yet synced: it may be whole, torn or absent after a crash. */
  beforeSync: declareFailpoint('state.journal.before-sync'),
  afterSync: declareFailpoint('state.journal.after-sync'),
};

export type JournalUnit =
  | { readonly section: 'labels' | 'pools' | 'properties'; readonly xml: string }
  | { readonly domain: string; readonly xml: string | null };

export const JOURNAL_SECTIONS: readonly string[] = ['labels', 'pools', 'properties'];

export interface JournalContents {
  readonly records: JournalUnit[][];
  /** Bytes of a torn last record that were dropped (0 normally). */
  readonly tornBytes: number;
}

export function journalPathFor(stateFile: string): string {
  return `${stateFile}.journal`;
}

function checksum(payload: Buffer): string {
  return createHash('sha256').update(payload).digest('hex').slice(0, 16);
}

/** One record as written: header line, payload, newline. */
export function encodeRecord(units: readonly JournalUnit[]): Buffer {
  const payload = Buffer.from(JSON.stringify(units), 'utf8');
  return Buffer.concat([Buffer.from(`@ ${payload.length} ${checksum(payload)}\n`), payload, Buffer.from('\n')]);
}

type Parsed = { units: JournalUnit[]; end: number } | { bad: string };

function parseRecordAt(buf: Buffer, at: number, file: string, n: number): Parsed {
  const nl = buf.indexOf(10, at);
  if (nl < 0 || nl - at > 64) return { bad: 'incomplete record header' };
  const m = /^@ (0|[1-9][0-9]{0,9}) ([0-9a-f]{16})$/.exec(buf.toString('latin1', at, nl));
  if (!m) return { bad: 'malformed record header' };
  const len = Number(m[1]);
  const start = nl + 1;
  if (start + len + 1 > buf.length) return { bad: 'incomplete record' };
  const payload = buf.subarray(start, start + len);
  if (buf[start + len] !== 10 || checksum(payload) !== m[2]) return { bad: 'checksum mismatch' };
  let units: unknown;
  try {
    units = JSON.parse(payload.toString('utf8'));
  } catch {
    return { bad: 'payload is not JSON' };
  }
  return { units: checkUnits(units, file, n), end: start + len + 1 };
}

function checkUnits(v: unknown, file: string, n: number): JournalUnit[] {
  const fail = (why: string): never => {
    throw new StateFileError(`${file}: record ${n}: ${why}`);
  };
  if (!Array.isArray(v)) fail('not a list of units');
  return (v as unknown[]).map((u) => {
    if (typeof u !== 'object' || u === null) return fail('a unit is not an object');
    const o = u as Record<string, unknown>;
    if (typeof o['section'] === 'string') {
      if (!JOURNAL_SECTIONS.includes(o['section'])) fail(`unknown section '${o['section'].slice(0, 40)}'`);
      if (typeof o['xml'] !== 'string') fail(`section ${o['section']} without xml`);
      return { section: o['section'] as 'labels', xml: o['xml'] as string };
    }
    if (typeof o['domain'] === 'string') {
      if (!/^(dom0|0|[1-9][0-9]{0,9})$/.test(o['domain'])) fail(`bad domain key '${o['domain'].slice(0, 40)}'`);
      if (typeof o['xml'] !== 'string' && o['xml'] !== null) fail(`domain ${o['domain']}: xml is neither text nor null`);
      return { domain: o['domain'], xml: o['xml'] as string | null };
    }
    return fail('a unit names neither a section nor a domain');
  });
}

/**
 * Reads a journal (bounded by maxBytes); null when there is none. A torn
 * last record is dropped (tornBytes says how much); a bad record with a
 * good one after it is a StateFileError.
 */
export async function readJournal(file: string, maxBytes: number): Promise<JournalContents | null> {
  let buf: Buffer;
  try {
    const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new StateFileError(`${file}: the state journal is not a regular file`);
      if (st.size > maxBytes) throw new StateFileError(`${file}: the state journal is ${st.size} bytes, more than the limit of ${maxBytes}`);
      buf = Buffer.alloc(st.size);
      let n = 0;
      while (n < buf.length) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      buf = buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    if (e instanceof StateFileError) throw e;
    throw new StateFileError(`${file}: cannot read the state journal: ${(e as Error).message}`);
  }
  if (buf.length < HEADER_BYTES) {
    // Torn while being made: it held no record yet.
    if (Buffer.from(JOURNAL_HEADER).subarray(0, buf.length).equals(buf)) return { records: [], tornBytes: buf.length };
    throw new StateFileError(`${file}: not a qubes-storage state journal`);
  }
  if (buf.toString('latin1', 0, HEADER_BYTES) !== JOURNAL_HEADER) throw new StateFileError(`${file}: not a qubes-storage state journal`);
  const records: JournalUnit[][] = [];
  let at = HEADER_BYTES;
  while (at < buf.length) {
    const r = parseRecordAt(buf, at, file, records.length + 1);
    if ('units' in r) {
      records.push(r.units);
      at = r.end;
      continue;
    }
    // Only the last record may be torn: is there a good record further on?
    for (let i = buf.indexOf('\n@ ', at); i >= 0; i = buf.indexOf('\n@ ', i + 1)) {
      let later: Parsed;
      try {
        later = parseRecordAt(buf, i + 1, file, records.length + 2);
      } catch {
        continue;
      }
      if ('units' in later)
        throw new StateFileError(`${file}: record ${records.length + 1} at byte ${at} is damaged (${r.bad}) and good records follow it; refusing to guess`);
    }
    return { records, tornBytes: buf.length - at };
  }
  return { records, tornBytes: 0 };
}

/** The journal open for appending; one per App, under the state lock. */
export class StateJournal {
  private constructor(
    readonly file: string,
    private fh: fs.FileHandle,
    /** Bytes known good: the next record goes here. */
    private length: number,
  ) {}

  /** Bytes of records (0: nothing to fold into the state file). */
  get recordBytes(): number {
    return this.length - HEADER_BYTES;
  }

  /**
   * Opens the journal for appending, made empty (header only): the App
   * calls this after the state file holds everything (fresh, or just
   * compacted).
   */
  static async openEmpty(file: string): Promise<StateJournal> {
    // Created 0600, like the state file it holds changes of.
    const fh = await fs.open(file, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new StateFileError(`${file}: the state journal is not a regular file`);
      await fh.truncate(0);
      // A journal an older version made with a wider mode: narrowed once it holds nothing.
      if ((st.mode & 0o777) !== 0o600) await fh.chmod(0o600);
      await writeAll(fh, Buffer.from(JOURNAL_HEADER), 0);
      await fh.sync();
      await fsyncDir(path.dirname(file));
      return new StateJournal(file, fh, HEADER_BYTES);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /**
   * Appends one record and syncs it. On failure the journal is cut back to
   * what it held before (if that fails too, the caller must compact before
   * appending again: it must treat the journal as unusable).
   */
  async append(record: Buffer): Promise<void> {
    try {
      await writeAll(this.fh, record, this.length);
      failpoint(FP_JOURNAL.beforeSync);
      await this.fh.datasync();
    } catch (e) {
      await this.fh.truncate(this.length).then(() => this.fh.datasync()).catch(() => undefined);
      throw e;
    }
    this.length += record.length;
    failpoint(FP_JOURNAL.afterSync);
  }

  /** Empties the journal (after the state file was rewritten with everything in it). */
  async reset(): Promise<void> {
    await this.fh.truncate(HEADER_BYTES);
    await this.fh.datasync();
    this.length = HEADER_BYTES;
  }

  /** Closes the journal; with `remove`, deletes it (the state file holds everything). */
  async close(remove: boolean): Promise<void> {
    await this.fh.close();
    if (remove) {
      await fs.unlink(this.file).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      await fsyncDir(path.dirname(this.file));
    }
  }
}
