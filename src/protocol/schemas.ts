// The data that crosses the agent protocol, as zod schemas (they validate both
// ends and generate the agent's OpenAPI document). Plain data only: ids, file
// references (locators, see locator.ts) and numbers — never a host path the
// control plane made up, a callback, a Set or a signal. Host paths appear only
// where a person typed one for a given host (`hostPath` fields: a disk to
// attach, a checkpoint file to restore, a datastore folder), and the agent
// alone decides whether it may touch them.
import { z } from 'zod';
import { LOCATOR_PATTERN } from './locator.ts';

export const locatorSchema = z.string().max(4096).regex(LOCATOR_PATTERN, 'a file reference such as "home:vms/<vm>/disk0.qcow2"');
export const uuidSchema = z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i, 'a UUID');
export const vmIdSchema = uuidSchema;
export const operationIdSchema = uuidSchema;
export const datastoreIdSchema = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'a datastore id');
export const diskIdSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/, 'a disk id');
export const deviceIdSchema = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'a device id such as disk0');
export const nameSchema = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/i, 'a name: 1-63 letters, digits, "-" or "_"');
/** A path typed by a person for this host; the agent checks it against the places it may touch. */
export const hostPathSchema = z
  .string()
  .min(2)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), 'an absolute path without NUL');
export const diskFormatSchema = z.enum(['qcow2', 'raw']);
export const macSchema = z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'a MAC address');
export const acceleratorSchema = z.enum(['kvm', 'tcg']);
export const runStatusSchema = z.enum(['running', 'paused']);

export const vmDiskSchema = z.object({
  id: deviceIdSchema,
  file: locatorSchema,
  format: diskFormatSchema,
  readOnly: z.boolean(),
  /** Owned disks live in the VM's folder and go with it. */
  owned: z.boolean(),
  /** The backing chain below `file`, nearest first; empty for a standalone image. */
  backing: z.array(locatorSchema).max(32),
});

export const vmNicSchema = z.object({ id: deviceIdSchema, mac: macSchema, network: z.literal('user') });

export const vmBootSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('kernel'), kernel: locatorSchema, initrd: locatorSchema.optional(), cmdline: z.string().max(4096) }),
  z.object({ kind: z.literal('disk') }),
]);

/** The resolved spec a host runs a VM from. */
export const vmSpecSchema = z.object({
  vcpus: z.number().int().min(1).max(64),
  memoryMiB: z.number().int().min(16).max(1024 * 1024),
  /**
   * KiB of guest RAM beyond memoryMiB (absent: 0). 8 on hosts whose accelerator is TCG: QEMU 7.2's TCG
   * loses guest writes during pre-copy when the RAM block is a multiple of 256 KiB (see
   * qemu/argv.ts); the size must be the same wherever the VM's memory goes (a template and its
   * children, a checkpoint and its restore, both ends of a migration).
   */
  memoryExtraKiB: z.number().int().min(0).max(1024).optional(),
  boot: vmBootSchema,
  disks: z.array(vmDiskSchema).max(16),
  nics: z.array(vmNicSchema).max(8),
  /** The embedded default guest. */
  defaultGuest: z.boolean(),
  /** False for a guest without a QEMU guest agent: start does not wait for one, exec is refused. Absent means true. */
  guestAgent: z.boolean().optional(),
  /** The VM's own identity (a machine-id), and whether it still has to be applied in the guest (a clone's first boot). */
  identity: z.object({ machineId: z.string().regex(/^[0-9a-f]{32}$/), pending: z.boolean() }).optional(),
});

/** The size of a VM's guest RAM in bytes (memoryMiB plus memoryExtraKiB): its RAM file, a checkpoint's memory, a migration's RAM block. */
export function guestMemoryBytes(spec: { memoryMiB: number; memoryExtraKiB?: number }): number {
  return spec.memoryMiB * 2 ** 20 + (spec.memoryExtraKiB ?? 0) * 1024;
}

/** Guest RAM: `owned` is the VM's own file (it is the RAM); `derived` maps a template copy-on-write. */
export const vmMemorySchema = z.object({ mode: z.enum(['owned', 'derived']), templateId: uuidSchema.nullable() });

