/**
 * What the tools print: aligned tables (two spaces between columns, no
 * trailing spaces), two-column key/value listings, JSON, and sizes for
 * people (`humanSize`; sizes people type: size.ts).
 */

/** Rows of cells as aligned columns; the last column is not padded. Plain loops: qvm-ls lays out 1,000 rows and more. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const r of rows) for (let i = 0; i < r.length; i++) if (r[i]!.length > (widths[i] ?? 0)) widths[i] = r[i]!.length;
  let out = '';
  for (const r of rows) {
    let line = '';
    for (let i = 0; i < r.length; i++) line += i === r.length - 1 ? r[i]! : `${r[i]!.padEnd(widths[i]!)}  `;
    out += `${line.trimEnd()}\n`;
  }
  return out;
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
