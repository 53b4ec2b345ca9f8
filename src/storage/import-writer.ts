/**
 * Where an import's data goes (Volume.importWriter): a sink taking the data
 * in increasing offsets, as the payload arrives, instead of a path to write
 * a file at. The admin import (admin.vm.volume.Import*) streams into it
 * through createSparseWriter (src/files/sparse-writer.ts): only the blocks
 * holding data are written, the rest must read as zeros once finish() is
 * done.
 *
 * By default a volume hands out a writer over the file its doImportData
 * gives (fileImportWriter); a driver whose data is not a file of this host
 * (rbd: a Ceph image) overrides doImportWriter and writes to its storage
 * itself, with no temporary copy. Either way nothing changes for the
 * volume's users until importDataEnd(true); importDataEnd(false), or a
 * crash, leaves the old data.
 */
import * as fs from 'node:fs/promises';
import type { SparseSink } from '../files/sparse-writer.js';

export interface ImportWriter extends SparseSink {
  /** What is written, for messages: a file path or an image name. */
  readonly target: string;
  /** The file written, when the writer is over one (its OS errors name it). */
  readonly file: string | null;
  /** Zero-detection granularity (a power of two): all-zero blocks of it are not written. */
  readonly blockBytes: number;
  /** Bytes one write gathers at most. */
  readonly writeBytes: number;
  /** Bytes of writes in flight at most; the payload waits beyond. */
  readonly pendingBytes: number;
  /** A background datasync() every this many written bytes (Infinity: only finish()). */
  readonly syncEveryBytes: number;
  /**
   * Writes one run of data at `at`. Runs are handed over in increasing
   * offsets and never overlap; several may be in flight.
   */
  writev(bufs: Buffer[], at: number): Promise<{ bytesWritten: number }>;
  /** After the last write: every byte not written reads as zero, and all of it is durable. Idempotent. */
  finish(): Promise<void>;
  /** Releases what the writer holds (after finish(), or on failure). Idempotent. Volume.importDataEnd calls it. */
  close(): Promise<void>;
}

/** Zero blocks of a file import: the filesystem's block. */
const FILE_BLOCK = 4096;

/**
 * A writer over `file`, a fresh sparse file of the import's size (what
 * doImportData makes): what is not written stays a hole; finish() fsyncs.
 */
export async function fileImportWriter(file: string): Promise<ImportWriter> {
  const fh = await fs.open(file, 'r+');
  let finished: Promise<void> | null = null;
  let closed: Promise<void> | null = null;
  return {
    target: file,
    file,
    blockBytes: FILE_BLOCK,
    writeBytes: 1024 * 1024,
    pendingBytes: 16 * 1024 * 1024,
    // The disk writes overlap with receiving; the final fsync has less left to do.
    syncEveryBytes: 64 * 1024 * 1024,
    writev: (bufs, at) => fh.writev(bufs, at),
    datasync: () => fh.datasync(),
    finish: () => (finished ??= fh.sync()),
    close: () => (closed ??= fh.close()),
  };
}
