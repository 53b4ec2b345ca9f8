/** The argument parser, sizes, tables and the progress line: table-driven. */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { helpText, parseArgs, UsageError, type CommandSpec } from '../../src/cli/common/args.js';
import { humanSize, parseSize, table } from '../../src/cli/common/output.js';
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

describe('sizes', () => {
  const cases: [string, number | null][] = [
    ['0', 0],
    ['512', 512],
    ['1K', 1000],
    ['1Ki', 1024],
    ['2M', 2_000_000],
    ['2Mi', 2 * 1024 ** 2],
    ['3G', 3e9],
    ['3Gi', 3 * 1024 ** 3],
    ['1T', 1e12],
    ['1Ti', 1024 ** 4],
    ['10GiB', 10 * 1024 ** 3],
    ['512kB', 512_000],
    ['2x', null],
    ['-1', null],
    ['1.5G', null],
    ['G', null],
    ['', null],
    ['99999999999999999999T', null],
  ];
  for (const [text, want] of cases) it(`${JSON.stringify(text)} -> ${want}`, () => assert.equal(parseSize(text), want));
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
