#!/usr/bin/env node
/**
 * The qrexec services admin.vm.volume.Import and admin.vm.volume.ImportWithSize,
 * as Qubes' admin client runs them in dom0 for a call with a data stream
 * (`qvm-volume import`, `qvm-create --root-copy-from`, template installs):
 *
 *   env QREXEC_REMOTE_DOMAIN=dom0 QREXEC_REQUESTED_TARGET=VM  SERVICES_DIR/METHOD  VOLUME  < DATA
 *
 * stdout is read by the client as a qubesd reply (0x30 0x00 and the result,
 * or 0x32 0x00 and an exception); the exit status is not looked at.
 * Installed by qubes-storage-install-rpc as small wrappers that run this
 * program with `--service METHOD` (install-rpc.ts). What it does, as Qubes'
 * own script does:
 *
 * 1. ImportWithSize: reads the first line of stdin, the size in bytes.
 * 2. Calls internal.vm.volume.ImportBegin (SOURCE QREXEC_REMOTE_DOMAIN, DEST
 *    QREXEC_REQUESTED_TARGET, ARG VOLUME, payload the size or empty) on the
 *    daemon's internal socket. An error reply is copied to stdout: exit 1.
 * 3. Writes exactly SIZE bytes of stdin into the path of the reply with the
 *    project's sparse writer (all-zero 4 KiB blocks stay holes), then
 *    fdatasync. Fewer bytes: `not enough data (copied N bytes, expected SIZE
 *    bytes)`; more: `too much data (expected SIZE bytes)` (Qubes' messages).
 * 4. Calls internal.vm.volume.ImportEnd with `ok`, or `fail` NEWLINE the
 *    message (also when interrupted by SIGINT, SIGTERM or SIGHUP), and copies
 *    its reply to stdout: exit 0 (also for an error reply, as Qubes' script).
 *
 * The internal socket: QUBESD_INTERNAL_SOCKET (the wrappers set it to the
 * socket the installer was given, unless it is already set), else beside the
 * admin socket of QUBESD_SOCKET / QUBES_BASE_DIR, as the daemon names it
 * (src/daemon/runtime.ts defaultInternalSocketPath). When it cannot be
 * reached, stdout gets a QubesDaemonCommunicationError reply: exit 1.
 */
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import { encodeError, encodeRequest } from '../admin/protocol/index.js';
import { createSparseWriter } from '../files/sparse-writer.js';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { defaultInternalSocketPath } from '../daemon/runtime.js';

export const IMPORT_SERVICES = ['admin.vm.volume.Import', 'admin.vm.volume.ImportWithSize'] as const;
export type ImportService = (typeof IMPORT_SERVICES)[number];

/** After ImportBegin answered, before any data is read (tests: a service that dies there). */
export const FP_AFTER_BEGIN = declareFailpoint('import-service.after-begin');

/** The size line of ImportWithSize: at most 19 digits and the newline. */
const MAX_SIZE_LINE = 20;
/** A qubesd reply is small; more than this is not one. */
const MAX_REPLY = 64 * 1024;

class ServiceError extends Error {
  constructor(
    message: string,
    readonly reply: Buffer,
  ) {
    super(message);
  }
}

/** stdin as a pull source: the next chunk, or null at its end. */
function reader(stream: NodeJS.ReadableStream): { next(): Promise<Buffer | null> } {
  const it = (stream as AsyncIterable<Buffer | string>)[Symbol.asyncIterator]();
  return {
    async next() {
      const r = await it.next();
      if (r.done) return null;
      return typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    },
  };
}

/** One call on the internal socket: the reply's bytes, exactly as qubesd sent them. */
function callInternal(socketPath: string, method: string, source: string, dest: string, arg: string, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const sock = net.connect(socketPath);
    sock.on('connect', () => sock.end(encodeRequest({ method, arg, source, dest }, payload)));
    sock.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_REPLY) sock.destroy(new Error(`reply of ${method} larger than ${MAX_REPLY} bytes`));
      else chunks.push(d);
    });
    sock.on('error', (e) =>
      reject(new ServiceError(e.message, encodeError('QubesDaemonCommunicationError', `cannot call qubesd at ${socketPath}: ${e.message}`))),
    );
    sock.on('close', (hadError) => {
      if (!hadError) resolve(Buffer.concat(chunks));
    });
  });
}

/** Reads `SIZE\n` from the start of stdin; returns the size text and the bytes after the newline. */
async function readSizeLine(input: { next(): Promise<Buffer | null> }): Promise<{ text: string; rest: Buffer }> {
  let head: Buffer = Buffer.alloc(0);
  for (;;) {
    const nl = head.indexOf(0x0a);
    if (nl >= 0 && nl <= MAX_SIZE_LINE) return { text: head.subarray(0, nl).toString('latin1'), rest: head.subarray(nl + 1) };
    if (nl > MAX_SIZE_LINE || head.length > MAX_SIZE_LINE) break;
    const c = await input.next();
    if (c === null) break;
    head = Buffer.concat([head, c]);
  }
  throw new ServiceError('no size line', encodeError('ProtocolError', 'ImportWithSize: the data must start with the size and a newline'));
}

/**
 * Copies exactly `size` bytes of the input (after `first`) into `path`,
 * which reads as zeros; returns the failure message, or null when all went in.
 */