/** What the control plane records about a running QEMU; the agent derives every path from vmId + instance. */
export const vmRuntimeSchema = z.object({
  hostId: z.string().min(1).max(128),
  pid: z.number().int().positive(),
  accel: acceleratorSchema,
  /** Distinguishes successive QEMU processes of one VM. */
  instance: z.string().regex(/^[0-9a-f]{8}$/),
  memory: vmMemorySchema,
  startedAt: z.string(),
});

export const identitySchema = z.object({
  name: nameSchema,
  mac: macSchema.nullable(),
  machineId: z.string().regex(/^[0-9a-f]{32}$/),
  script: z.string().max(1024 * 1024).optional(),
  timeoutMs: z.number().int().min(1).max(600_000),
});

export const customizeResultSchema = z.object({
  ok: z.boolean(),
  error: z.string().nullable(),
  script: z.object({ exitCode: z.number().int().nullable(), stdout: z.string(), stderr: z.string() }).nullable(),
  ms: z.number(),
});

export const memoryStatsSchema = z.object({ rssKiB: z.number(), pssKiB: z.number(), sharedKiB: z.number(), privateKiB: z.number() });

export const forkDisksResultSchema = z.object({
  source: z.array(vmDiskSchema),
  children: z.record(z.string(), z.array(vmDiskSchema)),
  /** Source disks that became read-only bases: where they were and where they are now. */
  frozen: z.array(z.object({ from: locatorSchema, to: locatorSchema })),
  /** Block streams to run once the VMs run (disk state inheritance). */
  streams: z.array(z.object({ vmId: vmIdSchema, diskId: deviceIdSchema, base: locatorSchema })),
});

export const forkVmSchema = z.object({ vmId: vmIdSchema, name: nameSchema, spec: vmSpecSchema });

export const preparedForkSchema = z.object({
  forkId: uuidSchema,
  templateId: uuidSchema,
  disks: forkDisksResultSchema,
  /** The QEMUs waiting for the device state, by VM id (the source's replacement included). */
  incoming: z.record(z.string(), vmRuntimeSchema),
});

export const forkSwitchSchema = z.object({ runtime: vmRuntimeSchema, wasRunning: z.boolean(), stunMs: z.number(), deviceStateBytes: z.number() });

export const execRequestFields = {
  path: z.string().min(1).max(4096),
  args: z.array(z.string().max(65536)).max(1024),
  input: z.string().max(24 * 1024 * 1024).optional(),
  env: z.array(z.string().max(65536)).max(256).optional(),
  timeoutMs: z.number().int().min(1).max(3_600_000).optional(),
};
export const execResultSchema = z.object({ exitCode: z.number().int().nullable(), signal: z.number().int().nullable(), stdout: z.string(), stderr: z.string() });

/** A disk given to a new VM: a file the agent already named, or a path a person typed. */
export const diskSourceSchema = z.union([z.object({ file: locatorSchema }), z.object({ hostPath: hostPathSchema })]);

export const prepareVmBootSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('default-guest') }),
  z.object({ kind: z.literal('kernel'), kernel: diskSourceSchema, initrd: diskSourceSchema.optional(), cmdline: z.string().max(4096).optional() }),
  z.object({ kind: z.literal('disk'), disk: diskSourceSchema }),
]);

export const checkpointMetadataSchema = z.object({
  /** The metadata schema's version (see memory/checkpoint-meta rules in the agent). */
  schema: z.literal(2),
  /** The checkpoint's id: only the file that names it is ever removed for it. */
  checkpointId: uuidSchema.optional(),
  vm: z.object({ id: vmIdSchema, name: nameSchema }),
  spec: vmSpecSchema,
  createdAt: z.string(),
  hostId: z.string(),
});

export const diskChainEntrySchema = z.object({ file: locatorSchema.nullable(), format: z.string(), virtualSize: z.number(), actualSize: z.number().nullable() });

export const frozenDiskSchema = z.object({
  diskId: deviceIdSchema,
  format: diskFormatSchema,
  /** The frozen image and its backing chain, top first: all read-only from now on. */
  chain: z.array(locatorSchema).min(1),
  contentId: z.string(),
  virtualSize: z.number(),
});

export const freezeResultSchema = z.object({
  disks: z.array(vmDiskSchema),
  frozen: z.array(frozenDiskSchema),
  moves: z.array(z.object({ from: locatorSchema, to: locatorSchema })),
  deltas: z.array(locatorSchema),
});

