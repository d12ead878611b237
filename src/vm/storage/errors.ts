// Errors of the storage operations, each with a stable code and the context
// an operator needs (who uses a disk, which job holds a pool, ...).
import { OffshootError } from '../../common/index.ts';

export class DiskInUseError extends OffshootError {
  constructor(disk: string, users: string[]) {
    super('DISK_IN_USE', `disk ${disk} is in use by ${users.join(', ')}; remove those first`, { disk, users }, 409);
  }
}

export class DatastoreInUseError extends OffshootError {
  constructor(name: string, users: string[]) {
    super('DATASTORE_IN_USE', `datastore ${name} still holds ${users.join(', ')}; delete or move them first`, { datastore: name, users }, 409);
  }
}

export class CloneSourceError extends OffshootError {
  constructor(vm: string, reason: string) {
    super('CLONE_SOURCE_UNSUPPORTED', `cannot clone VM ${vm}: ${reason}`, { vm, reason }, 409);
  }
}

export class CopyJobStateError extends OffshootError {
  constructor(jobId: string, state: string, operation: string) {
    super('ILLEGAL_STATE', `cannot ${operation} copy job ${jobId}: it is ${state}`, { jobId, state, operation }, 409);
  }
}

/** A copy job's file without a disk record where one is required (a copy made for another purpose, e.g. a placement). */
export class CopyNotADiskError extends OffshootError {
  constructor(target: string, purpose?: string) {
    super('COPY_NOT_A_DISK', `the copy of ${target} is not a datastore disk${purpose ? ` (a ${purpose} copy)` : ''}`, { target, ...(purpose ? { purpose } : {}) }, 500);
  }
}

/** A move whose VM changed between its plan and its start (another move re-homed it, a disk was attached). HTTP 409. */
export class MovePlanStaleError extends OffshootError {
  constructor(vm: string, why: string) {
    super('MOVE_PLAN_STALE', `VM "${vm}" changed since its move was planned (${why}); run vm move again`, { vm, why }, 409);
  }
}

export class ContentMismatchError extends OffshootError {
  constructor(a: string, b: string, details: Record<string, unknown>) {
    super('CONTENT_MISMATCH', `disks ${a} and ${b} share a content id but their content differs`, { a, b, ...details }, 409);
  }
}
