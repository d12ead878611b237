// The whole agent protocol: every call an agent answers, with its request and
// result schemas. A `call` answers at once (a QMP round trip, a file rename);
// an `operation` may run for minutes or hours (a boot, a fork's preparation, a
// checkpoint write, a restore stream, a disk copy): it answers at once with an
// operation the caller follows (progress, result or error) and can cancel, and
// its id is chosen by the caller, so a retried request (or a controller that
// restarted and reads the id from its task journal) reaches the same
// operation instead of starting the work twice. Plain calls that change
// something carry an idempotency key for the same reason (see transports).
import { z } from 'zod';
import { call, operation } from './call-def.ts';
import { MIGRATION_CALLS } from './calls-migration.ts';
import {
  agentEventSchema,
  copyProgressSchema,
  copyResultSchema,
  customizeResultSchema,
  datastoreIdSchema,
  datastoreUsageSchema,
  deviceIdSchema,
  diskChainEntrySchema,
  diskFormatSchema,
  diskIdSchema,
  diskMetaSchema,
  diskSourceSchema,
  execRequestFields,
  execResultSchema,
  forkDisksResultSchema,
  forkSwitchSchema,
  forkVmSchema,
  freezeResultSchema,
  hostInfoSchema,
  hostPathSchema,
  identitySchema,
  locatorSchema,
  memoryStatsSchema,
  nameSchema,
  operationIdSchema,
  preparedForkSchema,
  prepareVmBootSchema,
  runStatusSchema,
  uuidSchema,
  vmDiskSchema,
  vmIdSchema,
  vmRuntimeSchema,
  vmSpecSchema,
  checkpointMetadataSchema,
} from './schemas.ts';
import { FABRIC_CALLS } from './calls-fabric.ts';
import { MOBILITY_CALLS } from './calls-mobility.ts';
import { GROUP_CALLS } from './calls-group.ts';

export const operationStates = ['running', 'succeeded', 'failed', 'cancelled'] as const;
export const operationStateSchema = z.enum(operationStates);
export type OperationState = z.infer<typeof operationStateSchema>;

export const operationInfoSchema = z.object({
  operationId: operationIdSchema,
  call: z.string(),
  state: operationStateSchema,
  progress: z.number().min(0).max(1),
  message: z.string(),
  /** The newest event's sequence number (follow with afterSeq). */
  seq: z.number().int(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()), cause: z.object({ code: z.string().optional(), message: z.string() }).optional() }).optional(),
  startedAt: z.string(),
  endedAt: z.string().nullable(),
});
export type OperationInfo = z.infer<typeof operationInfoSchema>;

export const operationEventSchema = z.object({ seq: z.number().int(), progress: z.number(), message: z.string(), data: z.record(z.string(), z.unknown()).optional(), at: z.string() });
export type OperationEvent = z.infer<typeof operationEventSchema>;

const empty = z.object({});
const vmRef = z.object({ vmId: vmIdSchema });
const forkRef = z.object({ forkId: uuidSchema });
const fileRef = z.object({ file: locatorSchema });
const backingSchema = z.object({ file: locatorSchema, format: diskFormatSchema });

