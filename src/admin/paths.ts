/**
 * Where the daemon and the tools look by default: the base directory, the
 * admin socket and the internal one. In the admin API's folder, with the
 * wire protocol every client loads, not in src/daemon/: a tool talking to a
 * daemon finds the socket without loading the runtime (drivers, state).
 */
import * as os from 'node:os';
import * as path from 'node:path';

/** QUBES_BASE_DIR; else /var/lib/qubes for root; else $XDG_DATA_HOME/qubes-storage or ~/.local/share/qubes-storage. */
export function defaultBaseDir(env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  const given = env['QUBES_BASE_DIR'];
  if (given) return path.resolve(given);
  if (uid === 0) return '/var/lib/qubes';
  const xdg = env['XDG_DATA_HOME'];
  // The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'qubes-storage');
  return path.join(env['HOME'] || os.homedir(), '.local', 'share', 'qubes-storage');
}

/** QUBESD_SOCKET; else BASE/qubesd.sock. */
export function defaultSocketPath(baseDir: string, env: NodeJS.ProcessEnv = process.env): string {
  const given = env['QUBESD_SOCKET'];
  if (given) return path.resolve(given);
  return path.join(baseDir, 'qubesd.sock');
}

/**
 * The internal socket beside an admin socket, named as Qubes names its own
 * (/var/run/qubesd.sock -> /var/run/qubesd.internal.sock): `NAME.sock` ->
 * `NAME.internal.sock`, any other name gets `.internal` appended.
 */
export function internalSocketPath(adminSocketPath: string): string {
  const p = path.resolve(adminSocketPath);
  return p.endsWith('.sock') ? `${p.slice(0, -'.sock'.length)}.internal.sock` : `${p}.internal`;
}

/**
 * Where the internal socket is, as the daemon and the import service find
 * it: QUBESD_INTERNAL_SOCKET; else beside the admin socket
 * (`internalSocketPath(defaultSocketPath(defaultBaseDir()))`, so
 * QUBESD_SOCKET and QUBES_BASE_DIR count).
 */
export function defaultInternalSocketPath(env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  const given = env['QUBESD_INTERNAL_SOCKET'];
  if (given) return path.resolve(given);
  return internalSocketPath(defaultSocketPath(defaultBaseDir(env, uid), env));
}
