/**
 * Options of the callback driver, and its configuration file: a JSON object
 * of configurations by id, each naming a backend driver with its options and
 * the commands to run around pool and volume events (format in README.md).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { QubesValueError, StoragePoolException } from '../../storage/errors.js';
import type { OptionSpec, OptionValue } from '../../storage/options.js';

/** Where the configuration lives unless the pool says otherwise (as in Qubes). */
export const DEFAULT_CALLBACK_CONF = '/etc/qubes_callback.json';
/** Largest configuration file read. */
export const MAX_CALLBACK_CONF_BYTES = 1 << 20;
/** Default time a command may run. */
export const DEFAULT_HOOK_TIMEOUT_MS = 60_000;
/** Longest time a command may be given. */
export const MAX_HOOK_TIMEOUT_MS = 3_600_000;

export const CALLBACK_OPTIONS: readonly OptionSpec[] = [
  { name: 'conf_id', type: 'string', required: true, help: "this pool's entry in the callback configuration file" },
  { name: 'conf_path', type: 'path', default: DEFAULT_CALLBACK_CONF, help: 'the callback configuration file (JSON)' },
  {
    name: 'revisions_to_keep',
    type: 'int',
    min: -1,
    mutable: true,
    help: "revisions kept per volume by default (unset: the backend pool's value)",
  },
  {
    name: 'ephemeral_volatile',
    type: 'bool',
    mutable: true,
    help: "volatile volumes get a throw-away encryption key by default (unset: the backend pool's value)",
  },
];

/** Pool events, then volume events; each has a pre_ and a post_ hook. */
export const POOL_EVENTS = ['setup', 'destroy'] as const;
export const VOLUME_EVENTS = [
  'volume_create',
  'volume_remove',
  'volume_start',
  'volume_stop',
  'volume_resize',
  'volume_revert',
  'volume_import',
] as const;
export type CallbackEvent = (typeof POOL_EVENTS)[number] | (typeof VOLUME_EVENTS)[number];
export type HookName = `pre_${CallbackEvent}` | `post_${CallbackEvent}`;

export const HOOK_NAMES: readonly HookName[] = [...POOL_EVENTS, ...VOLUME_EVENTS].flatMap(
  (e) => [`pre_${e}`, `post_${e}`] as HookName[],
);

/** One command: an argv run directly, or (only with `shell`) a string for /bin/sh -c. */
export type HookCommand =
  | { readonly argv: readonly string[]; readonly timeoutMs: number }
  | { readonly shell: string; readonly timeoutMs: number };

/** One configuration of the file, checked. */
export interface CallbackConf {
  readonly id: string;
  readonly file: string;
  readonly backendDriver: string;
  readonly backendOptions: Readonly<Record<string, OptionValue>>;
  /** Commands by hook; null = explicitly nothing (not even the default). */
  readonly hooks: Readonly<Partial<Record<HookName, HookCommand | null>>>;
  /** Run for every hook that has no entry of its own. */
  readonly defaultHook: HookCommand | null;
  readonly env: Readonly<Record<string, string>>;
}

const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const MAX_ARGS = 256;
const MAX_ARG_BYTES = 64 * 1024;

/**
 * Reads the configuration `confId` from `file`. Synchronous on purpose: a
 * driver's createPool is synchronous and this runs once per pool, when the
 * pool is made (daemon start, pool add), never on a volume's path.
 */
