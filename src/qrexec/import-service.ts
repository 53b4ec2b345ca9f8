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
 * program with `--service METHOD` (install-rpc.ts); qvm-volume runs it too,
 * with `--size SIZE` and its data file as stdin, for a local import
 * (src/client/local-import.ts). What it does, as Qubes' own script does:
 *
 * 1. ImportWithSize: reads the first line of stdin, the size in bytes.
 * 2. Calls internal.vm.volume.ImportBegin (SOURCE QREXEC_REMOTE_DOMAIN, DEST
 *    QREXEC_REQUESTED_TARGET, ARG VOLUME, payload the size or empty) on the
 *    daemon's internal socket. An error reply is copied to stdout: exit 1.
 * 3. Writes exactly SIZE bytes of stdin into the path of the reply with
 *    copyToSparse (src/files/sparse-writer.ts: 4 MiB reads, all-zero 4 KiB
 *    blocks stay holes, only data written), then one fdatasync. A regular
 *    file as stdin is read from its descriptor, only its data regions
 *    (SEEK_DATA/SEEK_HOLE: its holes are not read at all); a pipe through
 *    Node's stream. Fewer bytes: `not enough data (copied N bytes, expected SIZE
 *    bytes)`; more: `too much data (expected SIZE bytes)` (Qubes' messages).
 * 4. Calls internal.vm.volume.ImportEnd with `ok`, or `fail` NEWLINE the
 *    message (also when interrupted by SIGINT, SIGTERM or SIGHUP), and copies
 *    its reply to stdout: exit 0 (also for an error reply, as Qubes' script).
 *
 * Before 2, it asks internal.vm.volume.ImportMode. A volume whose driver
 * writes imports into its storage itself (rbd: a Ceph image) answers
 * `stream SIZE`: a file in the pool's tmp_dir would be one more full copy
 * (written, then read back into the image), so the data is streamed
 * instead, as the payload of internal.vm.volume.ImportData[WithSize] (the
 * admin import's method: the volume's import writer writes it as it
 * arrives), exactly SIZE bytes; the messages of a short or long input are
 * the same as above, as `Data import failed: ...` (the import rolled back
 * first). File drivers answer `file`: 2-4 as above (the service writes the
 * file itself, the data crosses no socket). A daemon without ImportMode
 * (an error reply): 2-4.
 *
 * The internal socket: QUBESD_INTERNAL_SOCKET (the wrappers set it to the
 * socket the installer was given, unless it is already set), else beside the
 * admin socket of QUBESD_SOCKET / QUBES_BASE_DIR, as the daemon names it
 * (src/admin/paths.ts defaultInternalSocketPath). When it cannot be
 * reached, stdout gets a QubesDaemonCommunicationError reply: exit 3 when
 * that was ImportBegin (no data read yet: qvm-volume then streams instead),
 * else exit 1.
 */
import { fstatSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import { encodeError, encodeRequest } from '../admin/protocol/index.js';
import type { FileHandle } from 'node:fs/promises';
import { fileExtents, type FileExtents } from '../files/extents.js';
import { copyToSparse, fdSource, type ByteSource } from '../files/sparse-writer.js';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { storageErrnoError } from '../storage/errors.js';
import { defaultInternalSocketPath } from '../admin/paths.js';

export const IMPORT_SERVICES = ['admin.vm.volume.Import', 'admin.vm.volume.ImportWithSize'] as const;
export type ImportService = (typeof IMPORT_SERVICES)[number];

/** After ImportBegin answered, before any data is read (tests: a service that dies there). */
export const FP_AFTER_BEGIN = declareFailpoint('import-service.after-begin');

/** The size line of ImportWithSize: at most 19 digits and the newline. */
const MAX_SIZE_LINE = 20;
/** A qubesd reply is small; more than this is not one. */
const MAX_REPLY = 64 * 1024;

/** The exit status when the internal socket could not be reached for ImportBegin (no data read). */
export const EXIT_INTERNAL_UNREACHABLE = 3;

class ServiceError extends Error {
  status = 1;
  constructor(
    message: string,
    readonly reply: Buffer,
  ) {
    super(message);
  }
}

/**
 * stdin as a pull source. A regular file (the data handed over as stdin, as
 * Qubes' client and our qvm-volume do) is read straight from its descriptor
 * in large reads; anything else (a pipe) through the stream Node reads it
 * with, its chunks copied into the reader's buffer.
 */
export function stdinSource(stdin: NodeJS.ReadableStream | number): ByteSource {
  if (typeof stdin === 'number') return fdSource(stdin);
  const it = (stdin as AsyncIterable<Buffer | string>)[Symbol.asyncIterator]();
  let cur: Buffer = Buffer.alloc(0);
  let ended = false;
  return {
    async read(buf, offset, length) {
      while (cur.length === 0) {
        if (ended) return 0;
        const r = await it.next();
        if (r.done) {
          ended = true;
          return 0;
        }
        cur = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
      }
      const n = cur.copy(buf, offset, 0, Math.min(length, cur.length));
      cur = cur.subarray(n);
      return n;
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

/** Reads `SIZE\n` from the start of stdin; returns the size text and the bytes read after the newline. */
async function readSizeLine(input: ByteSource): Promise<{ text: string; rest: Buffer }> {
  const head = Buffer.alloc(MAX_SIZE_LINE + 1);
  let n = 0;
  for (;;) {
    const nl = head.subarray(0, n).indexOf(0x0a);
    if (nl >= 0) return { text: head.subarray(0, nl).toString('latin1'), rest: Buffer.from(head.subarray(nl + 1, n)) };
    if (n === head.length) break;
    const got = await input.read(head, n, head.length - n);
    if (got <= 0) break;
    n += got;
  }
  throw new ServiceError('no size line', encodeError('ProtocolError', 'ImportWithSize: the data must start with the size and a newline'));
}

/**
 * Copies exactly `size` bytes of the input (after `first`) into `path`,
 * which reads as zeros, all-zero 4 KiB blocks left as holes, and syncs it
 * once at the end; returns the failure message, or null when all went in.
 */
async function copyData(path: string, size: number, first: Buffer, input: ByteSource, signal: AbortSignal, fileFd?: number): Promise<string | null> {
  let fh;
  try {
    // No O_CREAT, no O_TRUNC: the daemon made the file, of `size` bytes.
    fh = await fs.open(path, 'r+');
  } catch (e) {
    return `cannot open ${path}: ${(e as Error).message}`;
  }
  try {
    const regions = fileFd === undefined ? undefined : await fileRegions(fileFd, first.length);
    const r = regions ? await copyRegions(fileFd!, regions, fh, size, signal) : await copyToSparse(input, fh, size, { first, signal });
    if (r.more) return `too much data (expected ${size} bytes)`;
    if (r.copied < size) return `not enough data (copied ${r.copied} bytes, expected ${size} bytes)`;
    await fh.datasync();
    return null;
  } catch (e) {
    if (signal.aborted) return 'interrupted';
    // A full or failing disk said as the daemon says it of a pool (not enough space left (ENOSPC at PATH)).
    const mapped = storageErrnoError('', e, path);
    return mapped ? mapped.message.replace(/^: /, '') : `writing ${path} failed: ${(e as Error).message}`;
  } finally {
    await fh.close();
  }
}

/** A regular file's data regions from where the import's data starts, with its length; undefined where lseek cannot say. */
async function fileRegions(fd: number, alreadyRead: number): Promise<{ start: number; length: number; extents: FileExtents } | undefined> {
  const extents = await fileExtents();
  if (typeof extents === 'string') return undefined;
  try {
    // The data starts where stdin was when this service began: before the bytes already read past a size line.
    const start = extents.position(fd) - alreadyRead;
    return { start, length: fstatSync(fd).size - start, extents };
  } catch {
    return undefined; // not a file that can seek after all: read it as a stream
  }
}

/**
 * The copy of a regular file as stdin: only its data regions are read (a
 * file of 4 GiB with 1 GiB of data is read for 1 GiB, not 4), each from its
 * start, and within them only the non-zero blocks written, as copyToSparse
 * writes a stream. Reads go from the descriptor's offset, which is set to
 * each region's start, so the offset still tells how far the import got
 * (qvm-volume's progress reads it from /proc). Where the filesystem cannot
 * tell, the whole file is one region: the same bytes as a plain read.
 */
async function copyRegions(
  fd: number,
  file: { start: number; length: number; extents: FileExtents },
  dst: FileHandle,
  size: number,
  signal: AbortSignal,
): Promise<{ copied: number; more: boolean }> {
  const end = file.start + Math.min(size, file.length);
  const buffers: [Buffer, Buffer] = [Buffer.allocUnsafeSlow(4 << 20), Buffer.allocUnsafeSlow(4 << 20)];
  for (const [from, to] of file.extents.dataRegions(fd, end, file.start)) {
    signal.throwIfAborted();
    file.extents.seek(fd, from);
    const r = await copyToSparse(fdSource(fd), dst, to - from, { at: from - file.start, buffers, signal, probeEnd: false });
    // The file shrank meanwhile: what is missing is not there to import.
    if (r.copied < to - from) return { copied: from - file.start + r.copied, more: false };
  }
  file.extents.seek(fd, end);
  return { copied: end - file.start, more: file.length > size };
}

/**
 * Streams exactly `size` bytes of the input (after `first`) as the payload
 * of internal.vm.volume.ImportData[WithSize]; resolves the reply for the
 * client. A short input is sent as it is and a long one with one byte
 * more: the daemon refuses either and rolls the import back before it
 * replies, and the reply is then given Qubes' message of the file path.
 * Interrupted (signal): the connection is closed, which rolls the import
 * back.
 */
async function streamImport(
  socketPath: string,
  r: ServiceRun,
  source: string,
  dest: string,
  sizeText: string,
  size: number,
  first: Buffer,
  input: ByteSource,
  fileFd: number | undefined,
): Promise<Buffer> {
  const withSize = r.service === 'admin.vm.volume.ImportWithSize';
  const method = withSize ? 'internal.vm.volume.ImportDataWithSize' : 'internal.vm.volume.ImportData';
  const sock = net.connect(socketPath);
  const chunks: Buffer[] = [];
  let got = 0;
  const reply = new Promise<Buffer>((resolve, reject) => {
    sock.on('data', (d: Buffer) => {
      got += d.length;
      if (got > MAX_REPLY) sock.destroy(new Error(`reply of ${method} larger than ${MAX_REPLY} bytes`));
      else chunks.push(d);
    });
    // A reply that came before the error (the daemon refused the import and closed while data was still sent) is the answer.
    sock.on('error', (e) =>
      chunks.length > 0
        ? resolve(Buffer.concat(chunks))
        : reject(new ServiceError(e.message, encodeError('QubesDaemonCommunicationError', `cannot call qubesd at ${socketPath}: ${e.message}`))),
    );
    sock.on('close', () => resolve(Buffer.concat(chunks)));
  });
  reply.catch(() => undefined);
  const send = (b: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      if (sock.destroyed) return reject(new Error('the connection to qubesd closed'));
      if (sock.write(b)) return resolve();
      const onDrain = () => {
        sock.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        sock.off('drain', onDrain);
        reject(new Error('the connection to qubesd closed'));
      };
      sock.once('drain', onDrain).once('close', onClose);
    });
  let failure: string | null = null;
  const onAbort = () => sock.destroy();
  r.signal.addEventListener('abort', onAbort, { once: true });
  try {
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    await send(encodeRequest({ method, arg: r.volume, source, dest }, withSize ? Buffer.from(`${sizeText || size}\n`, 'latin1') : Buffer.alloc(0)));
    let sent = 0;
    if (first.length) {
      const head = first.subarray(0, size);
      await send(Buffer.from(head));
      sent = head.length;
      if (first.length > size) failure = `too much data (expected ${size} bytes)`;
    }
    // A regular file is read from its descriptor (its offset tells qvm-volume the progress), a pipe from the stream.
    const src = fileFd === undefined ? input : fdSource(fileFd);
    while (failure === null && sent < size && !r.signal.aborted) {
      const buf = Buffer.allocUnsafe(Math.min(4 << 20, size - sent));
      let n = 0;
      while (n < buf.length) {
        const k = await src.read(buf, n, buf.length - n);
        if (k <= 0) break;
        n += k;
      }
      if (n > 0) await send(n === buf.length ? buf : buf.subarray(0, n));
      sent += n;
      if (n < buf.length) failure = `not enough data (copied ${sent} bytes, expected ${size} bytes)`;
    }
    if (failure === null && !r.signal.aborted) {
      const probe = Buffer.alloc(1);
      if ((await src.read(probe, 0, 1)) > 0) {
        failure = `too much data (expected ${size} bytes)`;
        await send(probe); // one byte more than the size: the daemon refuses the import
      }
    }
    if (r.signal.aborted) failure = 'interrupted';
    sock.end();
  } catch {
    // Connecting or sending failed: the daemon closed the connection (its reply says why) or is gone.
    sock.destroy();
    if (r.signal.aborted) failure = 'interrupted';
  } finally {
    r.signal.removeEventListener('abort', onAbort);
  }
  let answer: Buffer;
  try {
    answer = await reply;
  } catch (e) {
    if (failure === null) return (e as ServiceError).reply;
    answer = Buffer.alloc(0);
  }
  // The daemon refused it (and rolled it back) for what the input lacked or had too much of: Qubes' words.
  if (failure !== null && !(answer[0] === 0x30 && answer[1] === 0)) return encodeError('QubesException', `Data import failed: ${failure}`);
  if (answer.length === 0) return encodeError('QubesDaemonCommunicationError', `qubesd closed the connection of ${method} without a reply`);
  return answer;
}

export interface ServiceRun {
  readonly service: ImportService;
  readonly volume: string;
  readonly env: NodeJS.ProcessEnv;
  /** The data: a descriptor to read (a regular file) or a stream (a pipe). */
  readonly stdin: NodeJS.ReadableStream | number;
  /** ImportWithSize with the size given here instead of on stdin's first line (`--size`). */
  readonly size?: string;
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
  const input = stdinSource(r.stdin);
  try {
    let sizeText = r.size ?? '';
    let first: Buffer = Buffer.alloc(0);
    if (r.service === 'admin.vm.volume.ImportWithSize' && r.size === undefined) ({ text: sizeText, rest: first } = await readSizeLine(input));
    const mode = await callInternal(socketPath, 'internal.vm.volume.ImportMode', source, dest, r.volume, Buffer.from(sizeText, 'latin1')).catch(
      (e: unknown) => {
        // Nothing read yet (past a size line): a caller that has the data elsewhere may stream it instead.
        if (e instanceof ServiceError) e.status = EXIT_INTERNAL_UNREACHABLE;
        throw e;
      },
    );
    const streamed = /^stream ([0-9]{1,19})$/.exec(mode[0] === 0x30 && mode[1] === 0 ? mode.subarray(2).toString('latin1') : '');
    if (streamed) {
      const fileFd = typeof r.stdin === 'number' ? r.stdin : undefined;
      r.out(await streamImport(socketPath, r, source, dest, sizeText, Number(streamed[1]), first, input, fileFd));
      return 0;
    }
    const begin = await callInternal(socketPath, 'internal.vm.volume.ImportBegin', source, dest, r.volume, Buffer.from(sizeText, 'latin1')).catch(
      (e: unknown) => {
        // Nothing read yet (past a size line): a caller that has the data elsewhere may stream it instead.
        if (e instanceof ServiceError) e.status = EXIT_INTERNAL_UNREACHABLE;
        throw e;
      },
    );
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
      const fileFd = typeof r.stdin === 'number' ? r.stdin : undefined;
      failure = await Promise.race([copyData(path, size, first, input, r.signal, fileFd), interrupted]);
    }
    const status = failure === null ? Buffer.from('ok') : Buffer.from(`fail\n${failure}`, 'utf8');
    r.out(await callInternal(socketPath, 'internal.vm.volume.ImportEnd', source, dest, r.volume, status));
    return 0;
  } catch (e) {
    r.out(e instanceof ServiceError ? e.reply : encodeError('QubesException', `${r.service}: ${(e as Error).message}`));
    return e instanceof ServiceError ? e.status : 1;
  }
}

/**
 * `--service NAME [--size SIZE] [--] VOLUME`: the wrappers' command line;
 * `--size` (ImportWithSize only) is for a caller that hands over its data
 * file itself as stdin (qvm-volume's local import) and so cannot put the
 * size line before it.
 */
function parseCommandLine(argv: readonly string[]): { service: ImportService; volume: string; size?: string } {
  const args = [...argv];
  let service: string | undefined;
  let size: string | undefined;
  const rest: string[] = [];
  const usage = () => new Error(`usage: import-service --service ${IMPORT_SERVICES.join('|')} [--size SIZE] [--] VOLUME`);
  while (args.length) {
    const a = args.shift()!;
    if (a === '--service') service = args.shift();
    else if (a === '--size') {
      size = args.shift();
      if (size === undefined || !/^\d{1,19}$/.test(size)) throw usage();
    } else if (a === '--') rest.push(...args.splice(0));
    else rest.push(a);
  }
  if (!IMPORT_SERVICES.includes(service as ImportService) || rest.length !== 1) throw usage();
  if (size !== undefined && service !== 'admin.vm.volume.ImportWithSize') throw usage();
  return { service: service as ImportService, volume: rest[0]!, ...(size !== undefined ? { size } : {}) };
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
  // A regular file is read from its descriptor (large reads, no stream); a pipe through process.stdin.
  let stdinIsFile = false;
  try {
    stdinIsFile = fstatSync(0).isFile();
  } catch {
    // no stdin: read as a stream, which ends at once
  }
  const status = await runImportService({
    ...cmd,
    env: process.env,
    stdin: stdinIsFile ? 0 : process.stdin,
    signal: abort.signal,
    out: (reply) => {
      if (written) return;
      written = true;
      process.stdout.write(reply);
    },
  });
  // stdin may still be open (an error before the data, or an interruption): do not wait for it.
  if (!stdinIsFile) process.stdin.destroy();
  return status;
}

if (process.argv[1] !== undefined && (await fs.realpath(process.argv[1]).catch(() => '')) === (await fs.realpath(fileURLToPath(import.meta.url)))) {
  process.exitCode = await main();
}
