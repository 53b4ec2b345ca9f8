/** The argument parser, sizes, tables and the progress line: table-driven. */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { helpText, parseArgs, UsageError, type CommandSpec } from '../../src/cli/common/args.js';
import { humanSize, table } from '../../src/cli/common/output.js';
import { parseSize } from '../../src/cli/common/size.js';
import { progressBar, renderProgress } from '../../src/cli/common/progress.js';

const CREATE: CommandSpec = {
  prog: 'qvm-create',
  summary: 'x',
  options: [
    { names: ['-P'], kind: 'value', dest: 'one_pool', help: '' },
    { names: ['--pool'], kind: 'append', dest: 'pool', help: '' },
    { names: ['-l', '--label'], kind: 'value', help: '' },
    { names: ['-f', '--force'], kind: 'flag', dest: 'force', help: '' },
    { names: ['-q'], kind: 'flag', dest: 'quiet', help: '' },
    { names: ['-a'], kind: 'multi', nargs: 2, dest: 'add', help: '' },
  ],
  positionals: [{ name: 'NAME' }, { name: 'REST', count: '*' }],
  exclusive: [['one_pool', 'pool']],
};

describe('parseArgs', () => {
  const ok: [string, string[], (p: ReturnType<typeof parseArgs>) => void][] = [
    ['R3.2 -Pfoo', ['-Pfoo', 'w'], (p) => assert.equal(p.values.get('one_pool'), 'foo')],
    ['-P foo', ['-P', 'foo', 'w'], (p) => assert.equal(p.values.get('one_pool'), 'foo')],
    ['--pool=a=b twice', ['--pool=root=a', 'w', '--pool', 'private=b'], (p) => assert.deepEqual(p.lists.get('pool'), ['root=a', 'private=b'])],
    ['clustered flags', ['-fq', 'w'], (p) => assert.ok(p.flags.has('force') && p.flags.has('quiet'))],
    ['negative number is positional', ['w', '-1'], (p) => assert.deepEqual(p.positionals['REST'], ['-1'])],
    ['-- ends options', ['--', '-f'], (p) => assert.equal(p.positionals['NAME'], '-f')],
    ['two values', ['-a', 'p', 'file', 'w'], (p) => assert.deepEqual(p.multis.get('add'), ['p', 'file'])],
    ['options after positionals', ['w', '-l', 'red'], (p) => assert.equal(p.values.get('label'), 'red')],
    ['help', ['-h'], (p) => assert.equal(p.help, true)],
  ];
  for (const [name, argv, check] of ok) it(name, () => check(parseArgs(CREATE, argv)));

  const bad: [string, string[], RegExp][] = [
    ['exclusive', ['-Pa', '--pool', 'root=b', 'w'], /-P and --pool cannot be used together/],
    ['unknown option', ['--nope', 'w'], /unrecognized argument: --nope/],
    ['missing value', ['w', '-l'], /option -l expects a value/],
    ['missing positional', [], /required: NAME/],
    ['flag with value', ['--force=1', 'w'], /takes no value/],
    ['too few values', ['w', '-a', 'p'], /expects 2 values/],
  ];
  for (const [name, argv, re] of bad)
    it(`refuses: ${name}`, () => assert.throws(() => parseArgs(CREATE, argv), (e: unknown) => e instanceof UsageError && re.test(e.message)));

  it('help text names every option', () => {
    const h = helpText(CREATE);
    assert.match(h, /^usage: qvm-create \[-h\]/);
    for (const n of ['-P', '--pool', '--label', '--force']) assert.ok(h.includes(n), n);
  });
});

