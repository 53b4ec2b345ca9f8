/** Reply text to values: table-driven, expected values written out by hand. */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { parseListDetails } from '../../src/client/client.js';
import { keyValueLines, keyValueWords, lines, numberOrNull, parseProperty, parsePropertyLine, payloadText } from '../../src/client/replies.js';

describe('reply parsers', () => {
  it('lines: empty lines dropped, no trailing empty line', () => {
    assert.deepEqual(lines('a\nb\n'), ['a', 'b']);
    assert.deepEqual(lines(''), []);
    assert.deepEqual(lines('a\n\nb'), ['a', 'b']);
  });

  it('keyValueLines: in order, the first = splits, a bare key has an empty value', () => {
    assert.deepEqual(keyValueLines('pool=p\nsource=\nopt=a=b\nbare\n'), [
      ['pool', 'p'],
      ['source', ''],
      ['opt', 'a=b'],
      ['bare', ''],
    ]);
  });

  it('keyValueWords: words without = are left out', () => {
    assert.deepEqual([...keyValueWords(['class=AppVM', 'state=Halted', 'odd', 'x=a=b'])], [
      ['class', 'AppVM'],
      ['state', 'Halted'],
      ['x', 'a=b'],
    ]);
  });

  it('parseProperty: default, type, the value with its spaces; anything else is a str', () => {
    assert.deepEqual(parseProperty('default=True type=label red'), { isDefault: true, type: 'label', value: 'red' });
    assert.deepEqual(parseProperty('default=False type=str  two  spaces '), { isDefault: false, type: 'str', value: ' two  spaces ' });
    assert.deepEqual(parseProperty('default=False type=vm '), { isDefault: false, type: 'vm', value: '' });
    assert.deepEqual(parseProperty('default=False type=vm'), { isDefault: false, type: 'vm', value: '' });
    assert.deepEqual(parseProperty('something else'), { isDefault: false, type: 'str', value: 'something else' });
    // Only one space is the separator; a tab or newline after the type is the value's; no type is no property line.
    assert.deepEqual(parseProperty('default=True type=str\tx'), { isDefault: true, type: 'str', value: '\tx' });
    assert.deepEqual(parseProperty('default=True type=str\nx'), { isDefault: true, type: 'str', value: '\nx' });
    assert.deepEqual(parseProperty('default=True type= x'), { isDefault: false, type: 'str', value: 'default=True type= x' });
    assert.deepEqual(parseProperty('default=Maybe type=str x'), { isDefault: false, type: 'str', value: 'default=Maybe type=str x' });
    // A non-ASCII space (\u00a0) ends the type as \s does.
    assert.deepEqual(parseProperty('default=True type=str\u00a0x'), { isDefault: true, type: 'str', value: '\u00a0x' });
  });

  it('parsePropertyLine: GetAll escapes newline and backslash in values', () => {
    assert.deepEqual(parsePropertyLine('label default=False type=label red'), ['label', { isDefault: false, type: 'label', value: 'red' }]);
    assert.deepEqual(parsePropertyLine('note default=False type=str a\\nb\\\\n\\\\c'), ['note', { isDefault: false, type: 'str', value: 'a\nb\\n\\c' }]);
  });

  it('parseListDetails: vm, property and volume lines in one pass; `only` keeps those properties; unknown kinds and strangers skipped', () => {
    const text = [
      'vm a class=AppVM state=Halted uuid=u-a',
      'property a label default=False type=label red',
      // not a's (a domain whose name only starts with a), and not listed before its vm line: skipped
      'property ab stray default=False type=str x',
      'property a note default=False type=str x\\ny',
      'property a netvm default=True type=vm ',
      'volume a private pool=p1',
      'volume a root revisions=1 pool=p2',
      'gadget a thing=1',
      'property nosuch label default=False type=label blue',
      'vm ab class=TemplateVM state=Running uuid=u-ab',
      'property ab label default=True type=label black',
      'property a template default=False type=vm t',
      'volume ab root',
      '',
    ].join('\n');
    const all = parseListDetails(text);
    assert.deepEqual(
      all.map((d) => [d.name, d.klass, d.state, d.uuid]),
      [
        ['a', 'AppVM', 'Halted', 'u-a'],
        ['ab', 'TemplateVM', 'Running', 'u-ab'],
      ],
    );
    assert.deepEqual([...all[0]!.properties], [
      ['label', { isDefault: false, type: 'label', value: 'red' }],
      ['note', { isDefault: false, type: 'str', value: 'x\ny' }],
      ['netvm', { isDefault: true, type: 'vm', value: '' }],
      // after another domain's lines: still a's (found by name)
      ['template', { isDefault: false, type: 'vm', value: 't' }],
    ]);
    assert.deepEqual([...all[0]!.volumePools], [['private', 'p1'], ['root', 'p2']]);
    assert.deepEqual([...all[1]!.properties], [['label', { isDefault: true, type: 'label', value: 'black' }]]);
    assert.deepEqual([...all[1]!.volumePools], [['root', '']]);
    const some = parseListDetails(text, new Set(['label', 'template']));
    assert.deepEqual([...some[0]!.properties.keys()], ['label', 'template']);
    assert.deepEqual(parseListDetails(''), []);
  });

  it('payloadText and numberOrNull', () => {
    assert.equal(payloadText(true), 'True');
    assert.equal(payloadText(false), 'False');
    assert.equal(payloadText(3), '3');
    assert.equal(payloadText('-1'), '-1');
    assert.equal(numberOrNull('2147483648'), 2147483648);
    assert.equal(numberOrNull('0'), 0);
    for (const t of ['', undefined, 'abc', 'NaN', 'Infinity']) assert.equal(numberOrNull(t), null, String(t));
  });
});
