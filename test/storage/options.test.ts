import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { boolFromWord, checkOptionChange, parseBool, parseOptions, type OptionSpec } from '../../src/storage/options.js';
import { FILE_REFLINK_OPTIONS } from '../../src/drivers/file-reflink/options.js';

const specs: readonly OptionSpec[] = FILE_REFLINK_OPTIONS;

describe('declared driver options', () => {
  it('fill defaults and convert strings', () => {
    const o = parseOptions(specs, { dir_path: '/x', setup_check: 'False', revisions_to_keep: '3' }, 'pool p');
    assert.deepEqual(o, { dir_path: '/x', setup_check: false, revisions_to_keep: 3, ephemeral_volatile: false });
  });
  const bad: [string, Record<string, string>, RegExp][] = [
    ['unknown key', { dir_path: '/x', colour: 'red' }, /unknown option 'colour'/],
    ['missing required key', {}, /missing required option 'dir_path'/],
    ['relative path', { dir_path: 'x' }, /option dir_path: must be an absolute path/],
    ['bad bool', { dir_path: '/x', setup_check: 'maybe' }, /option setup_check: expected True or False/],
    ['bad int', { dir_path: '/x', revisions_to_keep: '01' }, /option revisions_to_keep: expected an integer/],
    ['int below min', { dir_path: '/x', revisions_to_keep: '-2' }, /must be at least -1/],
    ['NUL in path', { dir_path: '/x\0y' }, /NUL/],
  ];
  for (const [title, raw, re] of bad)
    it(`refuse ${title}, naming the key`, () => assert.throws(() => parseOptions(specs, raw, 'pool p'), re));

  it('only mutable options change after creation', () => {
    const cur = parseOptions(specs, { dir_path: '/x' }, 'pool p');
    assert.equal(checkOptionChange(specs, cur, { revisions_to_keep: '5' }, 'pool p')['revisions_to_keep'], 5);
    assert.throws(() => checkOptionChange(specs, cur, { dir_path: '/y' }, 'pool p'), /'dir_path' cannot be changed/);
  });
});

describe('boolean words (one reader for options, properties, qubes.xml and the tools)', () => {
  const cases: [string, boolean | null][] = [
    ['True', true], ['true', true], ['TRUE', true], ['1', true], ['yes', true], ['Yes', true], ['on', true], ['ON', true],
    ['False', false], ['false', false], ['0', false], ['no', false], ['NO', false], ['off', false], ['Off', false],
    ['', null], [' yes', null], ['yes ', null], ['y', null], ['n', null], ['2', null], ['truee', null], ['None', null],
  ];
  for (const [word, want] of cases) it(`${JSON.stringify(word)} -> ${want}`, () => assert.equal(boolFromWord(word), want));
  it('options: blank is False, surrounding blanks are ignored, anything else is refused', () => {
    assert.equal(parseBool('', 'o'), false);
    assert.equal(parseBool('  ', 'o'), false);
    assert.equal(parseBool(' on\n', 'o'), true);
    assert.throws(() => parseBool('maybe', 'pool p: option x'), /^QubesValueError: pool p: option x: expected True or False, got 'maybe'$/);
  });
});
