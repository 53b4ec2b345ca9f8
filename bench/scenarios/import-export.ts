// Scenario "import-export": a 4 GiB image holding 1 GiB of data in scattered
// 1 MiB extents, imported into a volume through the daemon
// (admin.vm.volume.ImportWithSize streamed over the socket of a child
// qubesd) and exported again (admin.vm.volume.Export returns a path; the
// client copies it to a file with the library's copyFileCow, a reflink on
// this XFS as `cp` makes, then ExportEnd; and, as a client on another
// filesystem would, "export-read": the path read into a new file with the
// library's sparseCopy, zero blocks left as holes, fsynced). Baselines on the
// same files, same filesystem, same run, interleaved: `dd bs=128K
// conv=sparse,fdatasync` and `cp --sparse=always` (and, for the record,
// `cp --sparse=always` followed by `sync OUT`, the same durability as the
// import). Outputs are compared by SHA-256 and allocated size.
//
// Issue 16 item 4 (import at disk speed): `qvm-volume import` itself, as a
// user runs it on the daemon's host: "tool-local" (the default there: the
// import service writes the file into the volume, internal ImportBegin/End,
// 4 MiB reads, zero blocks left as holes, one fdatasync) and "tool-stream"
// (--stream: the data over the admin socket), against `dd bs=4M
// conv=sparse,fdatasync` (and bs=128K) on the same filesystem in the same
// run. The tool's figures include its start-up and its calls (about 0.2 s).
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { AdminClient } from '../../src/admin/client.js';
import { fileURLToPath } from 'node:url';
import { copyFileCow, sparseCopy } from '../../src/files/files.js';
import { GiB, MiB, startChildQubesd } from '../daemon-util.js';
import { scratchXfs } from '../scratch-fs.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const execFileP = promisify(execFile);

/**
 * A do-nothing server in its own process: counts the bytes of each
 * connection, answers the count, closes. The same client sending the image
 * to it gives the floor of a streamed import on this machine (Node on both
 * ends of a Unix socket, nothing written).
 */
const SINK_JS = `
const net = require('node:net');
const srv = net.createServer((s) => { let n = 0; s.on('data', (b) => { n += b.length; }); s.on('end', () => s.end(String(n))); s.on('error', () => {}); });
srv.listen(process.argv[1], () => process.stdout.write('ready\\n'));
process.on('SIGTERM', () => process.exit(0));
`;

