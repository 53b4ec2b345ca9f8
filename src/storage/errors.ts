/**
 * Errors as values users can catch, named exactly as Qubes names them: the
 * admin API sends `qubesName` on the wire and Qubes clients map it back to
 * their own classes, so these names are part of the protocol.
 */

export class QubesException extends Error {
  /** The class name sent over the admin API. */
  get qubesName(): string {
    return this.constructor.name;
  }
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = this.constructor.name;
  }
}

/** A value given by a user or a caller is not acceptable; nothing changed. */
export class QubesValueError extends QubesException {}
/** Something went wrong inside a storage pool or volume. */
export class StoragePoolException extends QubesException {}
/** A pool is still used (by volumes) or its name is taken. */
export class QubesPoolInUseError extends QubesException {}
/** No such revision of a volume. */
export class QubesVolumeRevisionNotFoundError extends QubesException {}
/** No such domain. */
export class QubesVMNotFoundError extends QubesException {}
/** A `uuid:` destination that is not a well-formed UUID (Qubes: not a QubesVMNotFoundError). */
export class QubesVMInvalidUUIDError extends QubesException {}
/** A domain of that name exists already (create, clone). */
export class QubesVMAlreadyExistsError extends QubesException {}
/** Generic domain error; the parent of the domain state errors below, as in Qubes. */
export class QubesVMError extends QubesException {}
/** The domain must be halted for this. */
export class QubesVMNotHaltedError extends QubesVMError {}
/** The domain must be running for this. */
export class QubesVMNotStartedError extends QubesVMError {}
/** The domain is used by another (as template, default...), or busy. */
export class QubesVMInUseError extends QubesVMError {}
/** No such property. */
export class QubesNoSuchPropertyError extends QubesException {}
/** A property value is not acceptable. */
export class QubesPropertyValueError extends QubesValueError {}
/** No such label. */
export class QubesLabelNotFoundError extends QubesException {}
/** No such feature. */
export class QubesFeatureNotFoundError extends QubesException {}
/** No such tag. */
export class QubesTagNotFoundError extends QubesException {}
/** The operation exists in the contract but this driver does not do it. */
export class QubesNotImplementedError extends QubesException {}
/** The caller may not do this (also: an argument the method does not take). */
export class PermissionDenied extends QubesException {}
/** The request is malformed. */
export class ProtocolError extends QubesException {}
/** A CloneTo token that names no pending clone: unknown, used or expired (a ProtocolError, as in Qubes). */
export class QubesVolumeCopyTokenNotFoundError extends ProtocolError {}

/** An error's message on one line, control characters escaped, at most 400 characters (untrusted text). */
export function oneLineReason(e: unknown): string {
  const s = e instanceof Error ? e.message : String(e);
  const line = s.length > 400 ? s.slice(0, 400) + '...' : s;
  return line.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/**
 * The one mapping of operating-system errors to Qubes-named storage errors,
 * for every write path (drivers, imports, clones, exports): ENOSPC, EDQUOT,
 * EIO and EROFS are said in words, with the code and the file where known;
 * other OS errors keep their code and message. `what` names the place and
 * the action ("volume VID of pool POOL: import failed", "pool POOL: setup
 * failed"); `file` is named when the error carries no path of its own
 * (writes through a file handle). Other Qubes errors pass unchanged.
 */
export function storageError(what: string, err: unknown, file?: string): QubesException {
  const mapped = storageErrnoError(what, err, file);
  if (mapped) return mapped;
  if (err instanceof QubesException) return err;
  const e = err as NodeJS.ErrnoException;
  return new StoragePoolException(`${what}: ${e?.code ? `${e.code}: ${e.message}` : String(err)}`, { cause: err });
}

/**
 * The StoragePoolException for an error that says the storage ran out of
 * space or quota, failed (EIO) or is read-only; null for any other error.
 * The code comes from `code` (Node) or from a positive `errno` (a command's
 * exit status, as rbd reports it; its message, naming the call, follows).
 */
export function storageErrnoError(what: string, err: unknown, file?: string): StoragePoolException | null {
  const e = err as { code?: unknown; errno?: unknown; path?: unknown; dest?: unknown; message?: unknown } | null;
  const fromCommand = typeof e?.code !== 'string' && typeof e?.errno === 'number' && e.errno > 0;
  const code = typeof e?.code === 'string' ? e.code : fromCommand ? ERRNO_NAMES[e!.errno as number] : undefined;
  if (code === undefined || !Object.hasOwn(REASONS, code)) return null;
  // A copy, link or rename names its destination too: where the new data or entry needed room.
  const where = typeof e?.dest === 'string' && e.dest ? e.dest : typeof e?.path === 'string' && e.path ? e.path : file;
  let reason = REASONS[code]!(where);
  if (fromCommand && typeof e?.message === 'string') reason += `: ${e.message}`;
  return new StoragePoolException(`${what}: ${reason}`, { cause: err });
}

/** What each storage errno means to a user, given the file (if known). */
const REASONS: Readonly<Record<string, (file: string | undefined) => string>> = {
  ENOSPC: (f) => `not enough space left (ENOSPC${f ? ` at ${f}` : ''})`,
  EDQUOT: (f) => `disk quota exceeded (EDQUOT${f ? ` at ${f}` : ''})`,
  EIO: (f) => `I/O error on ${f ?? 'the storage'} (EIO)`,
  EROFS: (f) => `the filesystem is read-only (EROFS${f ? ` at ${f}` : ''})`,
};

/** The codes above by number (Linux), for errors that carry only the number. */
const ERRNO_NAMES: Readonly<Record<number, string>> = { 5: 'EIO', 28: 'ENOSPC', 30: 'EROFS', 122: 'EDQUOT' };