export const AGENT_CALLS = {
  // The host
  hostInfo: call('what the host is and runs: protocol version, capabilities, accelerator, memory, its VMs', empty, hostInfoSchema, true),
  attach: call('a control plane takes this host: records its id and epoch (requests with an older epoch are refused)', z.object({ hostId: z.string().min(1).max(128), epoch: z.number().int().positive() }), hostInfoSchema),
  events: call('host events after a sequence number (VM exits, operations ending); waits up to waitMs for one', z.object({ afterSeq: z.number().int().min(0), waitMs: z.number().int().min(0).max(30_000) }), z.object({ events: z.array(agentEventSchema), nextSeq: z.number().int(), resync: z.boolean() }), true),

  // Operations
  getOperation: call('an operation and its events after afterSeq; waits up to waitMs while nothing new happened (until: "end" waits for the operation to end instead)', z.object({ operationId: operationIdSchema, afterSeq: z.number().int().min(0).default(0), waitMs: z.number().int().min(0).max(30_000).default(0), until: z.enum(['event', 'end']).default('event') }), z.object({ operation: operationInfoSchema, events: z.array(operationEventSchema) }), true),
  cancelOperation: call('asks a running operation to stop; it ends cancelled (or as it was about to)', z.object({ operationId: operationIdSchema }), operationInfoSchema),
  listOperations: call('operations still running or ended recently', empty, z.object({ operations: z.array(operationInfoSchema) }), true),

  // VM lifecycle
  prepareVm: call(
    "validates a new VM's inputs and creates its folder and disks; leaves nothing on failure",
    z.object({
      vmId: vmIdSchema,
      name: nameSchema,
      vcpus: z.number().int().min(1).max(64),
      memoryMiB: z.number().int().min(16).max(1024 * 1024),
      boot: prepareVmBootSchema,
      disks: z.array(z.object({ source: diskSourceSchema, readOnly: z.boolean() })).max(8),
      network: z.enum(['user', 'none']),
      guestAgent: z.boolean().optional(),
    }),
    vmSpecSchema,
  ),
  startVm: operation('starts QEMU for the VM; done once QMP answers and the guest runs', { vmId: vmIdSchema, name: nameSchema, spec: vmSpecSchema }, vmRuntimeSchema),
  waitForGuestAgent: operation('waits until the guest agent answers', { vmId: vmIdSchema, timeoutMs: z.number().int().min(1).max(3_600_000) }, empty),
  adoptVm: call('re-attaches to a QEMU left by a previous agent or controller', z.object({ vmId: vmIdSchema, runtime: vmRuntimeSchema }), z.object({ status: runStatusSchema.nullable() })),
  vmStatus: call("the VM's QEMU run state, null if it has none", vmRef, z.object({ status: runStatusSchema.nullable() }), true),
  pauseVm: call('pauses the guest', vmRef, empty),
  resumeVm: call('resumes the guest', vmRef, empty),
  stopVm: operation('ACPI power-down; QEMU is killed if the guest is not off within timeoutMs', { vmId: vmIdSchema, timeoutMs: z.number().int().min(0).max(600_000) }, z.object({ forced: z.boolean() })),
  killVm: call('kills QEMU at once', vmRef, empty),
  killStray: call("kills a QEMU of the VM other than its tracked one (left by an interrupted operation)", z.object({ vmId: vmIdSchema, runtime: vmRuntimeSchema }), z.object({ killed: z.boolean() })),
  deleteVmFiles: call("removes the VM's folder, memory file and owned disks", vmRef, empty),
  exec: call('runs a program in the guest through its agent', z.object({ vmId: vmIdSchema, ...execRequestFields }), execResultSchema),
  readConsole: call("the tail of the VM's serial console", z.object({ vmId: vmIdSchema, maxBytes: z.number().int().min(1).max(16 * 1024 * 1024) }), z.object({ text: z.string() }), true),
  memoryStats: call("the VM's QEMU memory use", vmRef, memoryStatsSchema, true),
  customize: operation('gives a running VM a new identity through its guest agent; reports rather than throws', { vmId: vmIdSchema, identity: identitySchema }, customizeResultSchema),
  reapOrphans: call('kills QEMUs of VMs not in `live` and removes files of VMs not in `known`', z.object({ live: z.array(vmIdSchema), known: z.array(vmIdSchema) }), z.object({ killed: z.array(z.number()), removed: z.array(z.string()) })),
  releaseUnused: call('removes memory templates and frozen bases that are not in the given in-use lists', z.object({ templates: z.array(uuidSchema), files: z.array(locatorSchema) }), z.object({ templates: z.array(z.string()), files: z.array(z.string()) })),

  // Fork (and the freeze a checkpoint shares)
  // A derived VM's memory made its own (fork of a fork), in three steps so the caller can journal the new QEMU before anything moves.
  startOwnedTarget: operation('starts a QEMU with an owned RAM file waiting for a local live migration of the derived VM', { vmId: vmIdSchema, name: nameSchema, spec: vmSpecSchema }, vmRuntimeSchema),
  migrateToOwnedTarget: operation('live-migrates the VM into its owned target (the source ends stopped, the target paused)', { vmId: vmIdSchema }, z.object({ bytes: z.number(), ms: z.number() })),
  switchToOwnedTarget: call('the owned target becomes the VM\'s QEMU (resumed if the source ran) and the source ends', vmRef, vmRuntimeSchema),
  abortOwnedTarget: call('undoes the first two steps: the target goes and the source runs on as before', vmRef, empty),
  prepareFork: operation('prepares a fork while the source runs: disks split, template linked, incoming QEMUs waiting', { forkId: uuidSchema, source: forkVmSchema, children: z.array(forkVmSchema).max(64), maxDepth: z.number().int().min(1) }, preparedForkSchema),
  switchFork: call('the switch-over (the stun): source stopped, device state saved and loaded into its replacement', forkRef, forkSwitchSchema),
  completeForkChild: call('a child loads the device state and runs', z.object({ forkId: uuidSchema, childId: vmIdSchema }), vmRuntimeSchema),
  abortFork: call('undoes whatever of a prepared fork has not happened yet', forkRef, empty),
  finishFork: call('forgets a finished fork', forkRef, empty),
  undoForkDisks: call("undoes a fork's disk split (crash recovery before its switch-over)", z.object({ forkId: uuidSchema, sourceId: vmIdSchema, sourceDisks: z.array(vmDiskSchema), childIds: z.array(vmIdSchema), result: forkDisksResultSchema }), empty),
  undoForkRenames: call('undoes the disk renames a fork logged (crash recovery); idempotent', forkRef, z.object({ moved: z.number().int() })),
  removeForkFiles: call("removes a fork's work folder", forkRef, empty),
  streamDisk: operation("copies `base`'s content into the VM's disk and points the disk at base's parent", { vmId: vmIdSchema, diskId: deviceIdSchema, base: locatorSchema }, empty),

  // Checkpoints
  planCheckpointFile: call('where a new checkpoint file goes (default: the home; or a path a person gave inside an allowed place); refuses an existing file', z.object({ name: nameSchema, hostPath: hostPathSchema.optional() }), z.object({ file: locatorSchema, hostPath: z.string() })),
  writeCheckpoint: operation('writes the frozen RAM and device state of a switched-over fork into a new checkpoint file', { forkId: uuidSchema, checkpointId: uuidSchema, file: locatorSchema, memoryBytes: z.number().int().positive(), metadata: checkpointMetadataSchema }, z.object({ fileBytes: z.number(), storedPages: z.number() })),
  inspectCheckpoint: call('validates a checkpoint file: the strict reader, then its frozen disks exist and are safe', z.object({ source: diskSourceSchema }), z.object({ file: locatorSchema, hostPath: z.string(), memoryBytes: z.number(), fileBytes: z.number(), metadata: checkpointMetadataSchema })),
  removeCheckpoint: call('removes the file of a checkpoint, only if the file names that checkpoint (and its temporary files); removed tells', z.object({ file: locatorSchema, checkpointId: z.string().max(128), createdAt: z.string().max(64) }), z.object({ removed: z.boolean() })),
  restoreVm: operation(
    'restores a checkpoint as a new VM; done once it runs. Lazy: its memory keeps streaming in as the operation streamOperationId',
    { vmId: vmIdSchema, name: nameSchema, checkpoint: locatorSchema, spec: vmSpecSchema, mode: z.enum(['eager', 'lazy']), streamOperationId: operationIdSchema.optional() },
    z.object({ runtime: vmRuntimeSchema, spec: vmSpecSchema, streamOperationId: operationIdSchema.nullable() }),
  ),

  restoreStream: operation(
    "follows a lazy restore's memory stream until the checkpoint is no longer needed (restoreVm starts it as streamOperationId; calling it reattaches by VM)",
    { vmId: vmIdSchema },
    z.record(z.string(), z.unknown()).nullable(),
  ),

  // Datastores and disk files
  registerDatastore: call("creates or adopts a datastore folder under this id (without hostPath: the host's own default datastore folder)", z.object({ datastoreId: datastoreIdSchema, name: nameSchema, hostPath: hostPathSchema.optional() }), z.object({ hostPath: z.string() })),
  forgetDatastore: call("removes the datastore's marker and empty folders (never a disk)", z.object({ datastoreId: datastoreIdSchema }), empty),
  datastoreUsage: call('capacity and use of a datastore', z.object({ datastoreId: datastoreIdSchema }), datastoreUsageSchema, true),
  scanDatastore: call('the disks a datastore describes (sidecars), and files it cannot use', z.object({ datastoreId: datastoreIdSchema }), z.object({ disks: z.array(z.object({ file: locatorSchema, meta: diskMetaSchema })), problems: z.array(z.object({ file: z.string(), reason: z.string() })) }), true),
  createDisk: call('a blank disk in a datastore', z.object({ datastoreId: datastoreIdSchema, diskId: diskIdSchema, format: diskFormatSchema, sizeBytes: z.number().int().positive().max(2 ** 53 - 1) }), z.object({ file: locatorSchema })),
  importDisk: operation('converts a qcow2, raw or monolithic vmdk file a person named into a standalone disk', { datastoreId: datastoreIdSchema, diskId: diskIdSchema, format: diskFormatSchema, source: hostPathSchema }, z.object({ file: locatorSchema, virtualSize: z.number(), sourceFormat: z.string() })),
  resizeDisk: call('grows a disk', z.object({ file: locatorSchema, sizeBytes: z.number().int().positive() }), empty),
  diskChain: call("a disk file's backing chain", fileRef, z.object({ chain: z.array(diskChainEntrySchema) }), true),
  writeDiskMeta: call("writes a disk's sidecar", z.object({ file: locatorSchema, meta: diskMetaSchema }), empty),
  removeDisk: call('removes a disk file, its sidecar and copy leftovers', fileRef, empty),
  hashDisk: operation("content hash of a disk file's bytes (the backing name left out)", { file: locatorSchema }, z.object({ hash: z.string() })),
  contentId: call("content id of a read-only base, from its content (cached beside it)", fileRef, z.object({ contentId: z.string() })),
  freezeDisks: call("freezes a VM's writable disks into read-only bases (a live snapshot if it runs)", z.object({ vmId: vmIdSchema, disks: z.array(vmDiskSchema), running: z.boolean() }), freezeResultSchema),
  undoFreeze: call('undoes a freeze of a stopped VM', z.object({ result: freezeResultSchema }), empty),
  createDelta: call("a qcow2 delta over `backing`, in the VM's folder, named after the device", z.object({ vmId: vmIdSchema, diskId: deviceIdSchema, backing: backingSchema }), z.object({ file: locatorSchema })),
  relinkDisk: call('points a copied qcow2 at another backing file without touching its data', z.object({ file: locatorSchema, backing: backingSchema.nullable() }), empty),
  takePoolSlot: call("moves a pool slot's disks into the datastore's disks and removes the slot folder", z.object({ datastoreId: datastoreIdSchema, poolId: diskIdSchema, slotId: diskIdSchema, disks: z.array(z.object({ from: locatorSchema, to: locatorSchema })) }), empty),
  removePoolSlot: call('removes a pool slot folder with whatever is left in it', z.object({ datastoreId: datastoreIdSchema, poolId: diskIdSchema, slotId: diskIdSchema }), empty),
  copyFile: operation('copies one file in a worker process, resumable from its progress file; cancel stops after the chunk in flight', { source: locatorSchema, target: locatorSchema, chunkMiB: z.number().positive().optional(), maxMiBPerSecond: z.number().positive().optional() }, copyResultSchema),
  discardCopy: call("removes a copy's target, progress file and lock", z.object({ target: locatorSchema }), empty),
  streamWholeChain: operation("streams the chain below a running VM's disk into it; the disk stands alone afterwards", { vmId: vmIdSchema, diskId: deviceIdSchema }, empty),

  // The elastic fabric: host templates (calls-fabric.ts)
  ...FABRIC_CALLS,
  // Live migration between hosts (calls-migration.ts)
  ...MIGRATION_CALLS,
  // Mobility: copies between hosts, content ids across hosts (calls-mobility.ts)
  ...MOBILITY_CALLS,
  // A group migration's switch-over (calls-group.ts)
  ...GROUP_CALLS,
} as const;

export type AgentCalls = typeof AGENT_CALLS;
export type CallName = keyof AgentCalls;
export type OperationName = { [K in CallName]: AgentCalls[K]['kind'] extends 'operation' ? K : never }[CallName];
export type PlainCallName = Exclude<CallName, OperationName>;
export type CallRequest<K extends CallName> = z.input<AgentCalls[K]['request']>;
export type ParsedCallRequest<K extends CallName> = z.output<AgentCalls[K]['request']>;
export type CallResult<K extends CallName> = z.output<AgentCalls[K]['result']>;

export const CALL_NAMES = Object.keys(AGENT_CALLS) as CallName[];

export function isOperationCall(name: CallName): name is OperationName {
  return AGENT_CALLS[name].kind === 'operation';
}

/** Progress data an operation may attach to its events (copy progress, stream blocks). */
export const progressDataSchemas = { copy: copyProgressSchema } as const;
