/**
 * The one seam where a hypervisor comes in. The App prepares a domain's
 * storage, then asks the runner to start the domain with the block devices
 * of its volumes; on shutdown it asks the runner to stop the domain, then
 * stops (commits or discards) the storage. The default runner does nothing:
 * domains are "Running" as far as storage is concerned, which is what the
 * storage layer and its tests need.
 */
import type { BlockDevice } from '../storage/volume.js';

export interface RunnerDomain {
  readonly name: string;
  readonly klass: string;
  readonly uuid: string;
  readonly qid: number;
}

export interface DomainRunner {
  /** Starts the domain with these disks (volume name -> device). Throwing aborts the start (storage is stopped again). */
  start(domain: RunnerDomain, disks: ReadonlyMap<string, BlockDevice>): Promise<void>;
  /** Asks the domain to shut down and resolves when it is off. */
  shutdown(domain: RunnerDomain): Promise<void>;
  /** Stops the domain at once. */
  kill(domain: RunnerDomain): Promise<void>;
}

export const noopRunner: DomainRunner = {
  async start() {},
  async shutdown() {},
  async kill() {},
};
