// Methods declare their shape (argument, payload, destination, scope,
// access) in the method table: the dispatcher refuses what does not fit
// before the method runs, with the replies the methods gave when they checked
// this themselves; the policy matches method classes by the declaration; and
// the method list of src/admin/README.md is the table's.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { QubesVMNotFoundError } from '../../src/storage/errors.js';
import {
  INTERNAL_METHOD_LIST_BEGIN,
  INTERNAL_METHOD_LIST_END,
  METHOD_LIST_BEGIN,
  METHOD_LIST_END,
  PolicyError,
  createDispatchContext,
  method,
  parsePolicy,
  runCall,
  shapeProblems,
  silentLog,
  type MethodShape,
  type MethodTable,
} from '../../src/admin/index.js';
import { openRuntime, type Runtime } from '../../src/daemon/runtime.js';
import { ADMIN_README, daemonInternalMethodList, daemonMethodList } from '../../src/daemon/methods-doc.js';
import { internalMethods } from '../../src/admin/methods/internal.js';
import { tempDir } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');
const refused = (name: string, message: string) => b(`2\0${name}\0\0${message}\0`);

describe('the dispatcher enforces a declared shape before the method runs', () => {
  const ran: string[] = [];
  const known = new Set(['dom0', 'work']);
  const lookupDest = (dest: string) => {
    if (!known.has(dest)) throw new QubesVMNotFoundError(`no such domain: '${dest}'`);
  };
  const shape = (s: Partial<MethodShape>): MethodShape => ({
    arg: 'none',
    argNames: '',
    payload: 'none',
    dest: 'domain',
    scope: 'local',
    access: 'read',
    lookupDest,
    ...s,
  });
  const handler = (name: string) => async () => {
    ran.push(name);
    return 'ran';
  };
  const table: MethodTable = {
    't.Plain': method(shape({}), handler('t.Plain')),
    't.Global': method(shape({ dest: 'dom0', scope: 'global' }), handler('t.Global')),
    't.GlobalByName': method(shape({ dest: 'dom0', scope: 'global', lookupDest: undefined }), handler('t.GlobalByName')),
    't.Named': method(shape({ arg: 'required', argNames: 'thing' }), handler('t.Named')),
    't.Checked': method(
      shape({
        arg: 'any',
        argNames: 'thing',
        checkArg: (h) => {
          if (h.arg === 'bad') throw new QubesVMNotFoundError(`no thing ${h.arg}`);
        },
      }),
      handler('t.Checked'),
    ),
    't.Bounded': method(shape({ payload: 'bounded', access: 'write' }), handler('t.Bounded')),
    't.Undeclared': method(handler('t.Undeclared')),
  };
  const ctx = createDispatchContext({ methods: table, log: silentLog });
  const call = (m: string, dest: string, arg = '', payload = '') => runCall(ctx, { method: m, arg, dest }, payload);

  test('a call that fits runs', async () => {
    ran.length = 0;
    assert.deepEqual(await call('t.Plain', 'work'), b('0\0ran'));
    assert.deepEqual(await call('t.Global', 'dom0'), b('0\0ran'));
    assert.deepEqual(await call('t.Named', 'work', 'x'), b('0\0ran'));
    assert.deepEqual(await call('t.Checked', 'work'), b('0\0ran'));
    assert.deepEqual(await call('t.Bounded', 'work', '', 'data'), b('0\0ran'));
    assert.deepEqual(await call('t.Undeclared', 'anything', 'arg', 'data'), b('0\0ran'));
    assert.equal(ran.length, 6);
  });

  test('an extra or a missing argument, a payload, a wrong or unknown destination: refused, the method not run', async () => {
    ran.length = 0;
    assert.deepEqual(await call('t.Plain', 'work', 'x'), refused('ProtocolError', 't.Plain takes no argument'));
    assert.deepEqual(await call('t.Named', 'work'), refused('ProtocolError', 't.Named needs an argument'));
    assert.deepEqual(await call('t.Plain', 'work', '', 'x'), refused('ProtocolError', 't.Plain takes no payload'));
    assert.deepEqual(await call('t.Global', 'work'), refused('ProtocolError', 't.Global is a global call: its destination must be dom0'));
    assert.deepEqual(await call('t.Plain', 'ghost'), refused('QubesVMNotFoundError', "no such domain: 'ghost'"));
    assert.deepEqual(await call('t.Checked', 'work', 'bad'), refused('QubesVMNotFoundError', 'no thing bad'));
    assert.deepEqual(ran, []);
  });

  test('the order: destination lookup, global destination, argument, what it names, payload', async () => {
    ran.length = 0;
    // An unknown destination of a global call with a lookup is not found; without one, not dom0.
    assert.deepEqual(await call('t.Global', 'ghost', 'x', 'p'), refused('QubesVMNotFoundError', "no such domain: 'ghost'"));
    assert.deepEqual(await call('t.GlobalByName', 'ghost', 'x', 'p'), refused('ProtocolError', 't.GlobalByName is a global call: its destination must be dom0'));
    assert.deepEqual(await call('t.Global', 'work', 'x', 'p'), refused('ProtocolError', 't.Global is a global call: its destination must be dom0'));
    assert.deepEqual(await call('t.Named', 'work', '', 'p'), refused('ProtocolError', 't.Named needs an argument'));
    assert.deepEqual(await call('t.Plain', 'work', 'x', 'p'), refused('ProtocolError', 't.Plain takes no argument'));
    assert.deepEqual(await call('t.Checked', 'work', 'bad', 'p'), refused('QubesVMNotFoundError', 'no thing bad'));
    assert.deepEqual(ran, []);
  });
});

