// A small seeded mutator for fuzzing parsers: byte flips, insertions of
// interesting bytes and tokens, deletions, duplications, truncation and
// splices. Repeatable for a given seed.

export class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x >>> 0;
    return this.x;
  }
  int(n: number): number {
    return this.next() % Math.max(1, n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

const TOKENS = [
  '\0', '\n', '\r\n', '=', '[', ']', '<', '>', '&', '"', "'", '/', '..', '../', '\\', ' ', '\t', '#', ';',
  '-1', '-0', '0', '00', '007', '18446744073709551616', '99999999999999999999', '1e9', '0x10', '１２',
  '\u00e9', '\u202e', '\uFEFF', '\ud83d\ude00', 'ｒｏｏｔ', '%s', '${x}', '$(id)', '`id`', '|', '&&',
  '<!--', '-->', '<![CDATA[', ']]>', '&amp;', '&#0;', '&#x110000;', '&unknown;', '<?xml', '<!DOCTYPE x [<!ENTITY a "b">]>',
  'x'.repeat(300), 'driver=', 'class=', 'dir_path=', 'name=', 'True', 'False',
];

export function mutate(input: Buffer, rng: Rng, corpus: readonly Buffer[] = []): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    const pos = rng.int(b.length + 1);
    switch (rng.int(7)) {
      case 0: // flip a byte
        if (b.length) b[rng.int(b.length)] = rng.int(256);
        break;
      case 1: // insert a token
        b = Buffer.concat([b.subarray(0, pos), Buffer.from(rng.pick(TOKENS)), b.subarray(pos)]);
        break;
      case 2: {
        // delete a range
        const len = rng.int(Math.min(64, b.length - pos + 1));
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + len)]);
        break;
      }
      case 3: {
        // duplicate a range
        const len = rng.int(Math.min(128, b.length - pos + 1));
        b = Buffer.concat([b.subarray(0, pos + len), b.subarray(pos, pos + len), b.subarray(pos + len)]);
        break;
      }
      case 4: // truncate
        b = b.subarray(0, pos);
        break;
      case 5: {
        // random bytes
        const n = 1 + rng.int(8);
        const rnd = Buffer.alloc(n);
        for (let i = 0; i < n; i++) rnd[i] = rng.int(256);
        b = Buffer.concat([b.subarray(0, pos), rnd, b.subarray(pos)]);
        break;
      }
      case 6: // splice from another sample
        if (corpus.length) {
          const other = rng.pick(corpus);
          const at = rng.int(other.length);
          b = Buffer.concat([b.subarray(0, pos), other.subarray(at, at + 1 + rng.int(200))]);
        }
        break;
    }
  }
  return b;
}
