/**
 * Exports handed over piece by piece (Volume.exportInto) instead of as a
 * path: the admin API streams them to its client (admin.vm.volume.ExportStream),
 * so a driver that reads its own storage (rbd) writes no temporary file.
 */
import * as fs from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { fileExtents, type DataRegion } from '../files/extents.js';
import { forEachDataRun } from '../files/sparse-writer.js';

/** Where Volume.exportInto hands the committed data. */
export interface ExportSink {
  /** Called once, before any data: the export's size in bytes. */
  begin(size: number): Promise<void>;
  /**
   * The data at `offset`: pieces in increasing order, never overlapping;
   * what no piece covers reads as zeros. `bytes` are lent: the sink reads
   * them until the promise resolves (a sink that keeps them copies them),
   * and the driver may reuse them after (a ring of read buffers: no fresh
   * memory per read). Resolves once it may be given more (the export waits
   * for its reader); after a rejection the export stops, leaving `bytes` as
   * they are.
   */
  data(offset: number, bytes: Buffer): Promise<void>;
  /**
   * Called once, after the last data: the data is complete. The driver may
   * still be letting go of what it read from (a snapshot, a file), so that
   * the reader finishes its side meanwhile (admin.vm.volume.ExportStream
   * sends its `end` then). Volume.exportInto calls it when a driver did not.
   */
  end(): Promise<void>;
}

/** Bytes read at a time from an export file. */
const PIECE = 4 << 20;

/**
 * Hands the file `file` to `sink`: its data regions only (SEEK_DATA and
 * SEEK_HOLE where the filesystem tells them, else all of it), 4 MiB at a
 * time, the next read running while the sink takes the last one.
 */
export async function fileIntoSink(file: string, sink: Omit<ExportSink, 'end'>, signal?: AbortSignal): Promise<void> {
  const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const { size } = await fh.stat();
    await sink.begin(size);
    const ext = await fileExtents();
    const regions: Iterable<DataRegion> = typeof ext === 'string' ? [[0, size]] : ext.dataRegions(fh.fd, size);
    const read = async (from: number, to: number, into: Buffer): Promise<Buffer> => {
      const buf = into.subarray(0, to - from);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, from + got);
        if (bytesRead === 0) break; // the file shrank meanwhile: the rest reads as zeros
        got += bytesRead;
      }
      return buf.subarray(0, got);
    };
    await regionsIntoSink(regions, read, sink, signal);
  } finally {
    await fh.close();
  }
}

/**
 * Reads `regions` ([start, end) in increasing order) with `read`, 4 MiB at
 * a time, the next read running while the sink takes the last one, and
 * hands what it reads to `sink.data`; with `zeroBlock`, only the runs of
 * blocks of that size holding a non-zero byte. Every read has settled when
 * it returns (the caller may close what it reads from).
 *
 * `read(from, to, into)` fills `into` (at least `to - from` bytes) and
 * returns the part it filled. Two buffers take turns: piece k+2 is read
 * into piece k's once every sink.data of piece k resolved (the sink is done
 * with lent bytes then), so an export touches no fresh memory after its
 * first two pieces.
 */
export async function regionsIntoSink(
  regions: Iterable<DataRegion>,
  read: (from: number, to: number, into: Buffer) => Promise<Buffer>,
  sink: Pick<ExportSink, 'data'>,
  signal?: AbortSignal,
  zeroBlock?: number,
): Promise<void> {
  const pieces = (function* () {
    for (const [start, end] of regions) for (let at = start; at < end; at += PIECE) yield [at, Math.min(end, at + PIECE)] as const;
  })();
  const buffers: Buffer[] = [];
  let turn = 0;
  const readNext = (p: IteratorResult<readonly [number, number]>): Promise<Buffer> | undefined => {
    if (p.done) return undefined;
    const [from, to] = p.value;
    const k = turn++ % 2;
    if ((buffers[k]?.length ?? 0) < to - from) buffers[k] = Buffer.allocUnsafe(PIECE);
    return read(from, to, buffers[k]!);
  };
  let reading: Promise<Buffer> | undefined;
  try {
    let piece = pieces.next();
    reading = readNext(piece);
    while (!piece.done) {
      const from = piece.value[0];
      const bytes = await reading!;
      piece = pieces.next();
      reading = readNext(piece);
      reading?.catch(() => undefined); // awaited in the next turn (or below); not an unhandled rejection meanwhile
      signal?.throwIfAborted();
      if (zeroBlock === undefined) {
        if (bytes.length > 0) await sink.data(from, bytes);
        continue;
      }
      const runs: [number, number][] = [];
      forEachDataRun(bytes, 0, bytes.length, from, zeroBlock, (s, e) => runs.push([s, e]));
      for (const [s, e] of runs) await sink.data(from + s, bytes.subarray(s, e));
    }
  } finally {
    await reading?.catch(() => undefined); // no read may still use the source when it returns
  }
}
