/**
 * A callback pool: another pool (the backend, made through the registry from
 * the configuration's driver and options) with user commands run before and
 * after its events. A failing pre_ command aborts the event with its stderr
 * in the error, before anything is done; a failing post_ command is reported
 * as an error although the event itself was done.
 */
import type { DriverCapabilities } from '../../storage/driver.js';
import { QubesValueError, StoragePoolException } from '../../storage/errors.js';
import type { OptionValue, PoolOptions } from '../../storage/options.js';
import type { PoolPlace } from '../../storage/places.js';
import { Pool, type UsageDetails } from '../../storage/pool.js';
import type { DomainRef, Volume, VolumeSpec } from '../../storage/volume.js';
import { hookEnv, runHook } from './hooks.js';
import { readCallbackConf, type CallbackConf, type CallbackEvent, type HookName } from './options.js';
import { CallbackVolume } from './volume.js';

/** How a callback pool gets its backend: the registry, synchronously. */
export interface BackendPoolFactory {
  createPoolSync(driverName: string, poolName: string, rawOptions: Record<string, OptionValue>): Pool;
}

/** Facts passed to a command, besides QS_EVENT and the pool's. */
export type HookFacts = Record<string, string>;

const COMMON = new Set(['revisions_to_keep', 'ephemeral_volatile']);

export class CallbackPool extends Pool {
  readonly conf: CallbackConf;
  readonly backend: Pool;

  constructor(name: string, options: PoolOptions, backends: BackendPoolFactory) {
    super(name, 'callback', options);
    this.conf = readCallbackConf(String(options['conf_path']), String(options['conf_id']), name);
    // Values set on the callback pool itself win over the configuration's.
    const backendOptions: Record<string, OptionValue> = { ...this.conf.backendOptions };
    for (const k of COMMON) if (options[k] !== undefined) backendOptions[k] = options[k]!;
    try {
      this.backend = backends.createPoolSync(this.conf.backendDriver, name, backendOptions);
    } catch (e) {
      const msg = (e as Error).message;
      throw new StoragePoolException(
        `pool ${name}: backend ${this.conf.backendDriver} of callback configuration '${this.conf.id}' (${this.conf.file}): ${msg}`,
        { cause: e },
      );
    }
  }

  /** The backend's declaration: what the backend serves is what this pool serves. */
  override get capabilities(): DriverCapabilities {
    return this.backend.capabilities;
  }
  override get declaredBy(): string {
    return this.backend.declaredBy;
  }

  override get revisions_to_keep(): number {
    return this.backend.revisions_to_keep;
  }
  override get ephemeral_volatile(): boolean {
    return this.backend.ephemeral_volatile;
  }

  override config(): Record<string, OptionValue> {
    return {
      name: this.name,
      driver: this.driver,
      conf_id: this.conf.id,
      conf_path: this.conf.file,
      revisions_to_keep: this.backend.revisions_to_keep,
      ephemeral_volatile: this.backend.ephemeral_volatile,
    };
  }

  override setOption(key: string, value: OptionValue): void {
    if (COMMON.has(key)) this.backend.setOption(key, value);
    super.setOption(key, value);
  }

  // ---- hooks ---------------------------------------------------------------

  /** The pool's facts for every command. */
  private poolFacts(): HookFacts {
    return {
      QS_POOL: this.name,
      QS_DRIVER: this.backend.driver,
      QS_CONF_ID: this.conf.id,
      QS_BACKEND_OPTIONS: JSON.stringify(this.backend.config()),
    };
  }

  /** Runs the command for `hook`, if any; a failure throws naming `where` and the hook. */
  async runHook(hook: HookName, where: string, facts: HookFacts, afterDone: boolean): Promise<void> {
    const own = this.conf.hooks[hook];
    const cmd = own === undefined ? this.conf.defaultHook : own;
    if (!cmd) return;
    const env = hookEnv(this.conf.env, { ...this.poolFacts(), ...facts, QS_EVENT: hook });
    const out = await runHook(cmd, env);
    if (out.ok) return;
    const event = hook.replace(/^(pre|post)_/, '');
    const lead = afterDone
      ? `${where}: ${event} was done, but the ${hook} command failed`
      : `${where}: ${event} aborted: the ${hook} command failed`;
    throw new StoragePoolException(`${lead} (${out.reason})${out.stderr ? `: ${out.stderr}` : ''}`);
  }

  /** pre_ command, the operation, post_ command. */
  async around<T>(event: CallbackEvent, where: string, facts: HookFacts, op: () => Promise<T>): Promise<T> {
    await this.runHook(`pre_${event}`, where, facts, false);
    const result = await op();
    await this.runHook(`post_${event}`, where, facts, true);
    return result;
  }

  // ---- the pool contract -------------------------------------------------

  override sweepLeftovers(): Promise<void> {
    return this.backend.sweepLeftovers();
  }

  override close(): Promise<void> {
    return this.backend.close();
  }

  async setup(): Promise<void> {
    await this.around('setup', `pool ${this.name}`, {}, () => this.backend.setup());
  }

  /** The backend's: the commands change nothing about where the data lives. */
  override places(): Promise<PoolPlace[]> {
    return this.backend.places();
  }

  override undoSetup(): Promise<void> {
    return this.backend.undoSetup();
  }

  async destroy(): Promise<void> {
    await this.around('destroy', `pool ${this.name}`, {}, () => this.backend.destroy());
  }

  initVolume(domain: DomainRef | null, spec: VolumeSpec): CallbackVolume {
    let source: CallbackVolume | null = null;
    if (spec.source) {
      if (!(spec.source instanceof CallbackVolume) || spec.source.pool !== this)
        throw new QubesValueError(`pool ${this.name}: source ${spec.source.vid} is not a volume of this pool`);
      source = spec.source;
    }
    const backendVolume = this.backend.initVolume(domain, { ...spec, source: source?.backend ?? null });
    return new CallbackVolume(this, domain, backendVolume, source);
  }

  listVolumes(): Promise<string[]> {
    return this.backend.listVolumes();
  }

  async getVolume(vid: string): Promise<CallbackVolume> {
    return this.wrap(await this.backend.getVolume(vid));
  }

  /** A callback volume around a backend volume (its source wrapped too). */
  wrap(v: Volume): CallbackVolume {
    return new CallbackVolume(this, v.domain, v, v.source ? this.wrap(v.source) : null);
  }

  size(): Promise<number | null> {
    return this.backend.size();
  }
  usage(): Promise<number | null> {
    return this.backend.usage();
  }
  override usageDetails(): Promise<UsageDetails> {
    return this.backend.usageDetails();
  }
}
