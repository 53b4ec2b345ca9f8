/**
 * The one seam where a hypervisor comes in (src/runtime/ has the runtimes).
 * The App prepares a domain's storage, then asks the runner to start the
 * domain with the block devices of its volumes; on shutdown it asks the
 * runner to stop the domain, then stops (commits or discards) the storage.
 * The default runner does nothing: domains are "Running" as far as storage
 * is concerned, which is what the storage layer and its tests need.
 *
 * A runner whose domains can stop on their own (a guest that powers off, a
 * qemu that dies) reports it through `watch`: the App then stops the
 * domain's storage as a shutdown does (DomainLifecycle.exited).
 */
import type { BlockDevice } from '../storage/volume.js';

export interface RunnerDomain {
  readonly name: string;
  readonly klass: string;
  readonly uuid: string;
  readonly qid: number;
  /** A property's value (memory, vcpus, kernelopts, shutdown_timeout: what a hypervisor needs). */
  prop(name: string): unknown;
}

export interface DomainRunner {
  /**
   * Starts the domain with these disks (volume name -> device, in the
   * domain's volume order). Throwing aborts the start (storage is stopped again).
   */
  start(domain: RunnerDomain, disks: ReadonlyMap<string, BlockDevice>): Promise<void>;
  /** Asks the domain to shut down and resolves when it is off. */
  shutdown(domain: RunnerDomain): Promise<void>;
  /** Stops the domain at once. */
  kill(domain: RunnerDomain): Promise<void>;
  /**
   * Called once by the App at open: `exited(name)` is to be called when a
   * domain the runner started stops by itself. The App then asks `isRunning`
   * under the domain's hold (a shutdown or a new start may have come first),
   * and resolves once the domain's storage is stopped (or nothing was to be done).
   */
  watch?(exited: (name: string) => Promise<void>): void;
  /** Whether the runner still runs this domain (asked only of runners with `watch`). */
  isRunning?(domain: RunnerDomain): boolean;
  /**
   * Called under the domain's hold once its storage is stopped after the
   * runner's domain ended (shutdown, kill, or by itself): a runner that
   * records runs on disk drops the record now, not before, so that a crash
   * in between leaves the record for the next process to finish the stop.
   */
  stopped?(domain: RunnerDomain): Promise<void>;
}

export const noopRunner: DomainRunner = {
  async start() {},
  async shutdown() {},
  async kill() {},
};
