// The fork sub-module of the VM layer: orchestration, its journal and crash recovery.
export { runFork } from './run-fork.ts';
export type { ForkDeps, ForkResult, ForkChildResult } from './run-fork.ts';
export type { ForkJournal } from './fork-journal.ts';
export { recoverFork } from './recover-fork.ts';
export { forkRequestSchema, DEFAULT_MAX_DISK_DEPTH } from './fork-request.ts';
export type { ForkRequest, ParsedForkRequest } from './fork-request.ts';
export { ForkFailedError, FORK_STEPS } from './fork-errors.ts';
export { journalPrepared, makeOwnedIfDerived, prepareAndPin, settleUnswitched, unpinPrepared } from './freeze-steps.ts';
