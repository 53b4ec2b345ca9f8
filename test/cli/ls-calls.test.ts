/**
 * qvm-ls against a real qubesd with many domains makes a constant number of
 * calls (admin.vm.ListDetails), counted by a proxy socket between the tool
 * and the daemon; its output is what the domains are (names, classes,
 * labels, templates, the pool of each private volume). Where the policy
 * does not grant that call, qvm-ls falls back to the granular calls and
 * prints the same. And a tool talking to a daemon loads the client and the
 * protocol, not the runtime (drivers, state, methods), which it does not use.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openRuntime } from '../../src/daemon/runtime.js';
import { daemonScope, startQubesd, type DaemonProc } from '../daemon/helpers.js';
import { countingProxy, DIST, run, tempBase, toolEnv } from './helpers.js';

const APPVMS = 40;
const MiB = 1024 * 1024;
const names = Array.from({ length: APPVMS }, (_, i) => `vm${String(i).padStart(3, '0')}`);

/** The table qvm-ls prints for this state, written out here (dom0, tpl, the AppVMs; every 5th AppVM's private volume in p2). */
function expectedRows(): string[][] {
  return [
    ['dom0', 'Running', 'AdminVM', 'black', '-', '-', '-'],
    ['tpl', 'Halted', 'TemplateVM', 'black', '-', '-', 'default'],
    ...names.map((n, i) => [n, 'Halted', 'AppVM', i % 2 ? 'blue' : 'red', 'tpl', '-', i % 5 === 0 ? 'p2' : 'default']),
  ];
}

function cells(stdout: string): string[][] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.trim().split(/ +/));
}

describe('qvm-ls: calls against a daemon with many domains', () => {
  const scope = daemonScope();
  let base = '';

  before(async () => {
    base = await tempBase('qs-ls-calls-');
    const rt = await openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
    try {
      await rt.app.addPool('file-reflink', 'p2', { dir_path: path.join(base, 'p2'), setup_check: false });
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      for (const [i, name] of names.entries())
        await rt.app.createDomain({ klass: 'AppVM', name, label: i % 2 ? 'blue' : 'red', template: 'tpl', ...(i % 5 === 0 ? { pools: { private: 'p2' } } : {}) });
    } finally {
      await rt.close();
    }
  });
  after(() => fs.rm(base, { recursive: true, force: true }));

  /** Runs qvm-ls through a counting proxy in front of a daemon started with `extra`; the output and the methods called. */
  async function lsThroughProxy(extra: string[], args: string[] = []): Promise<{ stdout: string; code: number | null; methods: string[] }> {
    const sock = await scope.sock();
    const daemon: DaemonProc = await startQubesd(base, sock, extra);
    scope.running.push(daemon);
    const proxy = await countingProxy(`${sock}.count`, sock);
    try {
      const r = await run('qvm-ls', args, toolEnv(base, proxy.socket));
      assert.equal(r.stderr, '');
      // The first connection is the tool's probe of the socket (no header).
      assert.equal(proxy.methods[0], '-');
      return { stdout: r.stdout, code: r.code, methods: proxy.methods.slice(1) };
    } finally {
      await proxy.close();
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
  }

  it(`lists ${APPVMS + 2} domains in one call, the table as the state is`, async () => {
    const r = await lsThroughProxy([]);
    assert.equal(r.code, 0);
    assert.deepEqual(cells(r.stdout), [['NAME', 'STATE', 'CLASS', 'LABEL', 'TEMPLATE', 'NETVM', 'POOL'], ...expectedRows()]);
    // 1 + 3N would be 127 here: the count must not grow with the domains.
    assert.deepEqual(r.methods, ['admin.vm.ListDetails']);
  });

  it('VM arguments and --format json come from the same one call', async () => {
    const r = await lsThroughProxy([], ['--format', 'json', 'vm005', 'vm010']);
    assert.equal(r.code, 0);
    assert.deepEqual(JSON.parse(r.stdout), [
      { name: 'vm005', state: 'Halted', class: 'AppVM', label: 'blue', template: 'tpl', netvm: null, pool: 'p2' },
      { name: 'vm010', state: 'Halted', class: 'AppVM', label: 'red', template: 'tpl', netvm: null, pool: 'p2' },
    ]);
    assert.deepEqual(r.methods, ['admin.vm.ListDetails']);
  });

  it('where the policy does not grant admin.vm.ListDetails: the granular calls, the same table', async () => {
    const policy = path.join(base, 'granular.policy');
    await fs.writeFile(policy, 'dom0 admin.vm.List\ndom0 admin.vm.property.GetAll\ndom0 admin.vm.volume.List\ndom0 admin.vm.volume.Info\n');
    const r = await lsThroughProxy(['--policy', policy]);
    assert.equal(r.code, 0);
    assert.deepEqual(cells(r.stdout).slice(1), expectedRows());
    const count = (m: string) => r.methods.filter((x) => x === m).length;
    const domains = APPVMS + 2;
    assert.equal(count('admin.vm.ListDetails'), 1);
    assert.equal(count('admin.vm.List'), 1);
    assert.equal(count('admin.vm.property.GetAll'), domains);
    assert.equal(count('admin.vm.volume.List'), domains);
    // dom0 has no volume to show.
    assert.equal(count('admin.vm.volume.Info'), domains - 1);
  });
});

describe('a tool talking to a daemon loads no runtime', () => {
  const scope = daemonScope();
  let base = '';
  let daemon: DaemonProc;
  let sock = '';

  before(async () => {
    base = await tempBase('qs-ls-modules-');
    const rt = await openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
    try {
      await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
      await rt.app.createDomain({ klass: 'AppVM', name: 'work', label: 'red', template: 'tpl' });
    } finally {
      await rt.close();
    }
    sock = await scope.sock();
    daemon = await startQubesd(base, sock);
    scope.running.push(daemon);
  });
  after(async () => {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    await fs.rm(base, { recursive: true, force: true });
  });

  for (const [tool, args] of [
    ['qvm-ls', []],
    ['qvm-pool', ['list']],
    ['qvm-volume', ['info', 'work:private']],
    ['qvm-prefs', ['work']],
  ] as const) {
    it(`${tool} ${args.join(' ')}`, async () => {
      // A module hook (node --import) that writes down every module the tool loads.
      const list = path.join(base, `loaded-${tool}`);
      const hooks = path.join(base, `hooks-${tool}.mjs`);
      const register = path.join(base, `register-${tool}.mjs`);
      await fs.writeFile(
        hooks,
        "import { appendFileSync } from 'node:fs';\n" +
          `export async function load(url, context, next) { appendFileSync(${JSON.stringify(list)}, url + '\\n'); return next(url, context); }\n`,
      );
      await fs.writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
      const r = await run(tool, args, toolEnv(base, sock, { NODE_OPTIONS: `--import ${register}` }));
      assert.equal(r.code, 0, r.stderr);
      const ours = (await fs.readFile(list, 'utf8'))
        .split('\n')
        .filter((u) => u.startsWith('file:') && u.includes(DIST))
        .map((u) => u.slice(u.indexOf(DIST) + DIST.length + 1));
      assert.ok(ours.includes(`src/cli/${tool}.js`), ours.join(' '));
      // The runtime: the daemon's state and methods, the domain model, drivers, registry, file primitives.
      const runtime = ours.filter((m) => /^src\/(daemon\/runtime|domain|drivers|registry|files|admin\/methods|admin\/dispatch)/.test(m));
      assert.deepEqual(runtime, []);
      assert.ok(ours.length <= 20, `${ours.length} modules: ${ours.join(' ')}`);
    });
  }
});
