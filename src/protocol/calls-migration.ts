// The agent calls of a live migration between two hosts (issue 12), spread
// into AGENT_CALLS (calls.ts). The controller drives both agents through
// them, phase by phase, so that a group of migrations can be driven to the
// switch-over together (hold) and a restarted controller can find each
// migration again by its operation ids:
//
//   both         migrationProbe   addresses, path slots in use, files present (content ids), room
//   both         openPath         this host's end of the per-operation path (VXLAN + one-time TLS-PSK key)
//   destination  prepareIncoming  target disks, a QEMU waiting (-incoming -S), NBD exports, migrate-incoming
//   destination  awaitIncoming    until the guest runs there (the agent resumes it itself; a group's holdAfter
//                                 keeps it paused until startIncoming, calls-group.ts) or the migration failed
//   source       migrateOut       disk mirrors (write-blocking), pre-copy with convergence watching, post-copy
//                                 when asked or needed, pre-switchover (mirrors completed, hold if asked), done
//   source       setMigrationSpeed / continueMigration   while migrateOut runs
//   source       abortOutgoing    a migration to stop before its switch-over, with or without its operation (recovery)
//   source       finishOutgoing   after the switch-over: the source QEMU, its RAM file and local files go
//   destination  abortIncoming    a failed or cancelled migration: its QEMU, files and exports go
//   both         closePath        the path's link, address and key go (idempotent); final link counters
//   both         migrationState   what the VM's QEMU on this host is doing (recovery)
//
// Plain data only: the PSK key travels once, to openPath, and is never
// returned, logged or journaled; ends are named by the path's operation id.
import { z } from 'zod';
import { call, operation } from './call-def.ts';
import { deviceIdSchema, diskFormatSchema, locatorSchema, nameSchema, operationIdSchema, vmIdSchema, vmRuntimeSchema, vmSpecSchema } from './schemas.ts';

const empty = z.object({});
const vmRef = z.object({ vmId: vmIdSchema });
export const ipv4Schema = z.string().regex(/^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/, 'an IPv4 address');
export const endpointSchema = z.object({ host: ipv4Schema, port: z.number().int().min(1).max(65535) });

const pathEndPlanSchema = z.object({ managementAddress: ipv4Schema, address: ipv4Schema });
/** A per-operation path as planned (net/path-plan.ts): both ends make their half from it. */
export const dataPathPlanSchema = z.object({
  operationId: operationIdSchema,
  slot: z.number().int().min(0),
  vni: z.number().int().min(1).max(2 ** 24 - 1),
  linkName: z.string().regex(/^ofvx\d{1,5}$/),
  port: z.number().int().min(1).max(65535),
  subnet: z.string().max(32),
  prefixLength: z.number().int().min(1).max(32),
  server: pathEndPlanSchema,
  client: pathEndPlanSchema,
});
export const pathRoleSchema = z.enum(['server', 'client']);
/** One end of a path as made (nothing secret in it). */
export const dataPathEndSchema = z.object({
  operationId: operationIdSchema,
  role: pathRoleSchema,
  slot: z.number().int(),
  vni: z.number().int(),
  linkName: z.string(),
  device: z.string(),
  mtu: z.number().int(),
  localAddress: ipv4Schema,
  remoteAddress: ipv4Schema,
  prefixLength: z.number().int(),
  localManagementAddress: ipv4Schema,
  remoteManagementAddress: ipv4Schema,
});
export const linkCountersSchema = z.object({ rxBytes: z.number(), txBytes: z.number(), rxPackets: z.number(), txPackets: z.number() });

export const postcopyModeSchema = z.enum(['auto', 'never', 'always']);
/** How the source migrates memory (the controller resolves it from options and policies). */
export const migrationTuningSchema = z.object({
  maxBandwidthBytesPerSecond: z.number().int().positive(),
  downtimeLimitMs: z.number().int().min(1).max(600_000),
  postcopy: postcopyModeSchema,
  autoConverge: z.boolean(),
  /** multifd channels (1: off; ignored when post-copy is allowed: QEMU 7.2 cannot combine them). */
  multifdChannels: z.number().int().min(1).max(16),
  /** The migration's time budget: past it a pre-copy that has not converged is cancelled (MIGRATION_TIMEOUT). */
  timeoutMs: z.number().int().min(1_000).max(24 * 3600_000),
  tls: z.boolean(),
});

