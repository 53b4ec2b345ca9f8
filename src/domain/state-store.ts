/**
 * Persistence of the App's state: the state document read from qubes.xml
 * (and its journal), the saves (CommitQueue: one at a time, grouped), each a
 * journal record or the whole file rewritten, the backups, and the sweep of
 * the temporaries a crash left. The model itself (domains, pools, labels,
 * global properties) is the App's; the store sees it through StateModel.
 */
import * as path from 'node:path';
import { sweepAtomicTemps, writeFileAtomic } from '../files/files.js';
import { declareFailpoint, failpoint } from '../files/failpoint.js';
import { QubesException, StoragePoolException } from '../storage/errors.js';
import type { Domain } from './domain.js';
import { CommitQueue, type Change } from './commit-queue.js';
import { earlierStateTraces } from './state-dir.js';
import { DEFAULT_STATE_BACKUPS, StateBackups } from './state-backups.js';
import { MAX_STATE_BYTES, readStateFile, StateDocument, StateFileError, type SaveScope, type StateModel } from './state-file.js';
import { encodeRecord, journalPathFor, readJournal, StateJournal } from './state-journal.js';

/** State files smaller than this are rewritten whole at each save; bigger ones get a journal (state-journal.ts). */
export const JOURNAL_FROM_BYTES = 1024 * 1024;

const FP = {
  compactAfterWrite: declareFailpoint('app.compact.after-write'),
};

export interface StateStoreOptions {
  readonly stateFile: string;
  /** Make a new state even where traces of an earlier one are (QubesAppOptions.init). */
  readonly init?: boolean;
  /** Files that are no trace of an earlier state (the policy file, storage.conf). */
  readonly configFiles: readonly string[];
  /** storage.conf, whose temporaries are swept with the state's. */
  readonly storageConfFile?: string;
  readonly backups?: number;
  readonly notice?: (line: string) => void;
  readonly maxStateBytes?: number;
  readonly writeFile?: (file: string, data: string) => Promise<void>;
  readonly journalFromBytes?: number;
}

/** What open() found: a new state (no state file), and whether a journal was there. */
export interface FoundState {
  readonly isNew: boolean;
  readonly journal: boolean;
  /** The state file's bytes as read (for the backup taken at open); null for a new state. */
  readonly bytes: Buffer | null;
}

/** What a module that changes the state needs of persistence. */
export interface StateSaves {
  /** Throws QubesException once the state is closed. */
  checkOpen(): void;
  /** Applies a change and saves it (CommitQueue); the change is undone if the save fails. */
  commit(apply: Change, scope: SaveScope | (() => SaveScope)): Promise<void>;
}

export class StateStore implements StateSaves {
  readonly stateFile: string;
  readonly journalFile: string;
  private readonly queue: CommitQueue<Domain>;
  private readonly writeFile: (file: string, data: string) => Promise<void>;
  private readonly backups: StateBackups;
  private readonly maxBytes: number;
  private readonly journalFrom: number;
  private readonly notice: ((line: string) => void) | undefined;
  /** The state file may differ from the newest backup (written since, or never backed up): close() takes one. */
  private backupStale = true;
  private _doc!: StateDocument;
  private closed = false;
  /** The journal, once a save used it (or one was found at open). */
  private journal: StateJournal | null = null;
  /** A journal file is on disk but not open (found at open, or dropped after an error): the next save must compact. */
  private journalOnDisk = false;
  /** Bytes of the state file as last written whole. */
  private baseBytes = 0;
  /** The next save looks at every domain and rewrites the whole file (after a failed save, or a replayed journal). */
  private needFull = false;
  /**
   * Domains whose storage ran outside a commit (start, stop: a volume may
   * have repaired a size a crash left stale): the next save looks at them too.
   */
  private readonly unsaved = new Set<Domain>();
  /** Tests set QUBES_STORAGE_CHECK_SAVES: every save limited to some domains is checked against a full one. */
  private readonly checkSaves = !!process.env['QUBES_STORAGE_CHECK_SAVES'];

  constructor(
    private readonly opts: StateStoreOptions,
    private readonly model: StateModel,
  ) {
    this.stateFile = opts.stateFile;
    // 0600 from creation on: the state names every domain and pool.
    this.writeFile = opts.writeFile ?? ((f, d) => writeFileAtomic(f, d, 0o600));
    this.notice = opts.notice;
    this.backups = new StateBackups(opts.stateFile, opts.backups ?? DEFAULT_STATE_BACKUPS);
    this.maxBytes = opts.maxStateBytes ?? MAX_STATE_BYTES;
    this.journalFile = journalPathFor(opts.stateFile);
    const fromEnv = process.env['QUBES_STORAGE_JOURNAL_FROM'];
    this.journalFrom = opts.journalFromBytes ?? (fromEnv !== undefined && /^[0-9]+$/.test(fromEnv) ? Number(fromEnv) : JOURNAL_FROM_BYTES);
    this.queue = new CommitQueue<Domain>({
      needsFull: () => this.needFull,
      checkOpen: () => this.checkOpen(),
      write: (scope) => this.saveBatch(scope),
    });
  }