async function copyData(path: string, size: number, first: Buffer, input: { next(): Promise<Buffer | null> }): Promise<string | null> {
  let fh;
  try {
    // No O_CREAT, no O_TRUNC: the daemon made the file, of `size` bytes.
    fh = await fs.open(path, 'r+');
  } catch (e) {
    return `cannot open ${path}: ${(e as Error).message}`;
  }
  const writer = createSparseWriter(fh, { maxPendingBytes: 16 << 20, syncEveryBytes: 64 << 20 });
  try {
    let chunk: Buffer | null = first;
    while (chunk !== null) {
      if (writer.position + chunk.length > size) {
        const fits = size - writer.position;
        if (fits > 0) writer.push(chunk.subarray(0, fits));
        await writer.settle();
        return `too much data (expected ${size} bytes)`;
      }
      if (chunk.length && !writer.push(chunk)) await writer.drained();
      // The sparse writer keeps the chunk by reference until written: stdin gives a new buffer each time.
      chunk = await input.next();
    }
    await writer.finish();
    if (writer.position < size) return `not enough data (copied ${writer.position} bytes, expected ${size} bytes)`;
    await fh.datasync();
    return null;
  } catch (e) {
    await writer.settle();
    return `writing ${path} failed: ${(e as Error).message}`;
  } finally {
    await fh.close();
  }
}

export interface ServiceRun {
  readonly service: ImportService;
  readonly volume: string;
  readonly env: NodeJS.ProcessEnv;
  readonly stdin: NodeJS.ReadableStream;
  /** Called with the reply bytes for the client (once). */
  readonly out: (reply: Buffer) => void;
  /** Aborted on SIGINT/SIGTERM/SIGHUP: the import ends as failed. */
  readonly signal: AbortSignal;
}

/** Runs the service; returns its exit status. */
export async function runImportService(r: ServiceRun): Promise<number> {
  const source = r.env['QREXEC_REMOTE_DOMAIN'] ?? '';
  const dest = r.env['QREXEC_REQUESTED_TARGET'] ?? '';
  if (!source || !dest) {
    r.out(encodeError('QubesException', `${r.service}: QREXEC_REMOTE_DOMAIN and QREXEC_REQUESTED_TARGET must be set`));
    return 1;
  }
  const socketPath = defaultInternalSocketPath(r.env);
  const input = reader(r.stdin);
  try {
    let sizeText = '';
    let first: Buffer = Buffer.alloc(0);
    if (r.service === 'admin.vm.volume.ImportWithSize') ({ text: sizeText, rest: first } = await readSizeLine(input));
    const begin = await callInternal(socketPath, 'internal.vm.volume.ImportBegin', source, dest, r.volume, Buffer.from(sizeText, 'latin1'));
    if (begin[0] !== 0x30 || begin[1] !== 0) {
      r.out(begin);
      return 1;
    }
    const answer = begin.subarray(2).toString('utf8');
    const space = answer.indexOf(' ');
    const size = Number(answer.slice(0, space));
    const path = answer.slice(space + 1);
    failpoint(FP_AFTER_BEGIN);
    let failure: string | null;
    if (space <= 0 || !Number.isSafeInteger(size) || !path.startsWith('/')) failure = `unexpected reply of ImportBegin: ${JSON.stringify(answer.slice(0, 200))}`;
    else {
      const interrupted = new Promise<string>((resolve) => {
        if (r.signal.aborted) resolve('interrupted');
        r.signal.addEventListener('abort', () => resolve(`interrupted (${String(r.signal.reason)})`), { once: true });
      });
      failure = await Promise.race([copyData(path, size, first, input), interrupted]);
    }
    const status = failure === null ? Buffer.from('ok') : Buffer.from(`fail\n${failure}`, 'utf8');
    r.out(await callInternal(socketPath, 'internal.vm.volume.ImportEnd', source, dest, r.volume, status));
    return 0;
  } catch (e) {
    r.out(e instanceof ServiceError ? e.reply : encodeError('QubesException', `${r.service}: ${(e as Error).message}`));
    return 1;
  }
}

/** `--service NAME [--] VOLUME`: the wrappers' command line. */
function parseCommandLine(argv: readonly string[]): { service: ImportService; volume: string } {
  const args = [...argv];
  let service: string | undefined;
  const rest: string[] = [];
  while (args.length) {
    const a = args.shift()!;
    if (a === '--service') service = args.shift();
    else if (a === '--') rest.push(...args.splice(0));
    else rest.push(a);
  }
  if (!IMPORT_SERVICES.includes(service as ImportService) || rest.length !== 1)
    throw new Error(`usage: import-service --service ${IMPORT_SERVICES.join('|')} [--] VOLUME`);
  return { service: service as ImportService, volume: rest[0]! };
}

async function main(): Promise<number> {
  let cmd;
  try {
    cmd = parseCommandLine(process.argv.slice(2));
  } catch (e) {
    process.stdout.write(encodeError('QubesException', (e as Error).message));
    return 2;
  }
  const abort = new AbortController();
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => abort.abort(s));
  let written = false;
  const status = await runImportService({
    ...cmd,
    env: process.env,
    stdin: process.stdin,
    signal: abort.signal,
    out: (reply) => {
      if (written) return;
      written = true;
      process.stdout.write(reply);
    },
  });
  // stdin may still be open (an error before the data, or an interruption): do not wait for it.
  process.stdin.destroy();
  return status;
}

if (process.argv[1] !== undefined && (await fs.realpath(process.argv[1]).catch(() => '')) === (await fs.realpath(fileURLToPath(import.meta.url)))) {
  process.exitCode = await main();
}
