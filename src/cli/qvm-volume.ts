#!/usr/bin/env node
/**
 * qvm-volume: list the volumes of domains, show and change their
 * properties, resize, revert, import, export, clone and clear them.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { optStr, str, strs, UsageError, type CommandSpec, type Parsed } from './common/args.js';
import type { OpenedExport, QubesClient, VolumeInfo, VolumeSetting } from '../client/index.js';
import { humanSize, json, table } from './common/output.js';
import { boolArg, dispatchSub, FORMAT_OPTION, topHelp, type SubCommand } from './common/subcommands.js';
import { CliError, CliExit, runTool, type ToolContext } from './common/tool.js';
import { parseSize, SIZE_EPILOG } from './common/size.js';
import { parseVmVolume, showVmVolume, type VmVolume } from './common/vmvolume.js';
import type { ExportOutput } from './common/export-output.js';

const PROG = 'qvm-volume';
const INFO_ROWS = ['pool', 'vid', 'rw', 'source', 'save_on_stop', 'snap_on_start', 'size', 'usage', 'revisions_to_keep', 'ephemeral', 'is_outdated'];
const REVISIONS_HEAD = 'List of available revisions (for revert):';
const SETTABLE: readonly string[] = ['rw', 'revisions_to_keep', 'ephemeral'] satisfies VolumeSetting[];
/** Killed here (QUBES_STORAGE_FAILPOINTS): the export's copy is complete and synced, not yet renamed into place. */

const isJson = (p: Parsed) => p.values.get('format') === 'json';

/** The domain and volume exist (else an error naming which), and the volume's Info. */
async function checkVolume(qubes: QubesClient, v: VmVolume): Promise<VolumeInfo> {
  await qubes.domain(v.vm);
  const names = await qubes.volumes(v.vm);
  if (!names.includes(v.volume))
    throw new CliError(`no such volume: '${showVmVolume(v)}' (${v.vm} has ${names.length ? names.join(', ') : 'no volumes'})`);
  return qubes.volumeInfo(v.vm, v.volume);
}

/** A size argument (common/size.ts: the stock tool's forms and more); a bad one is a command-line mistake. */
function size(text: string): number {
  return parseSize(text);
}

/** The progress bar and busy indicator: only import, export and clone show them. */
function progress(): Promise<typeof import('./common/progress.js')> {
  return import('./common/progress.js');
}

function typed(v: string): string | number | boolean | null {
  if (v === '') return null;
  if (v === 'True') return true;
  if (v === 'False') return false;
  if (/^-?\d+$/.test(v) && Number.isSafeInteger(Number(v))) return Number(v);
  return v;
}

async function confirm(question: string, force: boolean): Promise<void> {
  if (force) return;
  const { askYesNo } = await import('./common/prompt.js');
  const a = await askYesNo(question);
  if (a.yes) return;
  throw new CliExit(1, a.reason ? `${a.reason}; nothing changed` : 'cancelled; nothing changed');
}

// ---- list ----------------------------------------------------------------------------

interface ListRow {
  pool: string;
  vid: string;
  vm: string;
  volume: string;
  revert_possible: boolean;
}