export const diskMetaSchema = z.object({
  version: z.literal(1),
  id: diskIdSchema,
  name: z.string().min(1).max(64),
  contentId: z.string().min(1).max(80),
  parentId: z.string().nullable(),
  format: diskFormatSchema,
  virtualSize: z.number().int().nonnegative(),
  readOnly: z.boolean(),
  createdAt: z.string(),
});

export const datastoreUsageSchema = z.object({ capacityBytes: z.number(), freeBytes: z.number(), usedBytes: z.number(), disks: z.number().int() });

export const copyProgressSchema = z.object({ bytesDone: z.number(), bytesTotal: z.number(), chunksDone: z.number(), chunksTotal: z.number(), bytesPerSecond: z.number() });
export const copyResultSchema = z.object({
  state: z.enum(['done', 'stopped']),
  contentHash: z.string().nullable(),
  chunksCopied: z.number(),
  chunksSkipped: z.number(),
  bytesCopied: z.number(),
  elapsedMs: z.number(),
});

export const hostVmSchema = z.object({ vmId: vmIdSchema, pid: z.number().int(), instance: z.string(), status: z.enum(['running', 'paused', 'other']) });

export const hostInfoSchema = z.object({
  hostId: z.string(),
  hostname: z.string(),
  protocolVersion: z.number().int(),
  capabilities: z.array(z.string()),
  agentVersion: z.string(),
  /** Changes each time the agent process starts: a controller that sees a new one re-adopts the host's VMs. */
  agentInstance: z.string(),
  epoch: z.number().int().nonnegative(),
  accel: acceleratorSchema,
  accelReason: z.string(),
  qemuVersion: z.string(),
  memory: z.object({ totalBytes: z.number(), freeBytes: z.number(), templatesBytes: z.number() }),
  confinement: z.object({ user: z.string().nullable(), sandbox: z.boolean(), reason: z.string().nullable() }),
  vms: z.array(hostVmSchema),
});

export const agentEventSchema = z.discriminatedUnion('type', [
  z.object({ seq: z.number().int(), type: z.literal('vm.exit'), vmId: vmIdSchema, instance: z.string(), clean: z.boolean(), reason: z.string(), at: z.string() }),
  z.object({ seq: z.number().int(), type: z.literal('operation'), operationId: operationIdSchema, state: z.string(), at: z.string() }),
]);

export type VmDisk = z.infer<typeof vmDiskSchema>;
export type VmNic = z.infer<typeof vmNicSchema>;
export type VmBoot = z.infer<typeof vmBootSchema>;
export type VmSpec = z.infer<typeof vmSpecSchema>;
export type VmMemory = z.infer<typeof vmMemorySchema>;
export type VmRuntime = z.infer<typeof vmRuntimeSchema>;
export type Accelerator = z.infer<typeof acceleratorSchema>;
export type Identity = z.infer<typeof identitySchema>;
export type CustomizeResult = z.infer<typeof customizeResultSchema>;
export type VmMemoryStats = z.infer<typeof memoryStatsSchema>;
export type ForkDisksResult = z.infer<typeof forkDisksResultSchema>;
export type PreparedFork = z.infer<typeof preparedForkSchema>;
export type ForkSwitch = z.infer<typeof forkSwitchSchema>;
export type ExecResult = z.infer<typeof execResultSchema>;
export type DiskSource = z.infer<typeof diskSourceSchema>;
export type CheckpointMetadata = z.infer<typeof checkpointMetadataSchema>;
export type DiskChainEntry = z.infer<typeof diskChainEntrySchema>;
export type FrozenDisk = z.infer<typeof frozenDiskSchema>;
export type FreezeResult = z.infer<typeof freezeResultSchema>;
export type DiskMetaData = z.infer<typeof diskMetaSchema>;
export type DatastoreUsage = z.infer<typeof datastoreUsageSchema>;
export type CopyProgress = z.infer<typeof copyProgressSchema>;
export type CopyResult = z.infer<typeof copyResultSchema>;
export type HostInfo = z.infer<typeof hostInfoSchema>;
export type AgentEvent = z.infer<typeof agentEventSchema>;
