/**
 * Installs the import services (import-service.ts) into a qrexec services
 * directory under both names Qubes' admin client runs, admin.vm.volume.Import
 * and admin.vm.volume.ImportWithSize: each a small sh wrapper (mode 0755)
 * that runs this checkout's program with this Node and names the internal
 * socket it was installed for:
 *
 *   #!/bin/sh
 *   # qubes-storage import service: ...
 *   : "${QUBESD_INTERNAL_SOCKET:=/var/run/qubesd.internal.sock}"
 *   export QUBESD_INTERNAL_SOCKET
 *   exec '/usr/bin/node' '/.../dist/src/qrexec/import-service.js' --service admin.vm.volume.Import -- "$@"
 *
 * The socket is written into the wrapper because the client runs the service
 * through sudo when it is not root, which drops the caller's environment.
 *
 * Each file is written atomically (temporary, fsync, rename, directory
 * fsync). An existing entry that is not one of ours (Qubes' own script, a
 * symlink, anything without our marker line) is refused, both names checked
 * before either is written, unless `force`; a directory is always refused.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../files/files.js';
import { IMPORT_SERVICES } from './import-service.js';

/** The second line of every wrapper we write: how an entry is known to be ours. */
export const MARKER = '# qubes-storage import service';

/** The program the wrappers run (dist/src/qrexec/import-service.js of this checkout). */
export const SERVICE_PROGRAM = fileURLToPath(new URL('./import-service.js', import.meta.url));

/** $QREXEC_SERVICES_DIR, else /etc/qubes-rpc (where Qubes' client looks: qubesadmin.config.QREXEC_SERVICES_DIR). */
export function defaultServicesDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env['QREXEC_SERVICES_DIR'] || '/etc/qubes-rpc');
}

export interface InstallOptions {
  /** The services directory (made if missing, mode 0755). */
  readonly dir: string;
  /** The daemon's internal socket the services talk to. */
  readonly internalSocket: string;
  /** Replace entries that are not ours. */
  readonly force?: boolean;
  /** Default: this Node (process.execPath). */
  readonly node?: string;
}

/** Quotes `s` for sh: single quotes, each ' as '\''. */
function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The wrapper for `service`. */
export function wrapperText(service: string, o: Required<Pick<InstallOptions, 'internalSocket' | 'node'>>): string {
  if (/[\n\0]/.test(o.internalSocket + o.node + SERVICE_PROGRAM)) throw new Error('paths with a newline cannot go into a wrapper');
  return [
    '#!/bin/sh',
    `${MARKER}: ${service} (written by qubes-storage-install-rpc, which replaces it when run again)`,
    `: "\${QUBESD_INTERNAL_SOCKET:=${o.internalSocket.replace(/["\\$`]/g, '\\$&')}}"`,
    'export QUBESD_INTERNAL_SOCKET',
    `exec ${shQuote(o.node)} ${shQuote(SERVICE_PROGRAM)} --service ${service} -- "$@"`,
    '',
  ].join('\n');
}

/** Why `file` may not be replaced without force, or null when it is missing or ours. */
async function notOurs(file: string): Promise<string | null> {
  let st;
  try {
    st = await fs.lstat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  if (!st.isFile()) return 'not a regular file';
  const fh = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const head = Buffer.alloc(4096);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const lines = head.subarray(0, bytesRead).toString('utf8').split('\n');
    return lines[1]?.startsWith(MARKER) ? null : 'not written by qubes-storage-install-rpc';
  } finally {
    await fh.close();
  }
}

/** Installs both services; returns the files written. Nothing is written when one entry is refused. */
export async function installImportServices(o: InstallOptions): Promise<string[]> {
  const dir = path.resolve(o.dir);
  const node = o.node ?? process.execPath;
  const internalSocket = path.resolve(o.internalSocket);
  const files = IMPORT_SERVICES.map((s) => ({ service: s, file: path.join(dir, s) }));
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  for (const { file } of files) {
    const why = await notOurs(file);
    if (why === 'a directory') throw new Error(`${file} is a directory; not touching it`);
    if (why !== null && !o.force) throw new Error(`${file} exists and is ${why}; --force replaces it`);
  }
  for (const { service, file } of files) {
    await writeFileAtomic(file, wrapperText(service, { internalSocket, node }), 0o755);
    // The mode given at creation is masked by the umask.
    await fs.chmod(file, 0o755);
  }
  return files.map((f) => f.file);
}
