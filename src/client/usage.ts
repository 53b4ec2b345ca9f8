/**
 * Pool usage as rows: what `qvm-pool usage` shows and what a web page of
 * pool usage would show. Pure arithmetic on admin.pool.UsageDetails
 * (`data_size`, `data_usage`, and `metadata_size`, `metadata_usage` where the
 * driver reports metadata, as LVM thin does).
 */
import { QubesValueError } from '../storage/errors.js';

/** Pools used above this percentage are flagged unless a threshold is given. */
export const DEFAULT_USAGE_THRESHOLD = 90;

export interface UsageFigures {
  /** Bytes; null when the pool does not know. */
  readonly size: number | null;
  readonly usage: number | null;
  /** usage / size in percent, rounded to one decimal; null when either is unknown or the size is 0. */
  readonly percent: number | null;
}

export interface PoolUsageRow {
  readonly pool: string;
  readonly data: UsageFigures;
  /** Present only where the pool reports metadata. */
  readonly metadata?: UsageFigures;
  /** The parts whose percent is above the threshold, data first. */
  readonly above: readonly ('data' | 'metadata')[];
  readonly threshold: number;
}

/** `used` of `size` in percent, one decimal (50.04 -> 50, 50.05 -> 50.1). */
export function usagePercent(used: number | null | undefined, size: number | null | undefined): number | null {
  if (used === null || used === undefined || !size) return null;
  return Math.round((used / size) * 1000) / 10;
}

function figures(details: Readonly<Record<string, number>>, part: 'data' | 'metadata'): UsageFigures {
  const size = details[`${part}_size`] ?? null;
  const usage = details[`${part}_usage`] ?? null;
  return { size, usage, percent: usagePercent(usage, size) };
}

/** A threshold as a number from 0 to 100, else QubesValueError. */
export function checkThreshold(threshold: number): number {
  if (!Number.isFinite(threshold) || threshold < 0 || threshold > 100)
    throw new QubesValueError(`usage threshold must be a percentage from 0 to 100, not ${threshold}`);
  return threshold;
}

/** The row of one pool from its UsageDetails (numbers only; see QubesClient.poolUsageDetails). */
export function poolUsageRow(pool: string, details: Readonly<Record<string, number>>, threshold = DEFAULT_USAGE_THRESHOLD): PoolUsageRow {
  checkThreshold(threshold);
  const data = figures(details, 'data');
  const hasMetadata = 'metadata_size' in details || 'metadata_usage' in details;
  const metadata = hasMetadata ? figures(details, 'metadata') : undefined;
  const above: ('data' | 'metadata')[] = [];
  if (data.percent !== null && data.percent > threshold) above.push('data');
  if (metadata && metadata.percent !== null && metadata.percent > threshold) above.push('metadata');
  return { pool, data, ...(metadata ? { metadata } : {}), above, threshold };
}