/** A disk the destination creates as the target of a mirror. */
export const incomingDiskSchema = z.object({
  id: deviceIdSchema,
  file: locatorSchema,
  format: diskFormatSchema,
  sizeBytes: z.number().int().positive(),
  /** The chain below the new image, nearest first (present on the destination); empty: a standalone image. */
  backing: z.array(z.object({ file: locatorSchema, format: diskFormatSchema })).max(32),
});

export const migrateOutResultSchema = z.object({
  status: z.string(),
  /** QEMU's downtime figure (the guest stopped to the end of the migration on the source). */
  downtimeMs: z.number().nullable(),
  totalTimeMs: z.number().nullable(),
  setupTimeMs: z.number().nullable(),
  passes: z.number().int(),
  memoryBytes: z.number(),
  memoryTotalBytes: z.number(),
  /** Pages QEMU found zero and sent as such (no payload). */
  zeroPages: z.number(),
  postcopy: z.boolean(),
  postcopyReason: z.string().nullable(),
  postcopyRequests: z.number().int(),
  /** Data bytes of the copied disks (allocated in the layers the mirrors copy); the mirrors' own total, holes included, is diskMirroredBytes. */
  diskBytes: z.number(),
  diskMirroredBytes: z.number().optional(),
  mirrorMs: z.number().nullable(),
  /** Wall-clock time the guest stopped at the source (ISO), for the switch-over seen across hosts. */
  stoppedAt: z.string().nullable(),
  multifdChannels: z.number().int(),
  throttlePercent: z.number(),
  /** Whether pre-copy converged by itself (false when post-copy or auto-converge's throttle had to help). */
  converged: z.boolean(),
  /** Where the source's time went, ms by phase (credentials, disk mirrors, set-up, memory, switch-over, final figures). */
  phasesMs: z.record(z.string(), z.number()).optional(),
});

export const incomingResultSchema = z.object({
  runtime: vmRuntimeSchema,
  /** Wall-clock time the guest ran again at the destination (ISO); null when it stays paused (it was paused). */
  resumedAt: z.string().nullable(),
  running: z.boolean(),
});

export const migrationStateSchema = z.object({
  /** The QEMU of the VM this agent tracks: its run state and migration status, or null. */
  qemu: z.object({ runState: z.string(), migration: z.string() }).nullable(),
  /** A migrateOut of this VM is running here, and in which phase. */
  outgoing: z.object({ phase: z.string(), held: z.boolean(), switching: z.boolean() }).nullable(),
  /** An incoming QEMU of this VM waits or has finished here. */
  incoming: z.object({ state: z.enum(['waiting', 'held', 'running', 'failed']), pid: z.number().int(), runState: z.string().nullable() }).nullable(),
});

