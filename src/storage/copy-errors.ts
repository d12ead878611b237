// Errors of the copy engine, each with a stable code: the source changed
// under a resumable copy, another worker holds the target, the copied target
// does not read back as recorded, the target already exists, or the progress
// file is unreadable.
import { OffshootError } from '../common/index.ts';
import type { ErrorDetails } from '../common/index.ts';

/** The source is not the file the progress file was recorded against. HTTP 409. */
export class CopySourceChangedError extends OffshootError {
  constructor(source: string, reason: string, details: ErrorDetails = {}) {
    super('COPY_SOURCE_CHANGED', `copy source ${source} changed since the copy started (${reason}); cancel the copy and start again`, { source, reason, ...details }, 409);
  }
}

/** Another live worker holds the target's copy lock. HTTP 409. */
export class CopyBusyError extends OffshootError {
  constructor(target: string, holder: ErrorDetails) {
    super('COPY_BUSY', `copy to ${target} is already being run by pid ${String(holder.pid)} on ${String(holder.host)}`, { target, holder }, 409);
  }
}

/** A chunk of the target does not hash to what was recorded when it was copied. HTTP 500. */
export class CopyVerifyFailedError extends OffshootError {
  readonly chunk: number;
  /** All chunks that failed (forgotten in the progress file, so a resume copies them again). */
  readonly chunks: readonly number[];
  constructor(target: string, chunk: number, offset: number, expected: string, actual: string, chunks: readonly number[] = [chunk]) {
    const more = chunks.length > 1 ? ` (${chunks.length} chunks failed)` : '';
    super('COPY_VERIFY_FAILED', `copy to ${target} failed verification: chunk ${chunk} (offset ${offset}) hashes to ${actual}, recorded ${expected}${more}`, { target, chunk, offset, expected, actual, chunks }, 500);
    this.chunks = chunks;
    this.chunk = chunk;
  }
}

/** The target exists and is not a copy in progress (no progress file). HTTP 409. */
export class CopyTargetExistsError extends OffshootError {
  constructor(target: string) {
    super('COPY_TARGET_EXISTS', `copy target ${target} already exists and has no copy progress file`, { target }, 409);
  }
}

/** The progress file is unreadable or not for this target. HTTP 500. */
export class CopyProgressInvalidError extends OffshootError {
  constructor(path: string, reason: string) {
    super('COPY_PROGRESS_INVALID', `copy progress file ${path} is invalid: ${reason}`, { path, reason }, 500);
  }
}

/** The worker lost its copy lock (another worker took it, or it could not renew it in time): it stopped writing. HTTP 409. */
export class CopyLockLostError extends OffshootError {
  constructor(lock: string, reason: string) {
    super('COPY_LOCK_LOST', `copy lock ${lock} was lost (${reason}); this worker stopped writing`, { lock, reason }, 409);
  }
}

/** A remote copy source (another host's file server) could not be read. HTTP 502. */
export class CopySourceUnreachableError extends OffshootError {
  constructor(url: string, reason: string) {
    super('COPY_SOURCE_UNREACHABLE', `cannot read the copy source at ${url}: ${reason}`, { url, reason }, 502);
  }
}
