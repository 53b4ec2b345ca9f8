// Figures over repeated runs: min / median / max, and ratios of medians.
export interface Figure {
  name: string;
  unit: string;
  samples: number[];
  min: number;
  median: number;
  max: number;
  /** Median over the baseline's median, when the figure has a baseline. */
  ratio?: number;
  baseline?: string;
  target?: string;
  note?: string;
}

export function figure(name: string, unit: string, samples: number[], extra: Partial<Figure> = {}): Figure {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { name, unit, samples, min: s[0]!, median, max: s.at(-1)!, ...extra };
}

export function withBaseline(f: Figure, base: Figure, target?: string): Figure {
  return { ...f, ratio: f.median / base.median, baseline: base.name, ...(target ? { target } : {}) };
}

/** Milliseconds taken by `fn`. */
export async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