export const MIGRATION_CALLS = {
  migrationProbe: call(
    'what this host offers a migration: the management address it reaches `peer` from, the path slots in use, free memory and disk room, and whether the given files are here (with the content id of each read-only one); installs the default guest first when asked',
    z.object({ peer: ipv4Schema.nullable(), files: z.array(z.object({ file: locatorSchema, contentId: z.boolean(), sizes: z.boolean().default(true).describe('read the image\'s virtual and allocated sizes (qemu-img); false: only whether it is here') })).max(128), installDefaultGuest: z.boolean().default(false) }),
    z.object({
      managementAddress: ipv4Schema.nullable(),
      slotsInUse: z.array(z.number().int()),
      accel: z.enum(['kvm', 'tcg']),
      qemuVersion: z.string(),
      memoryFreeBytes: z.number(),
      diskFreeBytes: z.number(),
      files: z.array(z.object({ file: locatorSchema, exists: z.boolean(), contentId: z.string().nullable(), virtualSize: z.number().nullable(), allocatedBytes: z.number().nullable() })),
    }),
  ),
  openPath: call("makes this host's end of an operation's isolated path: a VXLAN link with its own VNI and address, and the one-time TLS-PSK key in a private folder", z.object({ plan: dataPathPlanSchema, role: pathRoleSchema, pskKey: z.string().regex(/^(?:[0-9a-f]{2}){16,64}$/) }), dataPathEndSchema),
  closePath: call("removes this host's end of an operation's path: link, address and key (idempotent); answers the link's last counters", z.object({ operationId: operationIdSchema }), z.object({ removedLinks: z.array(z.string()), removedCredential: z.boolean(), counters: linkCountersSchema.nullable() })),
  pathCounters: call("byte counters of an operation's path link and of the management device under it", z.object({ operationId: operationIdSchema }), z.object({ link: linkCountersSchema, management: linkCountersSchema, linkName: z.string(), device: z.string() }), true),
  prepareIncoming: operation(
    'destination: creates the target disks, starts a QEMU waiting for the migration (-incoming, -S) with an owned RAM file, TLS from the path, NBD exports of the targets on the path address, and listens for the migration there',
    { vmId: vmIdSchema, name: nameSchema, spec: vmSpecSchema, disks: z.array(incomingDiskSchema).max(16), pathId: operationIdSchema, postcopy: z.boolean(), multifdChannels: z.number().int().min(1).max(16), tls: z.boolean(), resume: z.boolean(), holdAfter: z.boolean().default(false).describe('keep the guest paused after the migration completed, until startIncoming (a group migration)') },
    z.object({ runtime: vmRuntimeSchema, migration: endpointSchema, nbd: endpointSchema.nullable(), exports: z.array(z.string()), phasesMs: z.record(z.string(), z.number()).optional().describe('where the preparation\'s time went, ms by step') }),
  ),
  awaitIncoming: operation('destination: waits until the migrated guest runs here (this agent resumes it as soon as the migration completes, or at the start of post-copy) or the migration failed', { vmId: vmIdSchema }, incomingResultSchema),
  abortIncoming: call('destination: a migration that failed or was cancelled leaves nothing: its waiting QEMU, RAM file, target disks and exports go (refused once the guest runs here)', vmRef, z.object({ removed: z.boolean() })),
  migrateOut: operation(
    'source: mirrors the copied disks into the destination exports (write-blocking), migrates memory with pre-copy (post-copy when asked or not converging), completes the mirrors at pre-switchover (holds there when asked), and ends when the migration has; cancel stops it at any point before the switch-over and the VM runs on here',
    { vmId: vmIdSchema, pathId: operationIdSchema, migration: endpointSchema, nbd: endpointSchema.nullable(), disks: z.array(z.object({ node: deviceIdSchema, sync: z.enum(['top', 'full']) })).max(16), tuning: migrationTuningSchema, hold: z.boolean(), brakeAfterFirstPass: z.object({ maxBandwidthBytesPerSecond: z.number().int().positive(), downtimeLimitMs: z.number().int().min(1).max(600_000) }).nullable().default(null).describe('a group member: its source applies these limits itself as soon as its first pass over memory ends (reported as selfBraked), without waiting for the controller'), holdAllowed: z.boolean().default(true).describe("with hold: false makes a source that reaches its switch-over roll itself back there at once (its guest runs on here; the operation fails MIGRATION_SENT_BACK) instead of waiting held, until setMigrationParameters' holdAllowed says true: a group member that would wait stopped for the others") },
    migrateOutResultSchema,
  ),
  setMigrationSpeed: call("source: changes a running migration's bandwidth cap (memory and disk mirrors)", z.object({ vmId: vmIdSchema, maxBandwidthBytesPerSecond: z.number().int().positive() }), empty),
  continueMigration: call('source: a migration held at pre-switchover goes on (the group switch-over)', vmRef, empty),
  abortOutgoing: call("source: stops the VM's migration before its switch-over (the migrateOut operation, or one a previous agent left in QEMU): mirrors dropped, the guest runs again when `resume`; answers the migration status it found", z.object({ vmId: vmIdSchema, resume: z.boolean() }), z.object({ status: z.string() })),
  finishOutgoing: call("source, after the switch-over: the VM's old QEMU ends and its RAM file and folder (its local disks) go", vmRef, empty),
  migrationState: call("what the VM's QEMU on this host is doing: run state and migration status, outgoing and incoming migrations (recovery)", vmRef, migrationStateSchema, true),
} as const;

export type DataPathPlanData = z.infer<typeof dataPathPlanSchema>;
export type DataPathEndData = z.infer<typeof dataPathEndSchema>;
export type MigrationTuning = z.infer<typeof migrationTuningSchema>;
export type IncomingDisk = z.infer<typeof incomingDiskSchema>;
export type MigrateOutResult = z.infer<typeof migrateOutResultSchema>;
export type IncomingResult = z.infer<typeof incomingResultSchema>;
export type MigrationStateData = z.infer<typeof migrationStateSchema>;
export type PostcopyMode = z.infer<typeof postcopyModeSchema>;
export type LinkCountersData = z.infer<typeof linkCountersSchema>;
