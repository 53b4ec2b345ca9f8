/** Reply text to values: table-driven, expected values written out by hand. */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
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
  });

  it('parsePropertyLine: GetAll escapes newline and backslash in values', () => {
    assert.deepEqual(parsePropertyLine('label default=False type=label red'), ['label', { isDefault: false, type: 'label', value: 'red' }]);
    assert.deepEqual(parsePropertyLine('note default=False type=str a\\nb\\\\n\\\\c'), ['note', { isDefault: false, type: 'str', value: 'a\nb\\n\\c' }]);
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