  /** The document read (or made new), which saves write the model back into. */
  get doc(): StateDocument {
    return this._doc;
  }

  /** Names beside the state file that are the state's own (no pool may reach them). */
  ownNames(): string[] {
    const stateName = path.basename(this.stateFile);
    return [stateName, path.basename(this.journalFile), `${stateName}.lock`, 'backup'];
  }

  checkOpen(): void {
    if (this.closed) throw new QubesException(`the state of ${this.stateFile} is closed`);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- open ----------------------------------------------------------------------------

  /**
   * Removes what a crash left of earlier saves: temporaries of the state
   * file, of backups and of storage.conf, each written only under the state
   * lock, which the App holds.
   */
  async sweepTemps(): Promise<void> {
    await sweepAtomicTemps(this.stateFile);
    await this.backups.sweepTemps();
    if (this.opts.storageConfFile !== undefined) await sweepAtomicTemps(this.opts.storageConfFile);
  }

  /**
   * Reads the state file and replays its journal into the document; or,
   * where there is no state file and no state was before (or with `init`),
   * starts an empty document. A StateFileError otherwise.
   */
  async read(): Promise<FoundState> {
    const read = await readStateFile(this.stateFile, this.maxBytes);
    const journal = await readJournal(this.journalFile, this.maxBytes);
    if (read === null) {
      if (journal?.records.length)
        throw new StateFileError(`${this.journalFile}: a state journal without its state file ${this.stateFile}`);
      const traces = this.opts.init ? [] : await earlierStateTraces(this.stateFile, this.opts.configFiles);
      if (traces.length)
        throw new StateFileError(
          `${this.stateFile} is missing, but ${path.dirname(this.stateFile)} holds ${traces.join(', ')}: a state was there before, ` +
            `and a new one would forget every domain it had`,
        );
      this._doc = StateDocument.empty(this.stateFile);
      return { isNew: true, journal: journal !== null, bytes: null };
    }
    this.baseBytes = read.bytes.length;
    this._doc = StateDocument.parse(read.text, this.stateFile);
    // Changes saved after the last rewrite, the last record possibly torn by a crash.
    if (journal) this._doc.applyJournal(journal.records, this.journalFile);
    return { isNew: false, journal: journal !== null, bytes: read.bytes };
  }

  /** A state that cannot be read, refused: the problem, then how to get the state back. */
  async refusal(e: StateFileError): Promise<StateFileError> {
    return new StateFileError(`${e.message}. Not starting. ${await this.backups.restoreAdvice(this.maxBytes, this.journalFile)}`, { cause: e });
  }

  /**
   * After the model is loaded: folds a journal found in (or writes the new
   * state), then takes a backup of a state read from its file.
   */
  async settle(found: FoundState): Promise<void> {
    if (found.journal || found.isNew) {
      // Fold the journal in now (or write the new state): it starts empty.
      this.journalOnDisk = found.journal;
      this.needFull = true;
      await this.commit(() => () => undefined, 'all');
    }
    if (!found.isNew) {
      // The state file now holds everything loaded (no journal): the last good state. Unless a
      // journal was folded in (the file rewritten), it still holds the bytes read.
      const note = await this.backups.take(found.journal ? undefined : (found.bytes ?? undefined));
      if (note) this.notice?.(note);
      else this.backupStale = false;
    }
  }

  // ---- saves ---------------------------------------------------------------------------

  commit(apply: Change, scope: SaveScope | (() => SaveScope)): Promise<void> {
    return this.queue.commit(apply, scope);
  }

  /** The storage of `d` ran outside a commit (start, stop): the next save looks at it too. */
  storageRan(d: Domain): void {
    this.unsaved.add(d);
  }

  /** Saves the changes a batch of commits applied (CommitQueue's writer). */
  private async saveBatch(changed: SaveScope): Promise<void> {
    const unsaved = [...this.unsaved];
    const scope: SaveScope = changed === 'all' ? 'all' : new Set([...changed, ...unsaved]);
    try {
      let tries = 0;
      // A retry (after a backup made room) rewrites the whole file: the document already holds the changes.
      await this.withRoom(() => this.writeChanges(tries++ === 0 ? scope : 'all'));
      for (const d of unsaved) this.unsaved.delete(d);
    } catch (e) {
      // The document now holds changes the model no longer has (the queue undoes them): the next save looks at everything.
      this.needFull = true;
      throw e instanceof QubesException ? e : stateWriteError(this.stateFile, e);
    }
  }

  /**
   * Brings the document in line with the model and makes that durable: one
   * journal record when the state file is big and the journal has room,
   * else the whole file rewritten (which also empties the journal).
   */
  private async writeChanges(scope: SaveScope): Promise<void> {
    const full = this.needFull;
    const changes = this._doc.sync(this.model, scope);
    if (this.checkSaves && scope !== 'all') {
      const missed = this._doc.sync(this.model, 'all');
      if (missed.units.length || missed.unkeyed)
        throw new Error(`internal: a save limited to ${[...scope].map((d) => d.name).join(', ') || 'no domain'} missed changes: ${JSON.stringify(missed.units).slice(0, 300)}`);
    }
    if (!full && !changes.unkeyed && changes.units.length === 0) return; // nothing changed: nothing to write
    if (!full && !changes.unkeyed && this.journalFrom <= this.baseBytes) {
      const record = encodeRecord(changes.units);
      const room = Math.max(this.baseBytes, this.journalFrom) / 2 - (this.journal?.recordBytes ?? 0);
      if (record.length <= room) {
        try {
          // No journal open means the state file holds every earlier save (see writeFull).
          this.journal ??= await StateJournal.openEmpty(this.journalFile);
          await this.journal.append(record);
          this.backupStale = true;
          return;
        } catch (e) {
          await this.dropJournal();
          throw stateWriteError(this.journalFile, e);
        }
      }
    }
    await this.writeFull();
  }

  /** Rewrites the whole state file, then empties the journal (its changes are in the file now). */
  private async writeFull(): Promise<void> {
    const text = this._doc.serialize();
    try {
      await this.writeFile(this.stateFile, text);
    } catch (e) {
      throw stateWriteError(this.stateFile, e);
    }
    this.baseBytes = Buffer.byteLength(text);
    this.needFull = false;
    this.backupStale = true;
    if (!this.journal && !this.journalOnDisk) return;
    failpoint(FP.compactAfterWrite);
    try {
      if (this.journal) await this.journal.reset();
      else this.journal = await StateJournal.openEmpty(this.journalFile);
      this.journalOnDisk = false;
    } catch {
      // The file is saved; the journal's records are in it and replaying them changes nothing.
      // The next save tries again to empty it.
      await this.dropJournal();
    }
  }

  /**
   * Runs a write; while it fails for lack of space or quota and a backup of
   * the state is left, removes the oldest backup and runs it again: a backup
   * must never cost a save that would fit without it. `write` must be
   * repeatable (a retry after a failed save rewrites the whole file).
   */
  private async withRoom(write: () => Promise<void>): Promise<void> {
    for (;;) {
      try {
        return await write();
      } catch (e) {
        if (!outOfRoom(e) || !(await this.backups.dropOldest().catch(() => false))) throw e;
        this.needFull = true;
        this.notice?.(`note: removed the oldest backup of ${this.stateFile} to make room for a save`);
      }
    }
  }

  /** After a journal error: close it; the next save rewrites the state file and starts it afresh. */
  private async dropJournal(): Promise<void> {
    await this.journal?.close(false).catch(() => undefined);
    this.journal = null;
    this.journalOnDisk = true;
    this.needFull = true;
  }

  // ---- close ---------------------------------------------------------------------------

  /**
   * Refuses changes from now on, folds a journal in and deletes it (a
   * stopped App leaves a complete state file and no journal, as Qubes leaves
   * qubes.xml), and keeps a backup of the state as it is left.
   */
  async close(): Promise<void> {
    try {
      await this.queue.exclusive(async () => {
        if (this.closed) return;
        this.closed = true;
        if (this.journal || this.journalOnDisk) {
          if (this.journalOnDisk || this.needFull || this.journal!.recordBytes > 0) {
            this._doc.sync(this.model, 'all');
            await this.withRoom(() => this.writeFull());
          }
          await this.journal?.close(true);
          this.journal = null;
        }
        // The state as this App leaves it, complete: a backup (if it is not the newest already).
        if (this.backupStale) {
          const note = await this.backups.take();
          if (note) this.notice?.(note);
        }
      });
    } finally {
      await this.journal?.close(false).catch(() => undefined);
    }
  }
}

/** The errno code of an error or of its cause (the state errors wrap the system's). */
function errnoOf(e: unknown): string | undefined {
  for (let x = e as { code?: unknown; cause?: unknown } | undefined, i = 0; x && i < 4; x = x.cause as typeof x, i++)
    if (typeof x.code === 'string') return x.code;
  return undefined;
}

function outOfRoom(e: unknown): boolean {
  const code = errnoOf(e);
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * A failed write of the state (`file`: the state file or its journal) as the
 * Qubes-named error the caller gets: what failed, where, and what ran out.
 */
export function stateWriteError(file: string, e: unknown): QubesException {
  if (e instanceof QubesException) return e;
  const dir = path.dirname(file);
  const code = errnoOf(e);
  const why =
    code === 'ENOSPC'
      ? `no space left on the filesystem of ${dir} (ENOSPC)`
      : code === 'EDQUOT'
        ? `the disk quota for ${dir} is used up (EDQUOT)`
        : code === 'EIO'
          ? `an I/O error on the device of ${dir} (EIO): the disk may be failing`
          : code === 'EROFS'
            ? `the filesystem of ${dir} is read-only (EROFS)`
            : (e as Error)?.message ?? String(e);
  return new StoragePoolException(`cannot save the state to ${file}: ${why}`, { cause: e });
}