async function doList(t: ToolContext, p: Parsed): Promise<void> {
  const qubes = await t.client();
  const all = await qubes.domains();
  const wanted = strs(p, 'VM');
  const excluded = new Set(p.lists.get('exclude') ?? []);
  if (wanted.length && p.flags.has('all')) throw new UsageError('give VM names or --all, not both');
  for (const n of [...wanted, ...excluded]) if (!all.some((d) => d.name === n)) throw new CliError(`no such domain: '${n}'`);
  const pools = p.lists.get('pool') ?? [];
  if (pools.length) {
    const known = new Set(await qubes.pools());
    for (const pl of pools) if (!known.has(pl)) throw new CliError(`no such pool: '${pl}'`);
  }
  const doms = (wanted.length ? all.filter((d) => wanted.includes(d.name)) : all).filter((d) => !excluded.has(d.name));
  const rows: ListRow[] = [];
  for (const d of doms) {
    for (const vol of await qubes.volumes(d.name)) {
      const info = await qubes.volumeInfo(d.name, vol);
      const pool = info.pool;
      if (pools.length && !pools.includes(pool)) continue;
      const revs = await qubes.revisions(d.name, vol);
      rows.push({ pool, vid: info.vid, vm: d.name, volume: vol, revert_possible: revs.length > 0 });
    }
  }
  const key = (r: ListRow) => `${r.pool}:${r.vid}`;
  rows.sort((a, b) => cmp(key(a), key(b)) || cmp(a.vm, b.vm) || cmp(a.volume, b.volume));
  const shown = p.flags.has('full') ? rows : rows.filter((r, i) => i === 0 || key(rows[i - 1]!) !== key(r));
  if (isJson(p)) return void t.out(json(shown));
  t.out(
    table([
      ['POOL:VOLUME', 'VMNAME', 'VOLUME_NAME', 'REVERT_POSSIBLE'],
      ...shown.map((r) => [key(r), r.vm, r.volume, r.revert_possible ? 'Yes' : 'No']),
    ]),
  );
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---- info ----------------------------------------------------------------------------

async function doInfo(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const prop = optStr(p, 'PROPERTY');
  const qubes = await t.client();
  const info = (await checkVolume(qubes, v)).fields;
  const revs = await qubes.revisions(v.vm, v.volume);
  if (prop !== undefined) {
    if (prop === 'revisions') {
      if (isJson(p)) t.out(json(revs));
      else t.out(revs.map((r) => `${r}\n`).join(''));
      return;
    }
    if (!info.has(prop))
      throw new CliError(`volume ${showVmVolume(v)} has no property '${prop}' (known: ${[...info.keys(), 'revisions'].join(', ')})`);
    const value = info.get(prop)!;
    t.out(isJson(p) ? json(typed(value)) : `${value}\n`);
    return;
  }
  if (isJson(p)) {
    const obj: Record<string, unknown> = {};
    for (const [k, val] of info) obj[k] = typed(val);
    obj['revisions'] = revs;
    t.out(json(obj));
    return;
  }
  const rows: string[][] = [];
  for (const k of INFO_ROWS) {
    if (!info.has(k)) continue;
    let val = info.get(k)!;
    if (k === 'revisions_to_keep' && val === '-1') val = '-1 (snapshot disabled)';
    rows.push([k, val]);
  }
  t.out(table(rows));
  if (revs.length === 0) t.out(`${REVISIONS_HEAD} none\n`);
  else t.out(`${REVISIONS_HEAD}\n${revs.map((r) => `  ${r}\n`).join('')}`);
}

// ---- config ----------------------------------------------------------------------------

async function doConfig(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const prop = str(p, 'PROPERTY');
  const raw = str(p, 'VALUE');
  if (!SETTABLE.includes(prop)) throw new CliError(`cannot set '${prop}' of a volume (settable: ${SETTABLE.join(', ')})`);
  let value = raw;
  if (prop === 'revisions_to_keep') {
    if (!/^(-1|0|[1-9]\d{0,8})$/.test(raw)) throw new CliError(`revisions_to_keep must be an integer from -1 up, not '${raw}'`);
  } else value = await boolArg(raw, prop);
  const qubes = await t.client();
  await checkVolume(qubes, v);
  await qubes.setVolumeOption(v.vm, v.volume, prop as VolumeSetting, value);
}

// ---- resize, revert ----------------------------------------------------------------------

async function doResize(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const n = size(str(p, 'SIZE'));
  const qubes = await t.client();
  const cur = (await checkVolume(qubes, v)).size;
  if (n < cur && !p.flags.has('force'))
    throw new CliError(`shrinking ${showVmVolume(v)} from ${cur} to ${n} bytes would lose data; refused without -f`);
  await qubes.resizeVolume(v.vm, v.volume, n);
}

async function doRevert(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const rev = optStr(p, 'REVISION');
  const qubes = await t.client();
  await checkVolume(qubes, v);
  const revs = await qubes.revisions(v.vm, v.volume);
  if (revs.length === 0) throw new CliError(`volume ${showVmVolume(v)} has no revision to revert to`);
  if (rev !== undefined && !revs.includes(rev))
    throw new CliError(`volume ${showVmVolume(v)} has no revision '${rev}' (available: ${revs.join(', ')})`);
  await qubes.revertVolume(v.vm, v.volume, rev);
}

// ---- import, export --------------------------------------------------------------------

async function doImport(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const src = str(p, 'PATH');
  const sizeText = p.values.get('size');
  const noResize = p.flags.has('no_resize');
  let want = sizeText === undefined ? null : size(sizeText);
  const shown = src === '-' ? 'stdin' : `'${src}'`;
  let st: fs.Stats;
  try {
    st = src === '-' ? fs.fstatSync(0) : await fsp.stat(src);
  } catch (e) {
    throw new CliError(`cannot read ${shown}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (st.isDirectory()) throw new CliError(`${shown} is a directory`);
  if (want === null && !noResize) {
    // The data's length is the volume's new size: a regular file (also as stdin, as the stock tool reads it) has one.
    if (!st.isFile())
      throw new UsageError(
        `the length of ${shown} is not known (not a regular file): give --size SIZE ` +
          "(the data's length; the volume gets that size) or --no-resize (the data is exactly the volume's size)",
      );
    want = st.size;
  }
  const qubes = await t.client();
  const info = await checkVolume(qubes, v);
  const { progressBar } = await progress();
  const total = noResize || want === null ? info.size : want;
  const withSize = !noResize && want !== null ? { size: want } : {};
  // A regular file on the daemon's host: written to the volume by the import service, not streamed (see --help).
  if (!p.flags.has('stream') && qubes.transport.kind === 'socket' && st.isFile()) {
    const local = await import('../client/local-import.js');
    const internal = await local.usableInternalSocket(process.env);
    if (internal.path !== null) {
      const fd = src === '-' ? 0 : fs.openSync(src, 'r');
      const bar = progressBar(`import ${showVmVolume(v)}`, total);
      const running = local.importLocally({
        internalSocket: internal.path,
        vm: v.vm,
        volume: v.volume,
        fd,
        ...withSize,
        signal: t.signal,
        ...(process.stderr.isTTY ? { onProgress: (n: number) => bar.update(n) } : {}),
      });
      // Interrupted: the service ends the import as failed; the tool waits for it before it exits.
      const unregister = t.onInterrupt(() => running.then(() => undefined, () => undefined));
      try {
        if ((await running) === 'done') return;
      } finally {
        unregister();
        bar.finish();
        if (fd !== 0) fs.closeSync(fd);
      }
      // The service could not reach the internal socket (it read nothing): streamed below.
    }
  }
  // Large reads of a file (also as stdin): fewer, larger chunks over the socket.
  const input: Readable =
    src !== '-' ? fs.createReadStream(src, { highWaterMark: STREAM_READ }) : st.isFile() ? fs.createReadStream('', { fd: 0, autoClose: false, highWaterMark: STREAM_READ }) : process.stdin;
  const bar = progressBar(`import ${showVmVolume(v)}`, total);
  try {
    await qubes.importVolume(v.vm, v.volume, input, { ...withSize, onProgress: (n) => bar.update(n) });
  } finally {
    bar.finish();
    if (input !== process.stdin) input.destroy();
  }
}

/** Bytes read at a time from a file sent over the admin socket. */
const STREAM_READ = 1024 * 1024;

async function doExport(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const dest = str(p, 'PATH');
  const qubes = await t.client();
  const { openExportOutput, exportToFile, exportToStream, exportPiecesToFile, exportPiecesToStream, fullOrFailing } = await import('./common/export-output.js');
  let exporting: Promise<OpenedExport> | null = null;
  let out: ExportOutput | null = null;
  let copying: Promise<unknown> = Promise.resolve();
  // Ctrl-C: a file copy stops at its next chunk and removes its temporary
  // file (waited for); a stream may be stuck on its reader (not waited for).
  // Either way the export is ended before the tool exits.
  const off = t.onInterrupt(async () => {
    const held = await exporting?.catch(() => null);
    if (!held) return;
    if (out?.kind === 'file') await copying.catch(() => undefined);
    await held.end();
  });
  try {
    // The export is asked for at once, and the output checked meanwhile (for
    // rbd the daemon makes its snapshot then). Not for a FIFO: its reader
    // may be long in coming, and the export would hold the volume meanwhile.
    const fifo = dest !== '-' && (await fsp.stat(dest).catch(() => null))?.isFIFO() === true;
    const outputting = fifo ? openExportOutput(dest, t.signal) : null;
    if (outputting) out = await outputting;
    t.signal.throwIfAborted();
    // A file of this host to copy (by reflink where it can), or the data streamed by the daemon (rbd).
    exporting = qubes.openExport(v.vm, v.volume);
    const [opened, output] = await Promise.allSettled([exporting, outputting ?? openExportOutput(dest, t.signal)]);
    if (output.status === 'fulfilled') out = output.value;
    if (opened.status === 'rejected') {
      // A missing domain or volume said as the other sub-commands say it (the calls only now).
      await checkVolume(qubes, v);
      throw opened.reason;
    }
    const held = opened.value;
    try {
      if (output.status === 'rejected') throw output.reason;
      const to = out!;
      const { progressBar } = await progress();
      const total = held.kind === 'data' ? held.size : (await fsp.stat(held.path)).size;
      const bar = progressBar(`export ${showVmVolume(v)}`, total);
      try {
        if (held.kind === 'data') copying = to.kind === 'file' ? exportPiecesToFile(held, to, bar, t.signal) : exportPiecesToStream(held, to, bar, t.signal);
        else copying = to.kind === 'file' ? exportToFile(held.path, to, bar, t.signal) : exportToStream(held.path, to, bar, t.signal);
        await copying.catch((e: unknown) => {
          throw fullOrFailing(dest, e) ?? e;
        });
      } finally {
        bar.finish();
      }
    } finally {
      await held.end();
    }
  } finally {
    off();
    const o = out as ExportOutput | null;
    if (o?.kind === 'stream' && o.owned) o.sink.destroy();
  }
}

// ---- clone, clear ------------------------------------------------------------------------

async function doClone(t: ToolContext, p: Parsed): Promise<void> {
  const src = parseVmVolume(str(p, 'SRC_VM:VOLUME'));
  const dst = parseVmVolume(str(p, 'DST_VM:VOLUME'));
  const qubes = await t.client();
  const srcInfo = await checkVolume(qubes, src);
  await checkVolume(qubes, dst);
  await confirm(
    `This replaces the data of ${showVmVolume(dst)} with a copy of ${showVmVolume(src)} (${humanSize(srcInfo.size)}). Continue?`,
    p.flags.has('force'),
  );
  const { busyIndicator } = await progress();
  const busy = busyIndicator(`clone ${showVmVolume(src)} -> ${showVmVolume(dst)}`);
  try {
    await qubes.cloneVolume(src.vm, src.volume, dst.vm, dst.volume);
  } finally {
    busy.finish();
  }
}

async function doClear(t: ToolContext, p: Parsed): Promise<void> {
  const v = parseVmVolume(str(p, 'VM:VOLUME'));
  const qubes = await t.client();
  await checkVolume(qubes, v);
  await confirm(`This replaces all data of ${showVmVolume(v)} with zeros. Continue?`, p.flags.has('force'));
  await qubes.clearVolume(v.vm, v.volume);
}

// ---- commands -------------------------------------------------------------------------

const FORCE = { names: ['-f', '--force'], kind: 'flag', dest: 'force', help: 'do not ask' } as const;
const VMVOL = { name: 'VM:VOLUME', help: 'a volume of a domain, like work:private' };

function sub(names: string[], spec: Omit<CommandSpec, 'prog'>, run: (t: ToolContext, p: Parsed) => Promise<void>): SubCommand {
  return { names, spec: { ...spec, prog: `${PROG} ${names[0]}` }, run: (t, argv, s) => run(t, t.parse(s, argv)) };
}

const SUBS: SubCommand[] = [
  sub(
    ['list', 'ls', 'l'],
    {
      summary: 'list volumes: POOL:VOLUME VMNAME VOLUME_NAME REVERT_POSSIBLE',
      options: [
        { names: ['-p', '--pool'], kind: 'append', dest: 'pool', metavar: 'POOL', help: 'only volumes in this pool (repeatable)' },
        { names: ['--full'], kind: 'flag', help: 'one line per volume and domain, also where they share a POOL:VOLUME' },
        { names: ['--all'], kind: 'flag', help: 'all domains (the default when no VM is given)' },
        { names: ['--exclude'], kind: 'append', metavar: 'VM', help: 'leave out this domain (repeatable)' },
        FORMAT_OPTION,
      ],
      positionals: [{ name: 'VM', count: '*', help: 'only these domains' }],
    },
    doList,
  ),
  sub(
    ['info', 'i'],
    {
      summary: 'the properties and revisions of a volume',
      options: [FORMAT_OPTION],
      positionals: [VMVOL, { name: 'PROPERTY', count: '?', help: "just this one (also 'path', 'revisions')" }],
    },
    doInfo,
  ),
  sub(
    ['config', 'c', 'set', 's'],
    {
      summary: 'set rw, revisions_to_keep or ephemeral of a volume',
      options: [],
      positionals: [VMVOL, { name: 'PROPERTY', help: SETTABLE.join(', ') }, { name: 'VALUE' }],
    },
    doConfig,
  ),
  sub(
    ['resize', 'extend'],
    {
      summary: 'change the size of a volume',
      options: [
        {
          ...FORCE,
          help: 'allow shrinking: data past the new end is cut; a volume keeping revisions keeps the old data and size as its newest revision (revert undoes the shrink). Drivers that cannot shrink refuse',
        },
      ],
      positionals: [VMVOL, { name: 'SIZE', help: 'the new size (below)' }],
      epilog: SIZE_EPILOG,
    },
    doResize,
  ),
  sub(
    ['revert', 'rv', 'r'],
    { summary: 'go back to a revision (the newest when not given)', options: [], positionals: [VMVOL, { name: 'REVISION', count: '?' }] },
    doRevert,
  ),
  sub(
    ['import'],
    {
      summary: 'replace the data of a volume with a file or stdin (-)',
      options: [
        { names: ['--size'], kind: 'value', metavar: 'SIZE', help: "the data's length (below); the volume gets that size" },
        { names: ['--no-resize'], kind: 'flag', dest: 'no_resize', help: 'keep the volume size: the data must be exactly that long' },
        { names: ['--stream'], kind: 'flag', help: 'send the data over the admin socket, even where a local import is possible (below)' },
      ],
      positionals: [VMVOL, { name: 'PATH', help: 'a file, or - for stdin' }],
      exclusive: [['size', 'no_resize']],
      epilog:
        'The volume gets the size of the file (also of stdin redirected from a file).\n' +
        'Data of unknown length (a pipe, a FIFO, a device) needs --size or --no-resize.\n' +
        'A failed, cut-short or interrupted import leaves the old data.\n\n' +
        'Local import: when a qubesd answers, the data is a regular file (a PATH, or stdin\n' +
        "redirected from one) and this user may use the daemon's internal socket (root or\n" +
        "the daemon's user: QUBESD_INTERNAL_SOCKET, else qubesd.internal.sock beside its\n" +
        'socket), the import service writes the file into the volume directly\n' +
        '(internal.vm.volume.ImportBegin/ImportEnd, allowed by the same admin policy),\n' +
        'zero blocks left as holes, one fsync at the end. Otherwise (a pipe, another user,\n' +
        'no daemon, --stream) the data is streamed (admin.vm.volume.Import[WithSize]).\n\n' +
        SIZE_EPILOG,
    },
    doImport,
  ),
  sub(
    ['export'],
    {
      summary: 'copy the committed data of a volume to a file or stdout (-)',
      options: [],
      positionals: [VMVOL, { name: 'PATH', help: 'a file (a reflink, else sparse), or - for stdout' }],
      epilog:
        'A file is written under a temporary name beside PATH and renamed over it once\n' +
        'complete and synced (mode 0600): on failure or Ctrl-C PATH is left as it was.\n' +
        'On XFS and btrfs, in the filesystem of the pool, the copy is a reflink: it\n' +
        'shares the volume\'s blocks and takes no time; elsewhere zero blocks become\n' +
        'holes. A device or FIFO as PATH, and stdout, get every byte, in order.\n' +
        'The export is always ended: also when the reader of stdout quits early\n' +
        '(`| head -c 16`: exit 141, as SIGPIPE stops cat) or on Ctrl-C (exit 130).',
    },
    doExport,
  ),
  sub(
    ['clone'],
    {
      summary: "replace a volume's data with a copy of another volume",
      options: [FORCE],
      positionals: [{ name: 'SRC_VM:VOLUME' }, { name: 'DST_VM:VOLUME' }],
    },
    doClone,
  ),
  sub(['clear'], { summary: 'replace the data of a volume with zeros', options: [FORCE], positionals: [VMVOL] }, doClear),
];

const HELP = topHelp(PROG, 'Manage the volumes of domains. Without a command: list.', SUBS);

await runTool(PROG, (t) => dispatchSub(t, process.argv.slice(2), SUBS, 'list', HELP));
