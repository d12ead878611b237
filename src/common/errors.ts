// Error classes shared by every layer. Each error has a stable `code` (the
// API returns it verbatim), an HTTP status for the API to map it to, and a
// `details` object with the context an operator needs to act on it.

export type ErrorDetails = Record<string, unknown>;

export class OffshootError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: ErrorDetails;

  constructor(code: string, message: string, details: ErrorDetails = {}, status = 500, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.details = details;
  }

  toJSON(): { code: string; message: string; details: ErrorDetails } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

/** Input that fails validation (bad spec, bad name, unknown field). HTTP 400. */
export class InvalidInputError extends OffshootError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('INVALID_INPUT', message, details, 400);
  }
}

/** A named object that does not exist. HTTP 404. */
export class NotFoundError extends OffshootError {
  constructor(kind: string, ref: string) {
    super('NOT_FOUND', `${kind} "${ref}" not found`, { kind, ref }, 404);
  }
}

/** A name already taken. HTTP 409. */
export class AlreadyExistsError extends OffshootError {
  constructor(kind: string, name: string) {
    super('ALREADY_EXISTS', `${kind} "${name}" already exists`, { kind, name }, 409);
  }
}

/** An operation asked of an object in a state that does not allow it. HTTP 409. */
export class IllegalStateError extends OffshootError {
  readonly state: string;
  readonly required: readonly string[];
  constructor(what: string, state: string, required: readonly string[], operation: string) {
    super(
      'ILLEGAL_STATE',
      `cannot ${operation} ${what}: it is ${state}, and ${operation} needs ${required.join(' or ')}`,
      { target: what, state, required, operation },
      409,
    );
    this.state = state;
    this.required = required;
  }
}

/** Authentication missing or wrong. HTTP 401. */
export class UnauthorizedError extends OffshootError {
  constructor(message = 'missing or invalid bearer token') {
    super('UNAUTHORIZED', message, {}, 401);
  }
}

/** An operation did not finish in its time limit. HTTP 504. */
export class TimeoutError extends OffshootError {
  constructor(operation: string, ms: number, details: ErrorDetails = {}) {
    super('TIMEOUT', `${operation} did not finish within ${ms} ms`, { operation, ms, ...details }, 504);
  }
}

/** A file system (a datastore, the home, the memory folder) is full. HTTP 507. */
export class NoSpaceError extends OffshootError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super('NO_SPACE', `no space left: ${message}`, details, 507, { cause });
  }
}

/** A VM's QEMU ended while an operation needed it. HTTP 502 (QEMU is the upstream that failed). */
export class VmCrashedError extends OffshootError {
  constructor(vmId: string, what: string, reason: string) {
    super('VM_CRASHED', `the QEMU of VM ${vmId} ended during ${what}: ${reason}`, { vmId, what, reason }, 502);
  }
}

const NO_SPACE_TEXT = /No space left on device|ENOSPC|SQLITE_FULL|database or disk is full|Disk quota exceeded|EDQUOT/;

/** Whether an error (or anything in its cause chain) says a file system is full. */
export function isNoSpace(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL' || code === 'NO_SPACE') return true;
    if (e instanceof Error && NO_SPACE_TEXT.test(e.message)) return true;
    const stderr = (e as { stderr?: unknown }).stderr;
    if (typeof stderr === 'string' && NO_SPACE_TEXT.test(stderr)) return true;
  }
  return false;
}

/**
 * Turns anything thrown into an OffshootError: a full file system becomes NO_SPACE (whatever layer saw
 * it first), other unknown errors INTERNAL.
 */
export function toOffshootError(err: unknown): OffshootError {
  if (err instanceof OffshootError && (err.code === 'NO_SPACE' || err.status < 500 || !isNoSpace(err))) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (isNoSpace(err)) return new NoSpaceError(message, err instanceof OffshootError ? { code: err.code, ...err.details } : {}, err);
  return new OffshootError('INTERNAL', message, {}, 500, { cause: err });
}
