/**
 * Where a volume's files live and what they are called. Everything of volume
 * VID sits in the directory of VID under dir_path, named after the volume:
 *
 *   NAME.img                 committed data ("clean")
 *   NAME-dirty.img           working copy while started
 *   NAME-base.img            hard link of the source's committed image taken
 *                            at start (snap_on_start): the snapshot's origin,
 *                            used to tell whether the source changed since
 *   NAME-import.img          data being imported
 *   NAME-tmp-RAND.img        a copy in progress (debris after a crash)
 *   NAME-export-RAND.img     hard link handed out by export()
 *   NAME.img.ID@TIMEZ        revision ID, committed at TIME (UTC)
 *
 * Volume names hold no '-' or '.', so these names never collide.
 */
import * as path from 'node:path';

export interface VolumeFiles {
  readonly dir: string;
  readonly name: string;
  readonly naming: FileNaming;
  readonly clean: string;
  readonly dirty: string;
  readonly base: string;
  readonly import: string;
  tmp(suffix: string): string;
  exportLink(suffix: string): string;
  revision(id: number, time: string): string;
}

/**
 * How a family of file drivers names its files. file-reflink uses the names
 * above; the `file`/`xen` layout of Qubes R3.2/R4 calls the working copy
 * `NAME-cow.img` and a volatile volume's image plain `NAME.img`.
 */
export interface FileNaming {
  /** Suffix of the working copy after NAME. */
  readonly dirtySuffix: '-dirty.img' | '-cow.img';
  /** A volatile volume's running image is NAME.img (R3.2 `volatile.img`). */
  readonly volatileAsImage: boolean;
}

export const REFLINK_NAMING: FileNaming = { dirtySuffix: '-dirty.img', volatileAsImage: false };
export const XEN_NAMING: FileNaming = { dirtySuffix: '-cow.img', volatileAsImage: true };

/**
 * The names of one volume's files. Only the common prefix is kept (a pool
 * holds tens of thousands of volumes); each name is made when asked for.
 */
class Files implements VolumeFiles {
  constructor(
    /** dir_path/VID, absolute. */
    private readonly full: string,
    readonly naming: FileNaming,
    private readonly volatileImage: boolean,
  ) {}
  get dir(): string {
    return path.dirname(this.full);
  }
  get name(): string {
    return path.basename(this.full);
  }
  get clean(): string {
    return `${this.full}.img`;
  }
  get dirty(): string {
    return this.volatileImage ? `${this.full}.img` : `${this.full}${this.naming.dirtySuffix}`;
  }
  get base(): string {
    return `${this.full}-base.img`;
  }
  get import(): string {
    return `${this.full}-import.img`;
  }
  tmp(s: string): string {
    return `${this.full}-tmp-${s}.img`;
  }
  exportLink(s: string): string {
    return `${this.full}-export-${s}.img`;
  }
  revision(id: number, time: string): string {
    return `${this.full}.img.${id}@${time}`;
  }
}

export function volumeFiles(dirPath: string, vid: string, naming: FileNaming = REFLINK_NAMING, volatile = false): VolumeFiles {
  return new Files(path.join(dirPath, vid), naming, volatile && naming.volatileAsImage);
}

export type FileRole = 'clean' | 'dirty' | 'base' | 'import' | 'tmp' | 'export' | 'revision';

export interface ClassifiedFile {
  readonly role: FileRole;
  readonly file: string;
  /** For revisions. */
  readonly id?: number;
  readonly time?: string;
}

const REVISION_RE = /^\.img\.([1-9][0-9]{0,15})@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$/;
const RAND_RE = /^-(tmp|export)-[0-9a-f]{1,32}\.img$/;

/**
 * The last part of a vid: the stem of its files. No '-' or '.', so no
 * volume's file can take the shape of another's temporary file.
 */
export const FILE_STEM_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

/**
 * A temporary file of some volume: a copy in progress (NAME-tmp-RAND.img),
 * an export (NAME-export-RAND.img) or an import (NAME-import.img). Debris
 * once no process holds it (see FileReflinkPool.sweepLeftovers).
 */
export const TEMP_FILE_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}-(?:(?:tmp|export)-[0-9a-f]{1,32}|import)\.img$/;

/** Which of a directory entry is this volume's, and as what (null: not ours). */
export function classify(files: VolumeFiles, entry: string): ClassifiedFile | null {
  if (!entry.startsWith(files.name)) return null;
  const rest = entry.slice(files.name.length);
  const file = path.join(files.dir, entry);
  switch (rest) {
    case '.img':
      return { role: 'clean', file };
    case files.naming.dirtySuffix:
      return { role: 'dirty', file };
    case '-base.img':
      return { role: 'base', file };
    case '-import.img':
      return { role: 'import', file };
  }
  const r = REVISION_RE.exec(rest);
  if (r) return { role: 'revision', file, id: Number(r[1]), time: r[2]! };
  const t = RAND_RE.exec(rest);
  if (t) return { role: t[1] === 'tmp' ? 'tmp' : 'export', file };
  return null;
}

/** Now as ISO-8601 UTC to the second: 2026-11-26T04:12:00Z. */
export function utcNow(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}