async function startSink(sock: string): Promise<{ send(file: string, prefix: Buffer): Promise<number>; stop(): Promise<void> }> {
  const child = spawn(process.execPath, ['-e', SINK_JS, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`sink exited with ${code}`)));
    child.stdout!.once('data', () => resolve());
  });
  return {
    send: (file, prefix) =>
      new Promise<number>((resolve, reject) => {
        const body = fs.createReadStream(file, { highWaterMark: READ_CHUNK });
        body.unshift(prefix);
        const c = net.connect(sock, () => body.pipe(c));
        let reply = '';
        c.on('data', (d: Buffer) => (reply += d.toString()));
        c.on('end', () => resolve(Number(reply)));
        c.on('error', reject);
        body.on('error', reject);
      }),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
const QVM_VOLUME = fileURLToPath(new URL('../../src/cli/qvm-volume.js', import.meta.url));

/** The import client reads the image in 4 MiB pieces. */
const READ_CHUNK = 4 * MiB;

/** A sparse file of `size` bytes with `data` bytes of random data in 1 MiB extents spread evenly. */
async function makeImage(file: string, size: number, data: number): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    await fh.truncate(size);
    const n = data / MiB;
    const stride = Math.floor(size / n / MiB) * MiB;
    let seed = Buffer.alloc(MiB);
    for (let i = 0; i < n; i++) {
      // cheap distinct non-zero data: a hash chain fills each extent
      let h = createHash('sha256').update(String(i)).digest();
      for (let o = 0; o < MiB; o += h.length) {
        h.copy(seed, o);
        if ((o & 0xfff) === 0) h = createHash('sha256').update(h).digest();
      }
      await fh.write(seed, 0, MiB, i * stride);
    }
    seed = Buffer.alloc(0);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of fs.createReadStream(file, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}

async function allocated(file: string): Promise<number> {
  return (await fsp.stat(file)).blocks * 512;
}

export const importExport: Scenario = {
  name: 'import-export',
  describe: 'import (ImportWithSize over the socket; qvm-volume import local and --stream) and export (Export path copied with copyFileCow; and read into a file) of a 4 GiB image with 1 GiB of data in 1 MiB extents, vs dd and cp',
  async run(opts) {
    const size = opts.quick ? 64 * MiB : 4 * GiB;
    const data = opts.quick ? 16 * MiB : GiB;
    const reps = opts.quick ? 1 : 5;
    const scratch = await scratchXfs('import', opts.quick ? 1 : 12);
    let daemon: Awaited<ReturnType<typeof startChildQubesd>> | undefined;
    let sink: Awaited<ReturnType<typeof startSink>> | undefined;
    try {
      const files = path.join(scratch.dir, 'files');
      await fsp.mkdir(files);
      const src = path.join(files, 'image.img');
      await makeImage(src, size, data);
      const srcHash = await sha256(src);
      const srcAlloc = await allocated(src);

      const base = path.join(scratch.dir, 'qubes');
      const sock = path.join(scratch.dir, 'qubesd.sock');
      daemon = await startChildQubesd(base, sock, path.join(scratch.dir, 'qubesd.log'));
      const client = new AdminClient({ socketPath: sock, timeoutMs: 600_000 });
      sink = await startSink(path.join(scratch.dir, 'sink.sock'));
      await client.call('admin.vm.Create.StandaloneVM', 'dom0', '', 'name=imp label=red');

      const out = (name: string) => path.join(files, name);
      const toolEnv = { PATH: process.env['PATH'], HOME: base, QUBES_BASE_DIR: base, QUBESD_SOCKET: sock };
      const checks: string[] = [];
      const check = async (what: string, file: string) => {
        const [h, a] = [await sha256(file), await allocated(file)];
        checks.push(`${what}: ${h === srcHash ? 'same SHA-256' : 'DIFFERENT SHA-256'}, ${(a / MiB).toFixed(1)} MiB allocated (source ${(srcAlloc / MiB).toFixed(1)})`);
        if (h !== srcHash) throw new Error(`import-export: ${what} differs from the source`);
        return a;
      };

      const runs: Record<string, () => Promise<unknown>> = {
        dd: () => execFileP('dd', [`if=${src}`, `of=${out('dd.img')}`, 'bs=128K', 'conv=sparse,fdatasync', 'status=none']),
        dd4M: () => execFileP('dd', [`if=${src}`, `of=${out('dd4m.img')}`, 'bs=4M', 'conv=sparse,fdatasync', 'status=none']),
        toolLocal: () => execFileP(process.execPath, [QVM_VOLUME, 'import', 'imp:private', src], { env: toolEnv }),
        toolStream: () => execFileP(process.execPath, [QVM_VOLUME, 'import', '--stream', 'imp:private', src], { env: toolEnv }),
        cp: () => execFileP('cp', ['--sparse=always', src, out('cp.img')]),
        cpSync: async () => {
          await execFileP('cp', ['--sparse=always', src, out('cpsync.img')]);
          await execFileP('sync', [out('cpsync.img')]);
        },
        import: () => {
          // The size line, then the file as it is read (no generator in between).
          const body = fs.createReadStream(src, { highWaterMark: READ_CHUNK });
          body.unshift(Buffer.from(`${size}\n`));
          return client.callStream('admin.vm.volume.ImportWithSize', 'imp', 'private', body);
        },
        socketFloor: async () => {
          const n = await sink!.send(src, Buffer.from(`${size}\n`));
          if (n !== size + `${size}\n`.length) throw new Error(`import-export: the sink got ${n} bytes`);
        },
        export: async () => {
          const p = (await client.call('admin.vm.volume.Export', 'imp', 'private')).toString('utf8');
          try {
            await copyFileCow(p, out('export.img'), { allowSparse: true });
          } finally {
            await client.call('admin.vm.volume.ExportEnd', 'imp', 'private', p);
          }
        },
        exportRead: async () => {
          const p = (await client.call('admin.vm.volume.Export', 'imp', 'private')).toString('utf8');
          try {
            await sparseCopy(p, out('export-read.img'));
          } finally {
            await client.call('admin.vm.volume.ExportEnd', 'imp', 'private', p);
          }
        },
      };
      const outputs: Record<string, string | null> = {
        dd: 'dd.img',
        dd4M: 'dd4m.img',
        toolLocal: null,
        toolStream: null,
        cp: 'cp.img',
        cpSync: 'cpsync.img',
        import: null,
        export: 'export.img',
        exportRead: 'export-read.img',
        socketFloor: null,
      };
      const t: Record<string, number[]> = { dd: [], dd4M: [], toolLocal: [], toolStream: [], cp: [], cpSync: [], import: [], export: [], exportRead: [], socketFloor: [] };
      const alloc: Record<string, number> = {};
      const order = ['dd', 'cp', 'import', 'export', 'exportRead', 'dd4M', 'toolLocal', 'toolStream', 'socketFloor', 'cpSync'];
      const imports = new Set(['import', 'toolLocal', 'toolStream']);
      const logged = async (m: string) => ((await fsp.readFile(path.join(scratch.dir, 'qubesd.log'), 'utf8')).match(new RegExp(`method=${m.replace(/\./g, '\\.')} `, 'g')) ?? []).length;
      for (let r = 0; r < reps; r++) {
        // rotate the order each round so drift and cache state hit all alike
        const round = [...order.slice(r % order.length), ...order.slice(0, r % order.length)];
        for (const k of round) {
          const begins = k === 'toolLocal' ? await logged('internal.vm.volume.ImportBegin') : 0;
          t[k]!.push(await timeMs(runs[k]!));
          if (k === 'toolLocal' && (await logged('internal.vm.volume.ImportBegin')) !== begins + 1)
            throw new Error('import-export: qvm-volume import did not import locally (no internal.vm.volume.ImportBegin in the log)');
          if (r === 0) {
            // round 0 runs import before export (dd first): check every output once
            if (imports.has(k)) {
              const p = (await client.call('admin.vm.volume.Export', 'imp', 'private')).toString('utf8');
              try {
                alloc[k] = await check(`imported volume, ${k} (through Export)`, p);
              } finally {
                await client.call('admin.vm.volume.ExportEnd', 'imp', 'private', p);
              }
            } else if (outputs[k]) alloc[k] = await check(k, out(outputs[k]!));
          }
          if (outputs[k]) await fsp.rm(out(outputs[k]!), { force: true });
        }
      }
      const fDd = figure('import-export.dd', 'ms', t.dd!, { note: 'dd bs=128K conv=sparse,fdatasync' });
      const fDd4M = figure('import-export.dd-4M', 'ms', t.dd4M!, { note: 'dd bs=4M conv=sparse,fdatasync' });
      const fasterDd = fDd4M.median <= fDd.median ? fDd4M : fDd;
      const fCp = figure('import-export.cp', 'ms', t.cp!, { note: 'cp --sparse=always (no fsync)' });
      const fCpSync = figure('import-export.cp+sync', 'ms', t.cpSync!, { note: 'cp --sparse=always; sync OUT (durable like the import)' });
      const faster = fDd.median <= fCp.median ? fDd : fCp;
      const figures: Figure[] = [
        fDd,
        fCp,
        fCpSync,
        withBaseline(figure('import-export.import', 'ms', t.import!, { note: 'ImportWithSize over the socket; zero 4 KiB blocks left as holes, fsync' }), faster, 'ratio <= 1.0 (>= 1.0x the faster baseline)'),
        withBaseline(figure('import-export.export', 'ms', t.export!, { note: 'Export path copied with copyFileCow (a reflink here, as cp), fsync' }), faster, 'ratio <= 1.0 (>= 1.0x the faster baseline)'),
        withBaseline(figure('import-export.import-vs-dd', 'ms', t.import!), fDd),
        withBaseline(figure('import-export.export-read', 'ms', t.exportRead!, { note: 'Export path read into a new file with sparseCopy (4 KiB zero blocks left as holes), fsync' }), fDd),
        withBaseline(figure('import-export.import-vs-cp+sync', 'ms', t.import!), fCpSync),
        withBaseline(
          figure('import-export.socket-floor', 'ms', t.socketFloor!, { note: 'the import client sending the image to a do-nothing server process (counts bytes): the floor of a streamed import here' }),
          fDd,
        ),
        withBaseline(figure('import-export.import-vs-socket-floor', 'ms', t.import!), figure('import-export.socket-floor', 'ms', t.socketFloor!)),
        fDd4M,
        withBaseline(
          figure('import-export.tool-local', 'ms', t.toolLocal!, { note: 'qvm-volume import FILE on the daemon host: the import service writes the volume (internal ImportBegin/End), start-up included' }),
          fasterDd,
          'ratio <= 1.11 (>= 0.9x the throughput of the faster dd)',
        ),
        withBaseline(
          figure('import-export.tool-stream', 'ms', t.toolStream!, { note: 'qvm-volume import --stream FILE: ImportWithSize over the admin socket, start-up included' }),
          fasterDd,
        ),
      ];
      const mibs = (samples: number[]) => (size / MiB / (figure('x', 'ms', samples).median / 1000)).toFixed(0);
      const notes = [
        `filesystem: ${scratch.kind}; daemon: child qubesd, pool default on the same filesystem`,
        `image ${size / MiB} MiB, ${data / MiB} MiB of data in 1 MiB extents; ${reps} rounds, order rotated each round`,
        `throughput at the median: import ${((size / MiB) / (figures[3]!.median / 1000)).toFixed(0)} MiB/s of image, export-read ${((size / MiB) / (figures[6]!.median / 1000)).toFixed(0)} MiB/s`,
        `MiB/s of image at the median: tool-local ${mibs(t.toolLocal!)}, tool-stream ${mibs(t.toolStream!)}, dd bs=4M ${mibs(t.dd4M!)}, dd bs=128K ${mibs(t.dd!)}`,
        `load average at the end: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`,
        ...checks,
      ];
      for (const k of imports) if (alloc[k] !== undefined && alloc[k] > srcAlloc) notes.push(`imported volume (${k}) allocates MORE than the source`);
      if (alloc['export'] !== undefined && alloc['export'] > srcAlloc) notes.push('export output allocates MORE than the source');
      if (alloc['exportRead'] !== undefined && alloc['exportRead'] > srcAlloc) notes.push('export-read output allocates MORE than the source');
      return { figures, notes };
    } finally {
      await sink?.stop();
      await daemon?.stop();
      await scratch.cleanup();
    }
  },
};
