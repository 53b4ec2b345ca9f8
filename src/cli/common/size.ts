/**
 * Sizes as users type them, for every tool argument that is a size
 * (`qvm-volume resize VM:VOLUME SIZE`, `qvm-volume import --size SIZE`).
 *
 * Everything the stock `qvm-volume resize` accepts (qubesadmin's
 * parse_size: digits, or digits and a suffix K KB M MB G GB (x1000) or Ki
 * KiB Mi MiB Gi GiB (x1024), in any case, spaces around and between, a
 * `+` sign and `_` between digits as Python's int() takes them) means the
 * same bytes here. On top of it: T TB Ti TiB, a plain B, and decimals
 * (`1.5G`, `.5Gi`) where they come to a whole number of bytes. A size the
 * stock tool refuses with "Invalid size" (or a Python traceback: `1.5G`)
 * is refused here as a command-line mistake (UsageError, exit 2) saying
 * what was wrong: not a size, negative, not a whole number of bytes, too
 * large.
 */
import { UsageError } from './args.js';

/** The forms, as the help of each size argument says them. */
export const SIZE_FORMS =
  'bytes, or a number with a suffix (any case): K M G T (x1000, also KB...), ' +
  'Ki Mi Gi Ti (x1024, also KiB...); decimals allowed (1.5G)';

/** The paragraph a --help with a SIZE argument ends with. */
export const SIZE_EPILOG = wrapWords(`SIZE: ${SIZE_FORMS}.`, 79);

function wrapWords(text: string, width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const w of text.split(' ')) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  return [...lines, line].join('\n');
}

const FACTORS: Readonly<Record<string, bigint>> = {
  '': 1n,
  B: 1n,
  K: 1000n,
  M: 1000n ** 2n,
  G: 1000n ** 3n,
  T: 1000n ** 4n,
  KI: 1024n,
  MI: 1024n ** 2n,
  GI: 1024n ** 3n,
  TI: 1024n ** 4n,
};

/** Digits with single underscores between them (Python's int() takes `1_000`). */
const DIGITS = String.raw`\d+(?:_\d+)*`;
/** SIGN NUMBER [spaces] [UNIT[B]]: the unit's case does not matter. */
const SIZE_RE = new RegExp(String.raw`^([+-]?)(${DIGITS})?(?:\.(${DIGITS})?)?\s*([KMGT]I?)?(B)?$`, 'i');

/**
 * The bytes `text` says; UsageError (exit 2) naming `text` and what is wrong
 * with it.
 */
export function parseSize(text: string): number {
  const bad = (why: string) => new UsageError(`invalid size '${text}': ${why}`);
  const m = SIZE_RE.exec(text.trim());
  const whole = m?.[2]?.replace(/_/g, '') ?? '';
  const frac = m?.[3]?.replace(/_/g, '') ?? '';
  // A unit needs a number; 'B' alone is no size, nor is '.'.
  if (!m || (whole === '' && frac === '')) throw bad(`give ${SIZE_FORMS}`);
  if (m[1] === '-' && /[1-9]/.test(whole + frac)) throw bad('a size cannot be negative');
  const factor = FACTORS[(m[4] ?? '').toUpperCase()]!;
  // Exact arithmetic: NUMBER = (whole.frac) = digits / 10^len(frac).
  const scaled = BigInt(whole + frac || '0') * factor;
  const divisor = 10n ** BigInt(frac.length);
  if (scaled % divisor !== 0n) throw bad('not a whole number of bytes');
  const bytes = scaled / divisor;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`larger than ${Number.MAX_SAFE_INTEGER} bytes`);
  return Number(bytes);
}
