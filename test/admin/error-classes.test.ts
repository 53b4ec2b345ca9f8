// The error-class audit of src/admin/error-classes.md, kept true: every row
// is called over the daemon's real socket and its reply read the way the
// stock client (qubesadmin `_parse_qubesd_response`) reads it; every method
// of the daemon's table has a row; a class that differs from Qubes' has a
// note; the "stock client" column is what that client makes of the name.
import { it, before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { describeEachFs } from '../helpers/filesystems.js';
import { startRig, ok, raw, type Rig } from './methods/helpers.js';
import { errorFromReply } from '../../src/admin/client.js';
import * as errors from '../../src/storage/errors.js';

const DOC = fileURLToPath(new URL('../../../src/admin/error-classes.md', import.meta.url));
const BEGIN = '<!-- error rows:';
const END = '<!-- end of error rows -->';

/** The classes of qubesadmin/exc.py (qubes-core-admin-client), by name: facts, not our code. */
const STOCK_CLIENT_CLASSES = new Set([
  'QubesException', 'QubesVMNotFoundError', 'QubesVMError', 'QubesVMNotStartedError', 'QubesVMNotRunningError',
  'QubesVMNotPausedError', 'QubesVMNotSuspendedError', 'QubesVMNotHaltedError', 'QubesVMShutdownTimeout',
  'QubesNoTemplateError', 'QubesVMInUseError', 'QubesValueError', 'QubesPropertyValueError', 'QubesNoSuchPropertyError',
  'QubesNotImplementedError', 'BackupCancelledError', 'BackupAlreadyRunningError', 'QubesMemoryError',
  'QubesFeatureNotFoundError', 'QubesTagNotFoundError', 'QubesLabelNotFoundError', 'StoragePoolException',
  'QubesDaemonCommunicationError', 'DeviceAlreadyAttached', 'BackupRestoreError', 'QubesDaemonAccessError',
  'QubesPropertyAccessError', 'QubesDaemonNoResponseError',
]);
/** Python's builtin exceptions whose names end in Error (the client's fallback for such names). */
const PYTHON_BUILTIN_ERRORS = new Set([
  'ArithmeticError', 'AssertionError', 'AttributeError', 'BlockingIOError', 'BrokenPipeError', 'BufferError',
  'ChildProcessError', 'ConnectionAbortedError', 'ConnectionError', 'ConnectionRefusedError', 'ConnectionResetError',
  'EOFError', 'EnvironmentError', 'FileExistsError', 'FileNotFoundError', 'FloatingPointError', 'IOError',
  'ImportError', 'IndentationError', 'IndexError', 'InterruptedError', 'IsADirectoryError', 'KeyError', 'LookupError',
  'MemoryError', 'ModuleNotFoundError', 'NameError', 'NotADirectoryError', 'NotImplementedError', 'OSError',
  'OverflowError', 'PermissionError', 'ProcessLookupError', 'RecursionError', 'ReferenceError', 'RuntimeError',
  'SyntaxError', 'SystemError', 'TabError', 'TimeoutError', 'TypeError', 'UnboundLocalError', 'UnicodeDecodeError',
  'UnicodeEncodeError', 'UnicodeError', 'UnicodeTranslateError', 'ValueError', 'ZeroDivisionError',
]);

/** The class qubesadmin raises for an error reply naming `name`. */
function stockClientClass(name: string): string {
  if (STOCK_CLIENT_CLASSES.has(name)) return name;
  if (name.endsWith('Error') && PYTHON_BUILTIN_ERRORS.has(name)) return name;
  return 'QubesException';
}

interface Row {
  readonly line: number;
  readonly call: string;
  readonly method: string;
  readonly arg: string;
  readonly dest: string;
  readonly payload: string;
  readonly situation: string;
  readonly answer: string;
  readonly qubes: string;
  readonly stock: string;
  readonly note: string;
}

const code = (cell: string): string => {
  const m = /^`(.*)`$/.exec(cell);
  return m ? m[1]! : cell;
};

/** `\n` and `\xHH` in a payload cell. */
function unescape(s: string): string {
  return s.replace(/\\n|\\x([0-9a-fA-F]{2})/g, (_m, hex: string | undefined) => (hex ? String.fromCharCode(parseInt(hex, 16)) : '\n'));
}

async function readRows(): Promise<Row[]> {
  const text = await fs.readFile(DOC, 'utf8');
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  assert.ok(begin >= 0 && end > begin, `${DOC} has the row markers`);
  const firstLine = text.slice(0, begin).split('\n').length;
  const lines = text.slice(begin, end).split('\n');
  const rows: Row[] = [];
  lines.forEach((l, i) => {
    if (!l.startsWith('| `')) return;
    const cells = l.split('|').slice(1, -1).map((c) => c.trim()); // no cell holds a '|'
    assert.equal(cells.length, 7, `line ${firstLine + i}: 7 columns: ${l}`);
    const [call, payload, situation, answer, qubes, stock, note] = cells as [string, string, string, string, string, string, string];
    const [methodArg, dest] = code(call).split(' ') as [string, string];
    const plus = methodArg.indexOf('+');
    rows.push({
      line: firstLine + i,
      call: code(call),
      method: plus < 0 ? methodArg : methodArg.slice(0, plus),
      arg: plus < 0 ? '' : methodArg.slice(plus + 1),
      dest,
      payload: unescape(code(payload)),
      situation,
      answer: code(answer),
      qubes: code(qubes),
      stock: code(stock),
      note,
    });
  });
  return rows;
}

/** Splits an error reply as qubesadmin does (split on NUL, at most 5 parts) and checks what it would do with it. */
function readAsStockClient(reply: Buffer, what: string): { type: string; message: string } {
  assert.equal(reply.subarray(0, 2).toString('latin1'), '2\0', `${what}: an error reply, got ${JSON.stringify(reply.toString('latin1'))}`);
  const fields: Buffer[] = [];
  let rest = reply;
  for (let i = 0; i < 4; i++) {
    const nul = rest.indexOf(0);
    if (nul < 0) break;
    fields.push(rest.subarray(0, nul));
    rest = rest.subarray(nul + 1);
  }
  fields.push(rest);
  assert.equal(fields.length, 5, `${what}: five fields`);
  const [, type, traceback, format, args] = fields as [Buffer, Buffer, Buffer, Buffer, Buffer];
  assert.match(type.toString('latin1'), /^[A-Za-z_][A-Za-z0-9_]*$/, `${what}: the type is an ASCII identifier`);
  assert.equal(traceback.length, 0, `${what}: no traceback without debug`);
  // No arguments follow, so the client applies `%` to an empty tuple: only `%%` may appear.
  assert.equal(args.length, 0, `${what}: no arguments after the message`);
  const message = format.toString('utf8');
  assert.ok(!message.replace(/%%/g, '').includes('%'), `${what}: a lone % would break the client's formatting: ${message}`);
  return { type: type.toString('latin1'), message: message.replace(/%%/g, '%') };
}

test('the hierarchy is Qubes\' (qubes/exc.py) where our callers can tell', () => {
  // [class, its Qubes parent] as qubes-core-admin declares them.
  const parents: Array<[new (m: string) => Error, new (m: string) => Error]> = [
    [errors.QubesVMNotHaltedError, errors.QubesVMError],
    [errors.QubesVMNotStartedError, errors.QubesVMError],
    [errors.QubesVMInUseError, errors.QubesVMError],
    [errors.QubesPropertyValueError, errors.QubesValueError],
    [errors.QubesVolumeCopyTokenNotFoundError, errors.ProtocolError],
  ];
  for (const [cls, parent] of parents) assert.ok(new cls('x') instanceof parent, `${cls.name} is a ${parent.name}`);
  // Not a value error in Qubes: a client catching QubesValueError does not catch these.
  for (const cls of [errors.QubesVMAlreadyExistsError, errors.QubesVMInvalidUUIDError, errors.QubesLabelNotFoundError])
    assert.ok(!(new cls('x') instanceof errors.QubesValueError) && new cls('x') instanceof errors.QubesException, cls.name);
  assert.ok(!(new errors.QubesVMInvalidUUIDError('x') instanceof errors.QubesVMNotFoundError));
});

describeEachFs('admin error classes (src/admin/error-classes.md)', (tfs, ctx) => {
  let rig: Rig;
  let rows: Row[];

  before(async () => {
    rows = await readRows();
    rig = await startRig(tfs, await ctx.tempDir('errors'));
    const S = rig.socketPath;
    await ok(S, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    for (const n of ['work', 'run', 'rpm']) await ok(S, 'admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${n} label=red`);
    await ok(S, 'admin.vm.property.Set', 'rpm', 'installed_by_rpm', 'True');
    await ok(S, 'admin.vm.Start', 'run');
  });
  after(async () => {
    await rig?.stop();
  });

  it('every row: the class on the wire is the answer, read as the stock client reads it', async () => {
    const S = rig.socketPath;
    const token = await ok(S, 'admin.vm.volume.CloneFrom', 'work', 'private');
    const wrong: string[] = [];
    for (const r of rows) {
      const what = `line ${r.line}: ${r.call}`;
      const reply = await raw(S, r.method, r.dest, r.arg, Buffer.from(r.payload.replace('{token}', token), 'latin1'));
      const { type, message } = readAsStockClient(reply, what);
      if (type !== r.answer) wrong.push(`${what}: answered ${type} (${message}), the table says ${r.answer}`);
      // Our own client gives the class of that name.
      const mine = errorFromReply(type, message);
      if (mine.name !== type) wrong.push(`${what}: our client maps ${type} to ${mine.name}`);
    }
    assert.deepEqual(wrong, []);
  });

  it('every method of the daemon has a row; every row names a method of the daemon or none on purpose', () => {
    const methods = Object.keys(rig.rt.methods);
    const named = new Set(rows.map((r) => r.method));
    assert.deepEqual(methods.filter((m) => !named.has(m)), [], 'methods without a row');
    const unknown = [...named].filter((m) => !methods.includes(m));
    assert.deepEqual(unknown, ['admin.vm.Frobnicate'], 'rows for methods the daemon does not serve (only the one that says so)');
  });

  it('the columns agree: a difference from Qubes has a note; the stock client column is what it raises', () => {
    const problems: string[] = [];
    for (const r of rows) {
      const what = `line ${r.line}: ${r.call}`;
      if (!Object.hasOwn(errors, r.answer)) problems.push(`${what}: ${r.answer} is not a class of src/storage/errors.ts`);
      const qubesIsClass = /^[A-Za-z]+$/.test(r.qubes);
      if (!qubesIsClass && r.qubes !== 'not in Qubes' && r.qubes !== 'not checked') problems.push(`${what}: Qubes column '${r.qubes}'`);
      if (qubesIsClass && r.qubes !== r.answer && r.note === '') problems.push(`${what}: differs from Qubes (${r.qubes}) without a note`);
      if (r.qubes === 'not in Qubes' && r.note === '') problems.push(`${what}: not in Qubes, no note`);
      if (r.stock !== stockClientClass(r.answer)) problems.push(`${what}: the stock client raises ${stockClientClass(r.answer)}, not ${r.stock}`);
      if (r.situation === '') problems.push(`${what}: no situation`);
    }
    assert.deepEqual(problems, []);
  });
});
