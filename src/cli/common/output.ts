/**
 * What the tools print: aligned tables (two spaces between columns, no
 * trailing spaces), two-column key/value listings, JSON, and sizes.
 */

/** Rows of cells as aligned columns; the last column is not padded. */
export function table(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '';
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').replace(/\s+$/, ''))
    .map((l) => `${l}\n`)
    .join('');
}

/** JSON as the `--format json` output: pretty, with a final newline. */
export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB"; below 1 KiB in bytes. */
export function humanSize(bytes: number): string {
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${UNITS[u]}`;
}

const SIZE_FACTORS: Record<string, number> = {
  '': 1,
  K: 1000,
  M: 1000 ** 2,
  G: 1000 ** 3,
  T: 1000 ** 4,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
};

/**
 * A size as users write it: digits, optionally a suffix K/M/G/T (x1000) or
 * Ki/Mi/Gi/Ti (x1024); a trailing `B` and lower-case `k` are accepted too
 * (`10GiB`, `512kB`). Null when it is not a size.
 */
export function parseSize(text: string): number | null {
  const m = /^(\d+)(?:([KMGT]i?|ki?))?B?$/.exec(text.trim());
  if (!m || text.trim() === 'B') return null;
  const unit = (m[2] ?? '').replace(/^k/, 'K');
  const factor = SIZE_FACTORS[unit];
  if (factor === undefined) return null;
  const n = Number(m[1]) * factor;
  return Number.isSafeInteger(n) ? n : null;
}
