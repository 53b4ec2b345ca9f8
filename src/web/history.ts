/**
 * Pool usage over time: one point per pool per sample, the newest
 * `maxPoints` kept, saved after each sample as one crash-safe file (temp,
 * fsync, rename, directory fsync), so a restart goes on from it and a crash
 * leaves the previous file whole. The file is bounded (points x pools x a
 * few numbers) and read back only up to MAX_FILE_BYTES.
 */
import * as fs from 'node:fs/promises';
import { writeFileAtomic } from '../files/files.js';
import type { PoolUsageRow } from '../client/index.js';

/** [time in ms, data usage, data size, metadata usage, metadata size]; null where the pool does not say. */
export type UsagePoint = [number, number | null, number | null, number | null, number | null];

/** A history file larger than this is not read (it cannot be one of ours: see maxPoints and MAX_POOLS). */
export const MAX_FILE_BYTES = 16 * 1024 * 1024;
/** At most this many pools are kept; a pool beyond them is not recorded. */
export const MAX_POOLS = 256;
const FORMAT = 'qubes-storage-web usage history 1';

export class UsageHistory {
  private readonly series = new Map<string, UsagePoint[]>();

  constructor(
    readonly file: string,
    readonly maxPoints: number,
  ) {}

  /** The points of each pool, oldest first. */
  snapshot(): Record<string, UsagePoint[]> {
    return Object.fromEntries([...this.series].map(([pool, pts]) => [pool, pts.slice()]));
  }

  /**
   * Reads the file if there is one. A file that is too large or not ours
   * is left as it is and the history starts empty (the next save replaces
   * it): the reason is returned, for the log.
   */
  async load(): Promise<string | null> {
    let text: string;
    try {
      const fh = await fs.open(this.file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        const st = await fh.stat();
        if (!st.isFile()) return `${this.file} is not a regular file: history starts empty`;
        if (st.size > MAX_FILE_BYTES) return `${this.file} is larger than ${MAX_FILE_BYTES} bytes: history starts empty`;
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      return `${this.file}: ${(e as Error).message}: history starts empty`;
    }
    try {
      const parsed = JSON.parse(text) as { format?: unknown; pools?: unknown };
      if (parsed.format !== FORMAT || typeof parsed.pools !== 'object' || parsed.pools === null) throw new Error('not a usage history file');
      for (const [pool, pts] of Object.entries(parsed.pools as Record<string, unknown>).slice(0, MAX_POOLS)) {
        if (!Array.isArray(pts)) throw new Error(`pool ${pool}: points are not a list`);
        const good = pts.filter(isPoint);
        this.series.set(pool, good.slice(-this.maxPoints));
      }
      return null;
    } catch (e) {
      this.series.clear();
      return `${this.file}: ${(e as Error).message}: history starts empty`;
    }
  }

  /** Adds one point per row (time `at`) and returns the new points. */
  add(at: number, rows: readonly PoolUsageRow[]): Record<string, UsagePoint> {
    const added: Record<string, UsagePoint> = {};
    for (const r of rows) {
      let pts = this.series.get(r.pool);
      if (!pts) {
        if (this.series.size >= MAX_POOLS) continue;
        this.series.set(r.pool, (pts = []));
      }
      const p: UsagePoint = [at, r.data.usage, r.data.size, r.metadata?.usage ?? null, r.metadata?.size ?? null];
      pts.push(p);
      if (pts.length > this.maxPoints) pts.splice(0, pts.length - this.maxPoints);
      added[r.pool] = p;
    }
    return added;
  }

  /** Writes the whole history, crash-safe, mode 0600. */
  async save(): Promise<void> {
    await writeFileAtomic(this.file, JSON.stringify({ format: FORMAT, pools: Object.fromEntries(this.series) }), 0o600);
  }
}

function isPoint(p: unknown): p is UsagePoint {
  return (
    Array.isArray(p) &&
    p.length === 5 &&
    typeof p[0] === 'number' &&
    Number.isFinite(p[0]) &&
    p.slice(1).every((v) => v === null || (typeof v === 'number' && Number.isFinite(v)))
  );
}
