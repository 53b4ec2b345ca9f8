// Who may call the real qubesd over its real socket: deny by default (only
// dom0 without a policy), callers known by their kernel credentials
// (SO_PEERCRED), clients run as root and as `nobody` (uid 65534), the
// socket's group, and who may claim a source other than dom0.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { childOutput } from '../helpers/process.js';
import { ensureDead, spawnQubesd, startQubesd, type DaemonProc } from '../daemon/helpers.js';

const NOBODY = 65534;

/** Connects, sends one request (given in hex), half-closes, prints the reply or the connect error as JSON. */
const CLIENT = `
const net = require('node:net');
const [sockPath, request] = process.argv.slice(1);
const s = net.connect(sockPath);
const chunks = [];
let error;
s.on('connect', () => s.end(Buffer.from(request, 'hex')));
s.on('data', (c) => chunks.push(c));
s.on('error', (e) => (error = e.code));
s.on('close', () => process.stdout.write(JSON.stringify({ error, reply: Buffer.concat(chunks).toString('latin1') })));
`;

interface ClientResult {
  /** errno code of a failed connect, e.g. EACCES. */
  readonly error?: string;
  readonly reply: string;
  /** The client's pid: the one the daemon must log. */
  readonly pid: number;
}

type As = { uid: number; gid: number } | { setpriv: string[] } | 'root';

/** Runs the client as another user (spawn's uid/gid, or setpriv for supplementary groups). */
function callAs(as: As, socketPath: string, header: string, payload = ''): Promise<ClientResult> {
  const args = ['-e', CLIENT, socketPath, Buffer.from(`${header}\0${payload}`, 'latin1').toString('hex')];
  const child =
    typeof as === 'object' && 'setpriv' in as
      ? spawn('setpriv', [...as.setpriv, '--', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(as === 'root' ? {} : as) });
  return childOutput(child).then(({ stdout, stderr, code }) => {
    if (code !== 0) throw new Error(`client exited ${code}: ${stderr}`);
    return { ...(JSON.parse(stdout) as { error?: string; reply: string }), pid: child.pid! };
  });
}

function errorName(r: ClientResult): string {
  assert.equal(r.error, undefined, `connect failed: ${r.error}`);
  assert.ok(r.reply.startsWith('2\0'), `not an error reply: ${JSON.stringify(r.reply)}`);
  return r.reply.split('\0')[1]!;
}

function assertOk(r: ClientResult): string {
  assert.equal(r.error, undefined, `connect failed: ${r.error}`);
  assert.ok(r.reply.startsWith('0\0'), `not a success reply: ${JSON.stringify(r.reply)}`);
  return r.reply.slice(2);
}

/** The daemon's log line of the call made by client pid `pid`. */
function callLine(d: DaemonProc, pid: number): string {
  const line = d
    .stderr()
    .split('\n')
    .find((l) => / call method=/.test(l) && l.endsWith(` pid=${pid}`));
  assert.ok(line, `no call line with pid=${pid} in:\n${d.stderr()}`);
  return line;
}

/** A directory anyone may traverse (the socket's mode then decides who connects). */
async function openDir(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-sec-'));
  await fs.chmod(dir, 0o755);
  return dir;
}

