// Public surface of the VM layer's storage half: the storage service (one
// handler for datastores, disks, clones, pools, copy jobs and their
// hand-over between hosts), its records and the StorageInventory interface
// the store implements.
export { StorageService } from './service.ts';
export type { StorageDeps } from './deps.ts';
export type { CloneResult } from './clone.ts';
export type { DatastoreView, DiskView } from './catalog.ts';
export type * from './records.ts';
export { COPY_JOB_STATES, isCopyJobState, isCopyJobDone } from './records.ts';
export * from './requests.ts';
export * from './errors.ts';
export { newDatastoreId, datastoreFile, frozenChainRecords, diskMeta, newDiskId } from './catalog.ts';
export type { Catalog } from './catalog.ts';
export type { CopyJobs, CopyJobHandler } from './copy-jobs.ts';
export { JobHandover, HandoverRefusedError, sharesOf } from './handover.ts';
export type { HandoverResult, HostShare } from './handover.ts';
export { planByContent } from './content-plan.ts';
export type { ContentPlanRequest, DiskContentPlan, PlannedLayer } from './content-plan.ts';
export type { SeedResult } from './seed.ts';
export { VmMover, moveVmRequestSchema, moveModeFor, MOVE_MODES } from './move-vm.ts';
export type { MoveVmStarted, MoveVmRequest, MoveMode } from './move-vm.ts';
export { COLD_MOVE_TASK_KIND } from './cold-move.ts';
export type { ColdMoveResult } from './cold-move.ts';
export { peerAddress } from './copy-file-op.ts';
export { agentOn, datastoreHost } from './deps.ts';
