/**
 * Labels: the colours domains are drawn in. Qubes has eight, with fixed
 * indexes (1..8) and colours; a state file may carry more (they are loaded
 * and kept). In qubes.xml: `<label color="0xcc0000" id="label-1">red</label>`.
 */
import { QubesLabelNotFoundError } from '../storage/errors.js';
import { printable } from '../storage/volume.js';

export interface Label {
  /** 1..8 for the stock labels. */
  readonly index: number;
  readonly name: string;
  /** `0xRRGGBB`, as Qubes writes it. */
  readonly color: string;
}

export const DEFAULT_LABELS: readonly Label[] = [
  { index: 1, name: 'red', color: '0xcc0000' },
  { index: 2, name: 'orange', color: '0xf57900' },
  { index: 3, name: 'yellow', color: '0xedd400' },
  { index: 4, name: 'green', color: '0x73d216' },
  { index: 5, name: 'gray', color: '0x555753' },
  { index: 6, name: 'blue', color: '0x3465a4' },
  { index: 7, name: 'purple', color: '0x75507b' },
  { index: 8, name: 'black', color: '0x000000' },
];

/** `label-N`, the id qubes.xml gives a label. */
export function labelId(l: Label): string {
  return `label-${l.index}`;
}

export class Labels {
  private readonly byName = new Map<string, Label>();

  constructor(labels: readonly Label[] = DEFAULT_LABELS) {
    for (const l of labels) this.byName.set(l.name, l);
  }

  /** Sorted by index. */
  list(): Label[] {
    return [...this.byName.values()].sort((a, b) => a.index - b.index);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** By name, or by id `label-N`. */
  get(nameOrId: string): Label {
    const l = this.byName.get(nameOrId) ?? this.list().find((x) => labelId(x) === nameOrId);
    if (!l) throw new QubesLabelNotFoundError(`no such label '${printable(nameOrId)}'`);
    return l;
  }
}
