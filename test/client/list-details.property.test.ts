/**
 * The admin.vm.ListDetails reader (readListDetails, parseListDetails on top
 * of it) against a reference parser written here the plain way (split into
 * lines and words, a map of the domains so far), on generated replies: the
 * well-formed lines the daemon writes, and every oddity a reply could carry
 * (empty words, lines of no listed domain, unknown kinds, duplicate names,
 * KEY=VALUE words out of order or repeated, no final newline). The reader is
 * written for speed (one pass, no array of lines, names compared in place);
 * this says it reads what the format says.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseListDetails, readListDetails } from '../../src/client/client.js';

interface RefDomain {
  name: string;
  klass: string;
  state: string;
  uuid: string;
  /** prop -> its text after `property NAME PROP ` (escaped, unparsed), in first-set order, the last value. */
  properties: Map<string, string>;
  volumePools: Map<string, string>;
}

/** The value of the last word `KEY=...` among `words`, '' if none. */
function refWord(words: readonly string[], key: string): string {
  let found = '';
  for (const w of words) if (w.startsWith(`${key}=`)) found = w.slice(key.length + 1);
  return found;
}

/** The format, read the plain way: a line is words split on single spaces; its first word says what it is. */
function reference(text: string, only?: ReadonlySet<string>): RefDomain[] {
  const out: RefDomain[] = [];
  const byName = new Map<string, RefDomain>();
  for (const line of text.split('\n')) {
    const words = line.split(' ');
    // A line needs a first word and a space after it.
    if (words.length < 2 || words[0] === '') continue;
    const [kind, name] = [words[0]!, words[1]!];
    if (kind === 'vm') {
      const rest = words.slice(2);
      const d: RefDomain = { name, klass: refWord(rest, 'class'), state: refWord(rest, 'state'), uuid: refWord(rest, 'uuid'), properties: new Map(), volumePools: new Map() };
      out.push(d);
      byName.set(name, d);
      continue;
    }
    const d = byName.get(name);
    if (!d) continue;
    const third = words[2] ?? '';
    if (kind === 'property') {
      if (!only || only.has(third)) d.properties.set(third, words.slice(3).join(' '));
    } else if (kind === 'volume') d.volumePools.set(third, refWord(words.slice(3), 'pool'));
  }
  return out;
}

/** What readListDetails hands over, collected as the reference's shape. */
function read(text: string, only?: ReadonlySet<string>): RefDomain[] {
  const out: RefDomain[] = [];
  readListDetails(
    text,
    {
      vm: (name, klass, state, uuid) => void out.push({ name, klass, state, uuid, properties: new Map(), volumePools: new Map() }),
      property: (vm, prop, value) => void out[vm]!.properties.set(prop, value),
      volume: (vm, volume, pool) => void out[vm]!.volumePools.set(volume, pool),
    },
    only,
  );
  return out;
}

const flat = (ds: readonly RefDomain[]) => ds.map((d) => ({ ...d, properties: [...d.properties], volumePools: [...d.volumePools] }));

// Small alphabets, so that names collide, prefixes meet (a / ab) and keys repeat.
const name = fc.constantFrom('a', 'ab', 'b', 'dom0', '');
const kv = fc.constantFrom('class=AppVM', 'class=', 'state=Halted', 'state=Running', 'uuid=u1', 'uuid=u-2', 'pool=p1', 'pool=', 'x=y=z', 'class', 'poolx=q', '');
const value = fc.constantFrom('default=False type=label red', 'default=True type=vm ', 'default=False type=str two  spaces', 'x\\ny', 'a\\\\b', '', ' ');
const prop = fc.constantFrom('label', 'template', 'netvm', 'other', '');
const line = fc.oneof(
  fc.tuple(name, fc.array(kv, { maxLength: 4 })).map(([n, w]) => ['vm', n, ...w].join(' ')),
  fc.tuple(name, prop, value).map(([n, p, v]) => `property ${n} ${p} ${v}`),
  fc.tuple(name, prop).map(([n, p]) => `property ${n} ${p}`),
  fc.tuple(name, fc.constantFrom('root', 'private', 'volatile', ''), fc.array(kv, { maxLength: 3 })).map(([n, v, w]) => ['volume', n, v, ...w].join(' ')),
  fc.tuple(fc.constantFrom('vm', 'property', 'volume', 'vmx', 'gadget', ''), name).map(([k, n]) => `${k} ${n}`),
  fc.constantFrom('vm', 'property', '', ' ', 'volume a'),
);
const reply = fc.tuple(fc.array(line, { maxLength: 30 }), fc.boolean()).map(([ls, final]) => ls.join('\n') + (final ? '\n' : ''));
const onlySet = fc.option(fc.subarray(['label', 'template', 'netvm', 'other', '']).map((l) => new Set(l)), { nil: undefined });

describe('admin.vm.ListDetails reader against a plain reference parser', () => {
  it('readListDetails hands over what the reference reads, for any reply and any `only`', () => {
    fc.assert(
      fc.property(reply, onlySet, (text, only) => {
        assert.deepEqual(flat(read(text, only)), flat(reference(text, only)));
      }),
      { numRuns: 3000 },
    );
  });

  it('parseListDetails: the same domains, each property parsed and unescaped', () => {
    fc.assert(
      fc.property(reply, (text) => {
        const got = parseListDetails(text);
        const want = reference(text);
        assert.deepEqual(
          got.map((d) => [d.name, d.klass, d.state, d.uuid, [...d.properties.keys()], [...d.volumePools]]),
          want.map((d) => [d.name, d.klass, d.state, d.uuid, [...d.properties.keys()], [...d.volumePools]]),
        );
        // The value of each property: its escapes undone (\n, \\), then `default=B type=T VALUE`.
        for (const [i, d] of want.entries())
          for (const [p, raw] of d.properties) {
            const unescaped = raw.replace(/\\\\|\\n/g, (m) => (m === '\\n' ? '\n' : '\\'));
            const m = /^default=(True|False) type=(\S+) ?([\s\S]*)$/.exec(unescaped);
            const expected = m ? { isDefault: m[1] === 'True', type: m[2], value: m[3] } : { isDefault: false, type: 'str', value: unescaped };
            assert.deepEqual(got[i]!.properties.get(p), expected, `${d.name} ${p}: ${JSON.stringify(raw)}`);
          }
      }),
      { numRuns: 2000 },
    );
  });

  it('a reply as the daemon writes it: every domain, in order', () => {
    const text = 'vm dom0 class=AdminVM state=Running uuid=0\nproperty dom0 label default=True type=label black\nvm w1 class=AppVM state=Halted uuid=1\nproperty w1 label default=False type=label red\nvolume w1 root pool=default\nvolume w1 private pool=fast\n';
    assert.deepEqual(flat(read(text)), [
      { name: 'dom0', klass: 'AdminVM', state: 'Running', uuid: '0', properties: [['label', 'default=True type=label black']], volumePools: [] },
      {
        name: 'w1',
        klass: 'AppVM',
        state: 'Halted',
        uuid: '1',
        properties: [['label', 'default=False type=label red']],
        volumePools: [
          ['root', 'default'],
          ['private', 'fast'],
        ],
      },
    ]);
  });
});
