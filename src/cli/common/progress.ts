/**
 * A progress bar for long copies (import, export, clone): bytes done and
 * total, rate and ETA, redrawn at most ten times a second on stderr, and
 * only when stderr is a terminal; otherwise it prints nothing at all.
 */
import { humanSize } from './output.js';

export interface Progress {
  /** Bytes done so far (absolute). */
  update(done: number): void;
  /** Clears the bar (the operation ended, well or not). */
  finish(): void;
}

export interface ProgressStream {
  readonly isTTY?: boolean;
  readonly columns?: number;
  write(s: string): unknown;
}

const NONE: Progress = { update() {}, finish() {} };

/** `total` null: unknown size (an elapsed-time spinner). */
export function progressBar(
  label: string,
  total: number | null,
  stream: ProgressStream = process.stderr,
  now: () => number = () => performance.now(),
): Progress {
  if (!stream.isTTY) return NONE;
  const started = now();
  let last = -Infinity;
  let done = 0;
  let shown = false;
  const timer = setInterval(() => draw(true), 250);
  timer.unref();
  function draw(force: boolean): void {
    const t = now();
    if (!force && t - last < 100) return;
    last = t;
    stream.write(`\r\x1b[2K${renderProgress(label, done, total, (t - started) / 1000, stream.columns || 80)}`);
    shown = true;
  }
  return {
    update(n) {
      done = n;
      draw(false);
    },
    finish() {
      clearInterval(timer);
      if (shown) stream.write('\r\x1b[2K');
    },
  };
}

/** For copies whose bytes cannot be followed (a clone inside the daemon): label and elapsed time. */
export function busyIndicator(label: string, stream: ProgressStream = process.stderr, now: () => number = () => performance.now()): Progress {
  if (!stream.isTTY) return NONE;
  const started = now();
  const frames = ['|', '/', '-', '\\'];
  let i = 0;
  const draw = () => stream.write(`\r\x1b[2K${label} ${frames[i++ % frames.length]} ${clock((now() - started) / 1000)}`);
  const timer = setInterval(draw, 200);
  timer.unref();
  draw();
  return {
    update() {},
    finish() {
      clearInterval(timer);
      stream.write('\r\x1b[2K');
    },
  };
}

/** One line of the bar (pure, for tests): `label [#####.....]  45%  1.2 GiB/2.0 GiB  80.0 MiB/s  ETA 0:10`. */
export function renderProgress(label: string, done: number, total: number | null, elapsedS: number, columns = 80): string {
  const rate = elapsedS > 0 ? done / elapsedS : 0;
  const rateText = `${humanSize(Math.round(rate))}/s`;
  if (total === null || total <= 0) {
    return `${label}  ${humanSize(done)}  ${rateText}  ${clock(elapsedS)}`.slice(0, columns - 1);
  }
  const frac = Math.min(1, done / total);
  const eta = rate > 0 ? (total - done) / rate : NaN;
  const tail = `${String(Math.floor(frac * 100)).padStart(3)}%  ${humanSize(done).padStart(10)}/${humanSize(total)}  ${rateText.padStart(12)}  ETA ${Number.isFinite(eta) ? clock(eta) : '--:--'}`;
  const room = columns - 1 - label.length - tail.length - 4;
  if (room < 10) return `${label} ${tail}`.slice(0, columns - 1);
  const width = Math.min(30, room);
  const filled = Math.round(frac * width);
  return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${tail}`;
}

function clock(s: number): string {
  const t = Math.max(0, Math.round(s));
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = String(t % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}