describe('callers of qubesd, as root and as nobody', () => {
  let dir: string;
  let sock: string;
  let d: DaemonProc | undefined;
  const others: DaemonProc[] = [];

  before(async () => {
    dir = await openDir();
    sock = path.join(dir, 'qubesd.sock');
    // No --policy, no --socket-group: the defaults (root: `qubes`, here absent, so group 0).
    d = await startQubesd(path.join(dir, 'base'), sock);
  });
  after(async () => {
    await ensureDead(d);
    for (const o of others) await ensureDead(o);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('no policy: dom0 may call; evilvm, sys-net and a relayed mgmt get PermissionDenied, logged with uid and pid', async () => {
    const st = await fs.lstat(sock);
    assert.equal(st.mode & 0o777, 0o660);
    assert.equal(st.gid, 0, 'no `qubes` group here: the socket is in root group 0');

    const list = await callAs('root', sock, 'admin.pool.List dom0 name dom0');
    assert.equal(assertOk(list), 'default\nlinux-kernel\n');
    assert.match(callLine(d!, list.pid), /call method=admin\.pool\.List arg=- source=dom0 dest=dom0 result=ok duration_ms=\d+ uid=0 pid=\d+$/);
    assert.equal(assertOk(await callAs('root', sock, 'admin.vm.Create.TemplateVM dom0 name dom0', 'name=tpl label=black')), '');

    for (const [header, payload] of [
      ['admin.vm.Create.TemplateVM evilvm name dom0', 'name=evil label=red'],
      ['admin.vm.Create.AppVM+tpl sys-net name dom0', 'name=net2 label=red'],
      ['admin.pool.List evilvm name dom0', ''],
      // Root may relay, but the default policy allows no source but dom0.
      ['admin.vm.Create.AppVM+tpl mgmt name dom0', 'name=m label=red'],
    ] as const) {
      const r = await callAs('root', sock, header, payload);
      assert.equal(errorName(r), 'PermissionDenied', header);
      const line = callLine(d!, r.pid);
      assert.match(line, /result=PermissionDenied reason=".* is not allowed for (evilvm|sys-net|mgmt) by the default policy/);
      assert.match(line, / uid=0 pid=\d+$/);
    }
    // Nothing was made by the refused calls.
    assert.equal(assertOk(await callAs('root', sock, 'admin.vm.List dom0 name dom0')).split('\n').filter(Boolean).map((l) => l.split(' ')[0]).sort().join(','), 'dom0,tpl');
  });

  it('nobody: the socket mode (0660 root:root) refuses the connect itself', async () => {
    const r = await callAs({ uid: NOBODY, gid: NOBODY }, sock, 'admin.pool.List dom0 name dom0');
    assert.equal(r.error, 'EACCES');
  });

  it('nobody: with the socket opened to all (0666), the daemon refuses by credentials and logs the uid', async () => {
    await fs.chmod(sock, 0o666);
    try {
      for (const header of ['admin.pool.List dom0 name dom0', 'admin.vm.Create.AppVM+tpl evilvm name dom0']) {
        const r = await callAs({ uid: NOBODY, gid: NOBODY }, sock, header, 'name=x label=red');
        assert.equal(errorName(r), 'PermissionDenied', header);
        assert.match(r.reply, /uid 65534 is neither root nor in the group of the socket \(gid 0\)/);
        const line = callLine(d!, r.pid);
        assert.match(line, /result=PermissionDenied reason="uid 65534 is neither root nor in the group of the socket/);
        assert.match(line, new RegExp(` uid=65534 pid=${r.pid}$`));
      }
    } finally {
      await fs.chmod(sock, 0o660);
    }
  });

  it('a member of the socket group (primary or supplementary) may call as dom0, not as another source', async () => {
    const primary = await callAs({ uid: NOBODY, gid: 0 }, sock, 'admin.pool.List dom0 name dom0');
    assert.equal(assertOk(primary), 'default\nlinux-kernel\n');
    assert.match(callLine(d!, primary.pid), new RegExp(`result=ok duration_ms=\\d+ uid=65534 pid=${primary.pid}$`));
    // Supplementary group only (SO_PEERGROUPS): primary group nogroup, also in group 0.
    const supplementary = await callAs({ setpriv: ['--reuid=65534', '--regid=65534', '--groups=0'] }, sock, 'admin.pool.List dom0 name dom0');
    assert.equal(assertOk(supplementary), 'default\nlinux-kernel\n');
    const claim = await callAs({ uid: NOBODY, gid: 0 }, sock, 'admin.pool.List mgmt name dom0');
    assert.equal(errorName(claim), 'PermissionDenied');
    assert.match(claim.reply, /uid 65534 may not call as mgmt/);
    assert.match(callLine(d!, claim.pid), /source=mgmt dest=dom0 result=PermissionDenied reason="uid 65534 may not call as mgmt/);
  });

  it('with a policy: root relays for mgmt as it allows; another user only with an @relay line', async () => {
    const policy = path.join(dir, 'qubesd.policy');
    await fs.writeFile(policy, 'dom0 *\nmgmt admin.pool.List dom0\n');
    const psock = path.join(dir, 'p.sock');
    const p = await startQubesd(path.join(dir, 'base-p'), psock, ['--policy', policy]);
    others.push(p);
    assert.equal(assertOk(await callAs('root', psock, 'admin.pool.List mgmt name dom0')), 'default\nlinux-kernel\n');
    assert.equal(errorName(await callAs('root', psock, 'admin.pool.Info+default mgmt name dom0')), 'PermissionDenied');
    assert.equal(errorName(await callAs('root', psock, 'admin.pool.List evilvm name dom0')), 'PermissionDenied');
    const member = { uid: NOBODY, gid: 0 };
    const denied = await callAs(member, psock, 'admin.pool.List mgmt name dom0');
    assert.equal(errorName(denied), 'PermissionDenied');
    assert.match(denied.reply, /uid 65534 may not call as mgmt/);

    await fs.writeFile(policy, 'dom0 *\nmgmt admin.pool.List dom0\n@relay uid:65534 mgmt\n');
    p.child.kill('SIGHUP');
    await p.waitFor(`policy reloaded from ${policy}`);
    assert.equal(assertOk(await callAs(member, psock, 'admin.pool.List mgmt name dom0')), 'default\nlinux-kernel\n');
    // The relay right is for the sources named, and the policy still decides the calls.
    assert.match((await callAs(member, psock, 'admin.pool.List other name dom0')).reply, /uid 65534 may not call as other/);
    assert.match((await callAs(member, psock, 'admin.pool.Info+default mgmt name dom0')).reply, /not allowed for mgmt by/);
    // Outside the socket group, a relay line does not let a user in.
    await fs.chmod(psock, 0o666);
    assert.match((await callAs({ uid: NOBODY, gid: NOBODY }, psock, 'admin.pool.List mgmt name dom0')).reply, /neither root nor in the group/);
    p.child.kill('SIGTERM');
    assert.equal((await p.exited).code, 0);
  });

  it('--socket-group: the socket gets that group and its members may call; an unknown group refuses the start', async () => {
    const gsock = path.join(dir, 'g.sock');
    const g = await startQubesd(path.join(dir, 'base-g'), gsock, ['--socket-group', 'nogroup']);
    others.push(g);
    const st = await fs.lstat(gsock);
    assert.equal(st.gid, NOBODY);
    assert.equal(st.mode & 0o777, 0o660);
    assert.equal(assertOk(await callAs({ uid: NOBODY, gid: NOBODY }, gsock, 'admin.pool.List dom0 name dom0')), 'default\nlinux-kernel\n');
    g.child.kill('SIGTERM');
    assert.equal((await g.exited).code, 0);

    const bad = spawnQubesd(['--base-dir', path.join(dir, 'base-bad'), '--socket', path.join(dir, 'b.sock'), '--socket-group', 'no-such-group-x']);
    others.push(bad);
    assert.equal((await bad.exited).code, 1);
    assert.match(bad.stderr(), /cannot start: no such group: "no-such-group-x"/);
    await assert.rejects(fs.lstat(path.join(dir, 'b.sock')), { code: 'ENOENT' });
  });
});
