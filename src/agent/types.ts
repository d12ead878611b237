// The host's own types: what the local agents (LocalHostAgent,
// LocalStorageAgent) work with, with host paths. They never leave the host:
// agent-service.ts turns them into the protocol's types (file references
// instead of paths) at the boundary.

export type Accelerator = 'kvm' | 'tcg';

/** A disk as attached to the VM. `owned` disks live in the VM's folder and are deleted with it. */
export interface VmDisk {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  owned: boolean;
  /** The backing chain below this file, nearest first (absolute paths); empty for a standalone image. */
  backing: string[];
}

export interface VmNic {
  id: string;
  mac: string;
  network: 'user';
}

export type VmBoot = { kind: 'kernel'; kernel: string; initrd?: string; cmdline: string } | { kind: 'disk' };

/** The resolved spec a host runs a VM from. */
export interface VmSpec {
  vcpus: number;
  memoryMiB: number;
  /** KiB of RAM beyond memoryMiB (TCG hosts: 8, see qemu/argv.ts); absent means 0. */
  memoryExtraKiB?: number;
  boot: VmBoot;
  disks: VmDisk[];
  nics: VmNic[];
  /** True when the guest is the embedded default guest. */
  defaultGuest: boolean;
  /** False for a guest without a QEMU guest agent: start does not wait for one, exec is refused. Absent means true. */
  guestAgent?: boolean;
  /**
   * The VM's own identity (see src/vm/identity.ts): a machine-id, and whether it still has to be applied
   * in the guest (a clone does at its first boot, once its agent answers).
   */
  identity?: { machineId: string; pending: boolean };
}

/**
 * Guest RAM of a running VM: `owned` is the VM's own file (share=on, the file is
 * its RAM); `derived` maps an immutable template privately (share=off).
 */
export interface VmMemory {
  mode: 'owned' | 'derived';
  file: string;
  templateId: string | null;
}

/** What the host knows about where a running VM's QEMU and files are. */
export interface VmRuntime {
  hostId: string;
  pid: number;
  accel: Accelerator;
  dir: string;
  /** Distinguishes successive QEMU processes of one VM (their sockets carry it). */
  instance: string;
  memory: VmMemory;
  startedAt: string;
}

export interface ForkDisksRequest {
  sourceId: string;
  sourceDisks: VmDisk[];
  childIds: string[];
  /** Past this many deltas above the root image, a new delta is flattened onto the base's parent. */
  maxDepth: number;
  /** Each rename of a disk into a base is logged here first, so a crash can be undone. */
  renameLog?: string;
}

/** A fork made ready while the source runs: template linked, disks split, incoming QEMUs waiting. */
export interface PreparedFork {
  forkId: string;
  templateId: string;
  disks: ForkDisksResult;
  /** The QEMUs waiting for the device state, by VM id (the source's replacement included). */
  incoming: Record<string, VmRuntime>;
}

export interface PrepareForkRequest {
  forkId: string;
  source: { vmId: string; name: string; spec: VmSpec };
  children: Array<{ vmId: string; name: string; spec: VmSpec }>;
  maxDepth: number;
}

/** The switch-over of a fork: the source stopped, its device state saved and loaded into its replacement. */
export interface ForkSwitch {
  runtime: VmRuntime;
  wasRunning: boolean;
  /** vCPUs stopped to vCPUs running again in the replacement, ms. */
  stunMs: number;
  deviceStateBytes: number;
}

export interface ForkDisksResult {
  source: VmDisk[];
  children: Record<string, VmDisk[]>;
  /** Source disks that became read-only bases: where they were and where they are now. */
  frozen: Array<{ from: string; to: string }>;
  /** Block streams to run once the VMs run (disk state inheritance), per VM. */
  streams: Array<{ vmId: string; diskId: string; base: string }>;
}

export interface Identity {
  name: string;
  mac: string | null;
  machineId: string;
  script?: string;
  timeoutMs: number;
}

export interface CustomizeResult {
  ok: boolean;
  error: string | null;
  script: { exitCode: number | null; stdout: string; stderr: string } | null;
  ms: number;
}

export interface VmMemoryStats {
  rssKiB: number;
  pssKiB: number;
  sharedKiB: number;
  privateKiB: number;
}

export interface HostInfo {
  hostId: string;
  accel: Accelerator;
  accelReason: string;
  qemuVersion: string;
  memoryDir: string;
  vmsDir: string;
  /** The folders whose files VMs may use as they are (real paths): the home, the datastores, --allow-images folders. */
  allowedRoots: string[];
  /** How QEMU is confined here, and why not where it is not (see agent/confinement.ts). */
  confinement: { user: string | null; confined: boolean; sandbox: boolean; lazyRestoreConfined: boolean; reasons: string[] };
}

export interface ExecRequest {
  path: string;
  args: string[];
  input?: string; // base64
  env?: string[];
  timeoutMs?: number;
}

export interface ExecResult {
  exitCode: number | null;
  signal: number | null;
  stdout: string; // base64
  stderr: string; // base64
}

/** Why a VM's QEMU went away. `clean` means the guest or an operator powered it off. */
export interface VmExitEvent {
  vmId: string;
  /** The QEMU process that ended (a VM has successive ones). */
  instance: string;
  clean: boolean;
  reason: string;
}

/** What is needed to lay out a new VM's files on the host. */
export interface PrepareVmRequest {
  name: string;
  vcpus: number;
  memoryMiB: number;
  /** KiB of RAM beyond memoryMiB (see VmSpec). */
  memoryExtraKiB?: number;
  boot: { kind: 'default-guest' } | { kind: 'kernel'; kernel: string; initrd?: string; cmdline?: string } | { kind: 'disk'; path: string };
  disks: Array<{ path: string; readOnly: boolean }>;
  network: 'user' | 'none';
  /** False: the guest has no QEMU guest agent. Default true. */
  guestAgent?: boolean;
}

/** A checkpoint file validated by the host (strict reader, disks present and safe). */
export interface CheckpointInspection {
  memoryBytes: number;
  fileBytes: number;
  /** As written at checkpoint time: { vm: { id, name }, spec, createdAt, … }. */
  metadata: Record<string, unknown>;
}

export interface DiskChainEntry {
  path: string;
  format: string;
  virtualSize: number;
  actualSize: number | null;
}

export interface FrozenDisk {
  diskId: string;
  format: 'qcow2' | 'raw';
  /** The frozen image and its backing chain, top first: all read-only from now on. */
  chain: string[];
  /** Content id of the frozen top (stable for a base that never changes). */
  contentId: string;
  virtualSize: number;
}

export interface FreezeResult {
  /** The VM's disks after the freeze (a new delta over each frozen image; unchanged ones as they were). */
  disks: VmDisk[];
  frozen: FrozenDisk[];
  /** Renames done and deltas made, to undo if what follows fails. */
  moves: { from: string; to: string }[];
  deltas: string[];
}