describe('sizes (common/size.ts): the stock parse_size forms and ours', () => {
  // Bytes worked out by hand: K = 1000, Ki = 1024, M = 1000^2 ...
  const accepted: [string, number][] = [
    ['0', 0],
    ['512', 512],
    ['1K', 1000], ['1k', 1000], ['1KB', 1000], ['1kb', 1000],
    ['1Ki', 1024], ['1KiB', 1024], ['1kib', 1024], ['1KIB', 1024],
    ['2M', 2_000_000], ['2mb', 2_000_000], ['2Mi', 2_097_152], ['2MiB', 2_097_152],
    ['4g', 4_000_000_000], ['4G', 4_000_000_000], ['4GB', 4_000_000_000],
    ['4GiB', 4_294_967_296], ['4gi', 4_294_967_296], ['3Gi', 3_221_225_472],
    ['1T', 1_000_000_000_000], ['1tb', 1_000_000_000_000], ['1Ti', 1_099_511_627_776], ['8TiB', 8_796_093_022_208],
    // Decimals that come to whole bytes.
    ['1.5G', 1_500_000_000], ['1.5Gi', 1_610_612_736], ['.5Gi', 536_870_912], ['2.25Ki', 2304], ['0.5K', 500], ['1.', 1],
    // What Python's strip() and int() let through in the stock tool.
    [' 4G ', 4_000_000_000], ['4 G', 4_000_000_000], ['4 GiB', 4_294_967_296], ['+4G', 4_000_000_000],
    ['1_000', 1000], ['1_000K', 1_000_000], ['-0', 0],
    // A plain B is bytes.
    ['4096B', 4096], ['4096 b', 4096],
    ['9007199254740991', 9_007_199_254_740_991],
  ];
  for (const [text, want] of accepted) it(`${JSON.stringify(text)} -> ${want}`, () => assert.equal(parseSize(text), want));

  const FORMS =
    'give bytes, or a number with a suffix (any case): K M G T (x1000, also KB...), Ki Mi Gi Ti (x1024, also KiB...); decimals allowed (1.5G)';
  const refused: [string, string][] = [
    ['2x', FORMS], ['G', FORMS], ['B', FORMS], ['', FORMS], ['.', FORMS], ['1e9', FORMS], ['0x10', FORMS],
    ['1__0', FORMS], ['_1', FORMS], ['4 G B', FORMS], ['4iB', FORMS], ['5P', FORMS], ['--5', FORMS],
    ['-5G', 'a size cannot be negative'], ['-1', 'a size cannot be negative'], ['-.5K', 'a size cannot be negative'],
    ['1.1Ki', 'not a whole number of bytes'], ['0.5', 'not a whole number of bytes'], ['1.0000000001G', 'not a whole number of bytes'],
    ['9007199254740992', 'larger than 9007199254740991 bytes'], ['99999999999999999999T', 'larger than 9007199254740991 bytes'],
  ];
  for (const [text, why] of refused)
    it(`refuses ${JSON.stringify(text)}: ${why.slice(0, 30)}`, () =>
      assert.throws(
        () => parseSize(text),
        (e: unknown) => e instanceof UsageError && e.message === `invalid size '${text}': ${why}`,
      ));

  it('a negative size is a value, not an option: the parser hands it over', () => {
    const spec: CommandSpec = { prog: 'x', summary: '', options: [{ names: ['--size'], kind: 'value', help: '' }], positionals: [{ name: 'SIZE' }] };
    const p = parseArgs(spec, ['--size', '-1.5G', '-5G']);
    assert.equal(p.values.get('size'), '-1.5G');
    assert.equal(p.positionals['SIZE'], '-5G');
    assert.throws(() => parseArgs(spec, ['-x']), /unrecognized argument: -x/);
  });

  it('human sizes', () => {
    assert.equal(humanSize(512), '512 B');
    assert.equal(humanSize(1536), '1.5 KiB');
    assert.equal(humanSize(3 * 1024 ** 3), '3.0 GiB');
  });
});

describe('table', () => {
  it('two spaces between columns, no trailing spaces', () => {
    assert.equal(table([['NAME', 'DRIVER'], ['default', 'file-reflink'], ['p', '']]), 'NAME     DRIVER\ndefault  file-reflink\np\n');
  });
});

describe('progress', () => {
  it('renders bytes, percent, rate and ETA', () => {
    assert.equal(
      renderProgress('import w:private', 512 * 1024 ** 2, 1024 ** 3, 4, 100),
      'import w:private [###############...............]  50%   512.0 MiB/1.0 GiB   128.0 MiB/s  ETA 0:04',
    );
  });
  it('draws on a terminal and clears the line at the end', () => {
    let written = '';
    let t = 0;
    const bar = progressBar('x', 100, { isTTY: true, columns: 80, write: (s: string) => (written += s) }, () => t);
    t = 1000;
    bar.update(50);
    bar.finish();
    assert.match(written, /\r\x1b\[2Kx \[#+\.+\]  50%/);
    assert.ok(written.endsWith('\r\x1b[2K'));
  });
  it('prints nothing when not a terminal', () => {
    let written = '';
    const bar = progressBar('x', 100, { isTTY: false, write: (s: string) => (written += s) });
    bar.update(50);
    bar.finish();
    assert.equal(written, '');
  });
});
