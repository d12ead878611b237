// Public surface of the VM layer: the engine (one request handler for every
// front end, one controller of a fleet: coordinator.ts), its records and the
// Inventory and coordination interfaces the store implements,
// the lifecycle states, request schemas and events; and its storage half
// (vm/storage: datastores, disks, clones, pools, copy jobs) and the elastic
// fabric (vm/fabric: templates, pools of ready children, claims).
export { VmEngine } from './engine.ts';
export type { VmEngineOptions, VmAndTask } from './engine.ts';
export type { EngineEvent } from './events.ts';
export { EventBus } from './events.ts';
export type { CheckpointRecord, CheckpointState, Inventory, TaskRecord, TaskState, TaskError, VmRecord } from './records.ts';
export { TASK_STATES, isTaskState, isTaskDone } from './records.ts';
export type { ControllerRecord, Controllers, GcPin, GcPins, InsertTaskOptions, SharedEventBus, TaskLease, TaskLeases, UpdateTaskOptions, UpdateVmOptions, VmClaim, VmClaims } from './coordination.ts';
export { BusyError, LeaseLostError, VersionConflictError } from './coordination.ts';
export type { CoordinationStore } from './coordination.ts';
export { Coordinator, DEFAULT_LEASE_MS } from './coordinator.ts';
export type { TaskRecovery } from './recovery.ts';
export { HAND_OVER } from './tasks.ts';
export type { TaskContext } from './tasks.ts';
export { PinSet } from './pin-set.ts';
export type { VmState, VmOperation } from './state.ts';
export { VM_STATES, LIVE_STATES, BUSY_STATES, OPERATION_REQUIRES, isVmState, isLive, canTransition, assertOperationAllowed } from './state.ts';
export { createVmRequestSchema, parseCreateVmRequest, parseSizeMiB, resolveMemoryMiB, vmNameSchema, MIN_MEMORY_MIB, MAX_MEMORY_MIB, MAX_VCPUS } from './spec.ts';
export type { CreateVmRequest, VmSpec, VmDisk, VmNic, VmBoot } from './spec.ts';
export { execRequestSchema, startRequestSchema, stopRequestSchema } from './requests.ts';
export type { ExecVmRequest } from './requests.ts';
export { forkRequestSchema, DEFAULT_MAX_DISK_DEPTH } from './fork/fork-request.ts';
export type { ForkRequest } from './fork/fork-request.ts';
export type { ForkResult, ForkChildResult } from './fork/run-fork.ts';
export { ForkFailedError, FORK_STEPS } from './fork/fork-errors.ts';
export { checkpointRequestSchema, restoreRequestSchema } from './checkpoint/checkpoint-requests.ts';
export type { CheckpointRequest, RestoreRequest } from './checkpoint/checkpoint-requests.ts';
export type { CheckpointResult } from './checkpoint/run-checkpoint.ts';
export { GROUP_MIGRATE_TASK_KIND, groupMigrateRequestSchema, migrateRequestSchema, parseRate } from './migrate/index.ts';
export type { GroupMigrateRequest, GroupMigrateResult, GroupMemberResult, GroupMode, MigrateRequest, MigrateResult, MigrationProgress } from './migrate/index.ts';
export { DEFAULT_POLICY, DRAIN_TASK_KIND, FLEET_SCOPE, HostDrains, MigrationLimitError, MigrationPolicies, POSTCOPY_MODES, cleanPolicy, drainRequestSchema, policyPatchSchema, resolvePolicy } from './migrate/index.ts';
export type { DrainRequest, DrainResult, MigrationControlStore, MigrationPolicy, MigrationQueueEntry, PolicyView, QueuedProgress, ResolvedPolicy, SlotNeeds } from './migrate/index.ts';
export * from './storage/index.ts';
export * from './hosts/index.ts';
export * from './fabric/index.ts';
