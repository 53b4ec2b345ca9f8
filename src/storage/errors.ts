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
/** The domain must be halted for this. */
export class QubesVMNotHaltedError extends QubesException {}
/** The domain must be running for this. */
export class QubesVMNotStartedError extends QubesException {}
/** The domain is used by another (as template, default...). */
export class QubesVMInUseError extends QubesException {}
/** Generic domain error. */
export class QubesVMError extends QubesException {}
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

/** Turns a Node error with `code` into a StoragePoolException naming the place. */
export function storageError(what: string, err: unknown): QubesException {
  if (err instanceof QubesException) return err;
  const e = err as NodeJS.ErrnoException;
  const reason =
    e?.code === 'ENOSPC' || e?.code === 'EDQUOT'
      ? 'not enough space left'
      : e?.code === 'EROFS'
        ? 'read-only filesystem'
        : e?.code
          ? `${e.code}: ${e.message}`
          : String(err);
  return new StoragePoolException(`${what}: ${reason}`, { cause: err });
}