export function readCallbackConf(file: string, confId: string, pool: string): CallbackConf {
  const where = `pool ${pool}: callback configuration ${file}`;
  let text: string;
  try {
    text = readSmallFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new StoragePoolException(`${where}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`, { cause: e });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new StoragePoolException(`${where}: not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(doc)) throw new StoragePoolException(`${where}: expected a JSON object of configurations by id`);
  if (!Object.prototype.hasOwnProperty.call(doc, confId))
    throw new StoragePoolException(`${where}: no configuration '${confId}' (present: ${Object.keys(doc).slice(0, 20).join(', ') || 'none'})`);
  return checkConf(doc[confId], confId, file, `${where}, '${confId}'`);
}

function checkConf(raw: unknown, id: string, file: string, where: string): CallbackConf {
  const bad = (what: string): never => {
    throw new StoragePoolException(`${where}: ${what}`);
  };
  if (!isObject(raw)) bad('expected an object');
  const c = raw as Record<string, unknown>;
  const known = new Set(['backend', 'hooks', 'default_hook', 'shell', 'timeout_ms', 'env', 'description']);
  for (const k of Object.keys(c)) if (!known.has(k)) bad(`unknown key '${k}' (known: ${[...known].join(', ')})`);

  const shell = c['shell'] ?? false;
  if (typeof shell !== 'boolean') bad(`'shell' must be true or false`);
  const timeoutMs = checkTimeout(c['timeout_ms'] ?? DEFAULT_HOOK_TIMEOUT_MS, 'timeout_ms', bad);

  const backend = c['backend'];
  if (!isObject(backend)) bad(`'backend' must be { "driver": NAME, "options": { ... } }`);
  const b = backend as Record<string, unknown>;
  for (const k of Object.keys(b)) if (k !== 'driver' && k !== 'options') bad(`backend: unknown key '${k}'`);
  if (typeof b['driver'] !== 'string' || b['driver'] === '') bad(`backend.driver must be a driver name`);
  if (b['driver'] === 'callback') bad(`backend.driver cannot be 'callback' (a callback pool cannot wrap another)`);
  const opts = b['options'] ?? {};
  if (!isObject(opts)) bad(`backend.options must be an object`);
  const backendOptions: Record<string, OptionValue> = {};
  for (const [k, v] of Object.entries(opts as Record<string, unknown>)) {
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean')
      bad(`backend.options.${k} must be a string, number or boolean`);
    backendOptions[k] = v as OptionValue;
  }

  const hooks: Partial<Record<HookName, HookCommand | null>> = {};
  const rawHooks = c['hooks'] ?? {};
  if (!isObject(rawHooks)) bad(`'hooks' must be an object of hook name to command`);
  for (const [k, v] of Object.entries(rawHooks as Record<string, unknown>)) {
    if (!(HOOK_NAMES as readonly string[]).includes(k)) bad(`unknown hook '${k}' (known: ${HOOK_NAMES.join(', ')})`);
    hooks[k as HookName] = v === null ? null : checkCommand(v, `hooks.${k}`, shell as boolean, timeoutMs, bad);
  }
  const defaultHook =
    c['default_hook'] === undefined || c['default_hook'] === null
      ? null
      : checkCommand(c['default_hook'], 'default_hook', shell as boolean, timeoutMs, bad);

  const env: Record<string, string> = {};
  const rawEnv = c['env'] ?? {};
  if (!isObject(rawEnv)) bad(`'env' must be an object of variable name to string`);
  for (const [k, v] of Object.entries(rawEnv as Record<string, unknown>)) {
    if (!ENV_NAME_RE.test(k)) bad(`env: '${k}' is not a variable name`);
    if (k.startsWith('QS_')) bad(`env: '${k}': QS_ variables are set by the driver`);
    if (typeof v !== 'string' || v.includes('\0')) bad(`env.${k} must be a string without NUL`);
    env[k] = v as string;
  }
  return { id, file, backendDriver: b['driver'] as string, backendOptions, hooks, defaultHook, env };
}

function checkCommand(
  v: unknown,
  what: string,
  shell: boolean,
  defaultTimeout: number,
  bad: (w: string) => never,
): HookCommand {
  let timeoutMs = defaultTimeout;
  let cmd: unknown = v;
  if (isObject(v)) {
    for (const k of Object.keys(v)) if (k !== 'argv' && k !== 'command' && k !== 'timeout_ms') bad(`${what}: unknown key '${k}'`);
    if (v['timeout_ms'] !== undefined) timeoutMs = checkTimeout(v['timeout_ms'], `${what}.timeout_ms`, bad);
    if ((v['argv'] === undefined) === (v['command'] === undefined)) bad(`${what}: give exactly one of 'argv' and 'command'`);
    cmd = v['argv'] ?? v['command'];
    if (v['command'] !== undefined && typeof cmd !== 'string') bad(`${what}.command must be a string`);
    if (v['argv'] !== undefined && !Array.isArray(cmd)) bad(`${what}.argv must be an array of strings`);
  }
  if (typeof cmd === 'string') {
    if (!shell)
      bad(`${what}: a command string needs "shell": true; without it give an argv array such as ["/usr/bin/prog", "arg"]`);
    if (cmd === '' || cmd.includes('\0') || Buffer.byteLength(cmd) > MAX_ARG_BYTES) bad(`${what}: empty, too long or has a NUL byte`);
    return { shell: cmd, timeoutMs };
  }
  if (!Array.isArray(cmd) || cmd.length === 0 || cmd.length > MAX_ARGS)
    bad(`${what}: expected a non-empty argv array of strings (at most ${MAX_ARGS})`);
  const argv = cmd as unknown[];
  for (const a of argv)
    if (typeof a !== 'string' || a.includes('\0') || Buffer.byteLength(a) > MAX_ARG_BYTES)
      bad(`${what}: every argument must be a string without NUL (at most ${MAX_ARG_BYTES} bytes)`);
  if (argv[0] === '') bad(`${what}: the program (argv[0]) is empty`);
  return { argv: argv as string[], timeoutMs };
}

function checkTimeout(v: unknown, what: string, bad: (w: string) => never): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > MAX_HOOK_TIMEOUT_MS)
    bad(`${what} must be a whole number of milliseconds from 1 to ${MAX_HOOK_TIMEOUT_MS}`);
  return v as number;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readSmallFileSync(file: string): string {
  const fd = openSync(file, 'r');
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new QubesValueError('not a regular file');
    if (st.size > MAX_CALLBACK_CONF_BYTES) throw new QubesValueError(`larger than ${MAX_CALLBACK_CONF_BYTES} bytes`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