describe('policy: method classes by the declaration', () => {
  const shape = (scope: 'global' | 'local', access: 'read' | 'write' | 'execute'): MethodShape => ({
    arg: 'none',
    argNames: '',
    payload: 'none',
    dest: 'any',
    scope,
    access,
  });
  const ok = async () => 'ok';
  const table: MethodTable = {
    'l.Read': method(shape('local', 'read'), ok),
    'l.Write': method(shape('local', 'write'), ok),
    'l.Execute': method(shape('local', 'execute'), ok),
    'g.Read': method(shape('global', 'read'), ok),
    'g.Write': method(shape('global', 'write'), ok),
    'u.Undeclared': method(ok),
  };
  const allowed = async (policy: string, m: string, dest = 'work') => {
    const ctx = createDispatchContext({ methods: table, log: silentLog, policy: parsePolicy(policy) });
    const r = await runCall(ctx, { method: m, dest, source: 'mgmt' });
    return r[0] === 0x30;
  };
  const names = Object.keys(table);
  const allowedSet = async (policy: string, dest = 'work') => {
    const out: string[] = [];
    for (const m of names) if (await allowed(policy, m, dest)) out.push(m);
    return out;
  };

  test('ro: the read-only methods of the scope; rwx: every method of the scope (it includes ro, as in Qubes)', async () => {
    assert.deepEqual(await allowedSet('mgmt @admin-local-ro work'), ['l.Read']);
    assert.deepEqual(await allowedSet('mgmt @admin-local-rwx work'), ['l.Read', 'l.Write', 'l.Execute']);
    assert.deepEqual(await allowedSet('mgmt @admin-global-ro'), ['g.Read']);
    assert.deepEqual(await allowedSet('mgmt @admin-global-rwx'), ['g.Read', 'g.Write']);
    // The destination and source fields still apply; undeclared methods are in no class.
    assert.deepEqual(await allowedSet('mgmt @admin-local-rwx work', 'other'), []);
    assert.deepEqual(await allowedSet('other @admin-local-rwx *'), []);
    assert.deepEqual(await allowedSet('mgmt *'), names);
  });

  test('an unknown class is an error naming the line and the known ones', () => {
    assert.throws(
      () => parsePolicy('dom0 *\nmgmt @admin-local-rw work\n', 'p'),
      (e: Error) => e instanceof PolicyError && /^p:2: unknown method class "@admin-local-rw" \(known: @admin-global-ro, /.test(e.message),
    );
  });
});

describe("the daemon's method table", () => {
  let dir: string;
  let rt: Runtime;
  before(async () => {
    dir = await tempDir();
    rt = await openRuntime({ baseDir: dir, storageConf: null, nodeModules: [], sizes: { root: 1 << 20, private: 1 << 20 } });
    await rt.app.addPool('file-reflink', 'default', { dir_path: path.join(dir, 'pool'), setup_check: false });
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
  });
  after(async () => {
    await rt?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('every method declares a complete shape, about dom0 or a domain', () => {
    const problems = Object.entries(rt.methods).flatMap(([name, spec]) =>
      [...shapeProblems(spec.shape, spec.kind), ...(spec.shape?.dest === 'any' ? ['dest any'] : [])].map((p) => `${name}: ${p}`),
    );
    assert.deepEqual(problems, []);
    assert.ok(Object.keys(rt.methods).length >= 75, 'the whole table');
  });

  test('the method list of src/admin/README.md is the table’s (npm run methods-doc writes it)', async () => {
    const readme = await fs.readFile(ADMIN_README, 'utf8');
    const begin = readme.indexOf(METHOD_LIST_BEGIN);
    const end = readme.indexOf(METHOD_LIST_END);
    assert.ok(begin >= 0 && end > begin, 'the README has the markers');
    const inReadme = readme.slice(begin + METHOD_LIST_BEGIN.length, end).trim();
    assert.equal(inReadme, await daemonMethodList(), 'src/admin/README.md is out of date: run npm run methods-doc');
  });

  test('the internal socket’s methods: declared, and listed apart in src/admin/README.md', async () => {
    const internal = internalMethods(rt, { adminPolicy: () => undefined, adminMethods: rt.methods }).methods;
    assert.deepEqual(Object.keys(internal).sort(), [
      'internal.vm.volume.ImportBegin',
      'internal.vm.volume.ImportData',
      'internal.vm.volume.ImportDataWithSize',
      'internal.vm.volume.ImportEnd',
      'internal.vm.volume.ImportMode',
    ]);
    const problems = Object.entries(internal).flatMap(([name, spec]) => shapeProblems(spec.shape, spec.kind).map((p) => `${name}: ${p}`));
    assert.deepEqual(problems, []);
    assert.ok(!Object.keys(rt.methods).some((m) => m.startsWith('internal.')), 'not in the admin table');
    const readme = await fs.readFile(ADMIN_README, 'utf8');
    const begin = readme.indexOf(INTERNAL_METHOD_LIST_BEGIN);
    const end = readme.indexOf(INTERNAL_METHOD_LIST_END);
    assert.ok(begin >= 0 && end > begin, 'the README has the markers');
    const inReadme = readme.slice(begin + INTERNAL_METHOD_LIST_BEGIN.length, end).trim();
    assert.equal(inReadme, await daemonInternalMethodList(), 'src/admin/README.md is out of date: run npm run methods-doc');
  });

  test('a class rule over the real table: a read-only manager of work reads its volumes, changes nothing', async () => {
    const policy = parsePolicy('dom0 *\nmgmt @admin-local-ro work\nmgmt @admin-global-ro dom0\n');
    const ctx = createDispatchContext({ methods: rt.methods, log: silentLog, policy });
    const as = (method: string, dest: string, arg = '', payload = '') => runCall(ctx, { method, dest, arg, source: 'mgmt' }, payload);
    assert.match((await as('admin.vm.volume.Info', 'work', 'private')).toString('latin1'), /^0\0pool=default\n/);
    assert.equal((await as('admin.pool.List', 'dom0')).toString('latin1'), '0\0default\n');
    const denied = (m: string) => refused('PermissionDenied', `${m} is not allowed for mgmt by policy`);
    assert.deepEqual(await as('admin.vm.volume.Resize', 'work', 'private', String(2 << 20)), denied('admin.vm.volume.Resize'));
    assert.deepEqual(await as('admin.vm.Start', 'work'), denied('admin.vm.Start'));
    assert.deepEqual(await as('admin.vm.volume.Export', 'work', 'private'), denied('admin.vm.volume.Export'));
    assert.deepEqual(await as('admin.vm.volume.Info', 'tpl', 'root'), denied('admin.vm.volume.Info'));
    assert.deepEqual(await as('admin.pool.Remove', 'dom0', 'default'), denied('admin.pool.Remove'));
  });

  /** An argument the method accepts, by what it names. */
  const goodArg = (m: string, argNames: string): string =>
    argNames === 'property' && m.startsWith('admin.property.')
      ? 'default_pool'
      : (({ volume: 'private', pool: 'default', property: 'label', tag: 't', feature: 'f', driver: 'file-reflink', 'label (name or index)': 'red' } as Record<string, string>)[argNames] ?? '');

  test('every method refuses, per its declaration, before it runs: the replies the methods gave themselves', async (t) => {
    const ctx = createDispatchContext({ methods: rt.methods, log: silentLog });
    const state = await fs.readFile(path.join(dir, 'qubes.xml'));
    let checked = 0;
    for (const [m, spec] of Object.entries(rt.methods)) {
      const s = spec.shape!;
      // These need a connection: test/admin/events.test.ts refuses admin.Events' unknown destination, and
      // error-classes.test.ts ExportStream's unknown volume, over the socket (the same checkShape runs first).
      if (spec.kind === 'events' || spec.kind === 'reply-stream') continue;
      const dest = s.dest === 'dom0' ? 'dom0' : 'work';
      const arg = s.arg === 'none' ? '' : goodArg(m, s.argNames);
      const call = (over: { dest?: string; arg?: string; payload?: string }) =>
        runCall(ctx, { method: m, dest: over.dest ?? dest, arg: over.arg ?? arg }, over.payload ?? '');
      if (s.arg === 'none') {
        assert.deepEqual(await call({ arg: 'x' }), refused('ProtocolError', `${m} takes no argument`), m);
        checked++;
      }
      if (s.arg === 'required') {
        assert.deepEqual(await call({ arg: '' }), refused('ProtocolError', `${m} needs an argument`), m);
        checked++;
      }
      if (s.payload === 'none') {
        assert.deepEqual(await call({ payload: 'x' }), refused('ProtocolError', `${m} takes no payload`), m);
        checked++;
      }
      if (s.dest === 'dom0') {
        assert.deepEqual(await call({ dest: 'work' }), refused('ProtocolError', `${m} is a global call: its destination must be dom0`), m);
        checked++;
      }
      if (s.lookupDest) {
        assert.deepEqual(await call({ dest: 'ghost' }), refused('QubesVMNotFoundError', "no such domain: 'ghost'"), m);
        checked++;
      } else if (s.dest === 'dom0') {
        // The pool calls check the name only.
        assert.deepEqual(await call({ dest: 'ghost' }), refused('ProtocolError', `${m} is a global call: its destination must be dom0`), m);
        checked++;
      }
    }
    t.diagnostic(`${checked} refusals checked`);
    assert.ok(checked > 150, `${checked} refusals`);
    assert.deepEqual(await fs.readFile(path.join(dir, 'qubes.xml')), state, 'no refused call changed the state');
  });
});
