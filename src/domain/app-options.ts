/**
 * How a QubesApp is opened: its state file, where a new state may be made,
 * backups, the pool factory and runner, storage.conf, and the seams tests use.
 */
import type { StorageConfContext } from '../registry/storage-conf.js';
import type { PoolFactory } from './pool-factory.js';
import type { DomainRunner } from './runner.js';

export interface QubesAppOptions {
  /**
   * The state file (qubes.xml). Made if missing only where no state was
   * before: its directory (which must exist) holds nothing but what a fresh
   * start makes (state-dir.ts), or `init` is set. Otherwise, and when it
   * cannot be read, open() refuses with a StateFileError saying how to
   * restore it.
   */
  readonly stateFile: string;
  /**
   * Make a new state when the state file is missing even though its
   * directory holds traces of an earlier one (qubesd --init). An existing
   * state file is opened as usual, never replaced; a journal with records
   * and no state file is refused all the same.
   */
  readonly init?: boolean;
  /**
   * Configuration files that may lie beside the state file before its first
   * start without counting as traces of an earlier state (the policy
   * file); the storage.conf given below always is one.
   */
  readonly configFiles?: readonly string[];
  /** Backups of the state file to keep in `backup/` beside it (default DEFAULT_STATE_BACKUPS; 0: none). */
  readonly backups?: number;
  /** Gets each line for the user (a backup that could not be taken). */
  readonly notice?: (line: string) => void;
  /** Makes pools from driver names: the driver registry, or driversPoolFactory([...]). */
  readonly pools: PoolFactory;
  /** Starts and stops domains (default: does nothing). */
  readonly runner?: DomainRunner;
  /** Sizes of new root and private volumes (default 10 GiB and 2 GiB). */
  readonly sizes?: { readonly root?: number; readonly private?: number };
  /** Largest state file accepted (default 64 MiB). */
  readonly maxStateBytes?: number;
  /** Writes the state file (default writeFileAtomic); a seam for tests that make saving fail. */
  readonly writeFile?: (file: string, data: string) => Promise<void>;
  /**
   * From which size of the state file saves go to a journal instead of
   * rewriting the file (default JOURNAL_FROM_BYTES, or the environment's
   * QUBES_STORAGE_JOURNAL_FROM; 0: always, as the journal tests do).
   */
  readonly journalFromBytes?: number;
  /**
   * Pools defined in an R3.2 storage.conf, loaded beside the state file's.
   * They stay in storage.conf (removing one rewrites that file); pools added
   * later go to the state file. A name in both is an error at open.
   */
  readonly storageConf?: { readonly file: string; readonly context: StorageConfContext };
  /**
   * The base directory of the runtime (run state, the default pool's home):
   * as for the state file's directory, no pool may hold it, and only a pool
   * confined to its class folders may be at it (storage/places.ts).
   */
  readonly baseDir?: string;
  /**
   * Names in the base directory that are the runtime's (its socket, the
   * run state): no pool may be at, in or around them. The state file's own
   * (it, its journal, lock and backup/) are kept in any case.
   */
  readonly baseKeeps?: readonly string[];
}
