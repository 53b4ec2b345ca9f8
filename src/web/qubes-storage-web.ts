#!/usr/bin/env node
/**
 * qubes-storage-web: a read-only web page of the pools, their volumes and
 * the domains, live, served on loopback with an access token. It is a
 * client of qubesd like the tools (src/client over the daemon's socket), so
 * every read goes through the admin methods and the policy (README.md here
 * says why it is a separate program).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { defaultBaseDir, defaultSocketPath } from '../admin/paths.js';
import { QubesClient, checkThreshold, DEFAULT_USAGE_THRESHOLD } from '../client/index.js';
import { parseArgs, helpText, UsageError, type CommandSpec } from '../cli/common/args.js';
import { writeFileAtomic } from '../files/files.js';
import { UsageHistory } from './history.js';
import { WebModel } from './model.js';
import { WebServer, type Asset } from './server.js';

const PROG = 'qubes-storage-web';
/** The sampling interval may not go below this (seconds): each sample is a few calls per pool and one file write. */
export const MIN_SAMPLE_SECONDS = 0.2;

const SPEC: CommandSpec = {
  prog: PROG,
  summary: 'Serve a read-only web page of the pools, volumes and domains of a running qubesd.',
  options: [
    { names: ['--listen'], kind: 'value', metavar: 'HOST:PORT', help: 'where to listen (default 127.0.0.1:8340; port 0: any free port)' },
    { names: ['--allow-remote'], kind: 'flag', dest: 'allow_remote', help: 'allow a HOST that is not a loopback address' },
    { names: ['--socket'], kind: 'value', metavar: 'PATH', help: "qubesd's socket (default QUBESD_SOCKET, else the daemon's default)" },
    { names: ['--state-dir'], kind: 'value', dest: 'state_dir', metavar: 'DIR', help: 'token and usage history (default /var/lib/qubes-storage-web for root, else ~/.local/state/qubes-storage-web)' },
    { names: ['--threshold'], kind: 'value', metavar: 'PERCENT', help: `usage above this is flagged, as qvm-pool usage --threshold (default ${DEFAULT_USAGE_THRESHOLD})` },
    { names: ['--sample-interval'], kind: 'value', dest: 'sample_interval', metavar: 'SECONDS', help: `how often usage is recorded (default 60, at least ${MIN_SAMPLE_SECONDS})` },
    { names: ['--history-points'], kind: 'value', dest: 'history_points', metavar: 'N', help: 'points kept per pool (default 1440: a day at one a minute; 2 to 100000)' },
  ],
  positionals: [],
  epilog: 'It prints the address to open, with the access token; the token is also in STATE-DIR/token (mode 0600), new at each start.',
};

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  return host === '::1';
}

function parseListen(text: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--listen expects HOST:PORT, got '${text}'`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function numberArg(text: string | undefined, name: string, dflt: number, min: number, max: number, integer = false): number {
  if (text === undefined) return dflt;
  const n = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || n < min || n > max || (integer && !Number.isInteger(n)))
    throw new UsageError(`${name} expects ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}, got '${text}'`);
  return n;
}

function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/qubes-storage-web';
  const xdg = process.env['XDG_STATE_HOME'];
  return path.join(xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.local', 'state'), 'qubes-storage-web');
}

/** The page's files and uPlot's, from this package, read once. */
async function loadAssets(): Promise<Map<string, Asset>> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/src/web -> the package's src/web/assets (shipped with the package: package.json "files").
  const own = path.resolve(here, '..', '..', '..', 'src', 'web', 'assets');
  const uplotDir = path.dirname(createRequire(import.meta.url).resolve('uplot'));
  const table: [string, string, string][] = [
    ['/', path.join(own, 'index.html'), 'text/html; charset=utf-8'],
    ['/app.js', path.join(own, 'app.js'), 'text/javascript; charset=utf-8'],
    ['/app.css', path.join(own, 'app.css'), 'text/css; charset=utf-8'],
    ['/uPlot.iife.min.js', path.join(uplotDir, 'uPlot.iife.min.js'), 'text/javascript; charset=utf-8'],
    ['/uPlot.min.css', path.join(uplotDir, 'uPlot.min.css'), 'text/css; charset=utf-8'],
  ];
  return new Map(await Promise.all(table.map(async ([url, file, type]) => [url, { type, body: await fs.readFile(file) }] as [string, Asset])));
}

async function main(): Promise<number> {
  const p = parseArgs(SPEC, process.argv.slice(2));
  if (p.help) {
    process.stdout.write(helpText(SPEC));
    return 0;
  }
  const { host, port } = parseListen(p.values.get('listen') ?? '127.0.0.1:8340');
  const remote = p.flags.has('allow_remote');
  if (!isLoopback(host) && !remote) throw new UsageError(`${host} is not a loopback address: the page would be reachable from other hosts; add --allow-remote if that is meant`);
  const thresholdText = p.values.get('threshold');
  const threshold = checkThreshold(numberArg(thresholdText, '--threshold', DEFAULT_USAGE_THRESHOLD, 0, 100));
  const sampleMs = Math.round(numberArg(p.values.get('sample_interval'), '--sample-interval', 60, MIN_SAMPLE_SECONDS, 86_400) * 1000);
  const maxPoints = numberArg(p.values.get('history_points'), '--history-points', 1440, 2, 100_000, true);
  const socket = p.values.get('socket') ?? process.env['QUBESD_SOCKET'] ?? defaultSocketPath(defaultBaseDir());
  const stateDir = path.resolve(p.values.get('state_dir') ?? defaultStateDir());
  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });

  const assets = await loadAssets();
  const client = QubesClient.overSocket(socket);
  const history = new UsageHistory(path.join(stateDir, 'usage-history.json'), maxPoints);
  const log = (line: string) => void process.stderr.write(`${PROG}: ${line}\n`);
  const problem = await history.load();
  if (problem) log(problem);
  const model = new WebModel(client, threshold, history, sampleMs, log);
  await model.start();

  const token = crypto.randomBytes(32).toString('base64url');
  const tokenFile = path.join(stateDir, 'token');
  await writeFileAtomic(tokenFile, `${token}\n`, 0o600);
  const server = new WebServer({ model, token, assets, loopbackHostOnly: !remote });
  const addr = await server.listen(host, port);
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stdout.write(`${PROG}: open http://${shown}:${addr.port}/?token=${token}\n${PROG}: token in ${tokenFile}\n`);

  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  model.close();
  await server.close();
  await client.close();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) {
      process.stderr.write(`${PROG}: error: ${e.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`${PROG}: error: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
