// The host-agent interface: everything that touches QEMU processes, files and
// memory on one host. The daemon's orchestration (src/vm) only talks to this
// interface; today the implementation is in-process (LocalHostAgent), later the
// same calls travel over HTTP to agents on other hosts. Every argument and
// result is plain JSON-safe data for that reason.
import type { LazyStreamResult } from './lazy-restore.ts';
import type { CheckpointInspection } from './types.ts';
import type { CustomizeResult, ExecRequest, ExecResult, ForkDisksRequest, ForkDisksResult, ForkSwitch, HostInfo, Identity, PrepareForkRequest, PreparedFork, PrepareVmRequest, VmExitEvent, VmMemoryStats, VmRuntime, VmSpec } from './types.ts';

export interface HostAgent {
  readonly hostId: string;

  hostInfo(): Promise<HostInfo>;

  /** Validates inputs and creates the VM's folder and disks; returns the resolved spec. Leaves nothing behind on failure. */
  prepareVm(vmId: string, request: PrepareVmRequest): Promise<VmSpec>;

  /** Starts QEMU for the VM and returns once QMP answers and the guest is running. */
  startVm(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime>;

  /** Waits until the guest agent answers (boot complete). */
  waitForGuestAgent(vmId: string, timeoutMs: number): Promise<void>;

  /**
   * Re-attaches to a QEMU left running by a previous daemon. Returns its run status, or undefined if it is
   * gone (or was killed because it cannot continue: a lazy restore whose stream died with the daemon).
   */
  adoptVm(vmId: string, runtime: VmRuntime): Promise<'running' | 'paused' | undefined>;

  pauseVm(vmId: string): Promise<void>;
  resumeVm(vmId: string): Promise<void>;

  /** ACPI power-down; kills QEMU if the guest has not powered off within timeoutMs. */
  stopVm(vmId: string, timeoutMs: number): Promise<{ forced: boolean }>;

  /**
   * Pre-staged fork (the fast path): prepare while the source runs, then a short switch-over,
   * then each child loads the device state. abortFork undoes whatever is not yet done.
   */
  prepareFork(request: PrepareForkRequest): Promise<PreparedFork>;
  /**
   * Fork of a fork, in three steps so the control plane can journal the new QEMU before anything moves:
   * start a QEMU with an owned RAM file waiting for a live migration (returns its runtime); migrate the
   * derived VM into it (the source ends stopped, the target paused); switch (the target takes over, resumed
   * if the source ran; the source ends). abortOwnedTarget undoes the first two.
   */
  startOwnedTarget(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime>;
  migrateToOwnedTarget(vmId: string): Promise<{ bytes: number; ms: number }>;
  switchToOwnedTarget(vmId: string): Promise<VmRuntime>;
  abortOwnedTarget(vmId: string): Promise<void>;
  /** Undoes the disk renames a fork logged (crash recovery); idempotent. */
  undoForkRenames(forkId: string): Promise<number>;
  /** The VM's QEMU run state, or undefined if it has none. */
  vmStatus(vmId: string): Promise<'running' | 'paused' | undefined>;
  switchFork(forkId: string): Promise<ForkSwitch>;
  completeForkChild(forkId: string, childId: string): Promise<VmRuntime>;
  abortFork(forkId: string): Promise<void>;
  finishFork(forkId: string): Promise<void>;
  /**
   * Where a new checkpoint's file goes: <home>/checkpoints/NAME.ckpt, or `out` if it is a new file in an
   * existing folder inside an allowed root. ALREADY_EXISTS if the file exists, PATH_NOT_ALLOWED outside.
   */
  checkpointTarget(name: string, out?: string): Promise<string>;
  /**
   * Writes the frozen RAM and device state of a switched-over fork (no children) into the checkpoint file at
   * `path` (from checkpointTarget), never replacing a file (ALREADY_EXISTS if one appeared meanwhile).
   */
  writeCheckpoint(forkId: string, checkpointId: string, path: string, memoryBytes: number, metadata: Record<string, unknown>, onProgress?: (p: { blocksDone: number; blockCount: number; bytesWritten: number }) => void): Promise<{ fileBytes: number; storedPages: number }>;
  /**
   * Restores a checkpoint as a new VM: returns once it runs. Leaves nothing on failure. Eager loads all
   * memory first; lazy runs the VM first and keeps streaming its memory from the file afterwards (see
   * lazy-restore.ts): wait for that with waitForRestoreStream.
   */
  restoreVm(vmId: string, name: string, checkpointPath: string, spec: VmSpec, mode?: 'eager' | 'lazy'): Promise<{ runtime: VmRuntime; spec: VmSpec }>;
  /**
   * Waits until a lazy restore's background stream is complete (the checkpoint is no longer needed);
   * null when the VM has no stream in progress. If the stream fails, the VM's QEMU has been killed
   * (its exit is reported as a crash naming the cause) and this throws the cause.
   */
  waitForRestoreStream(vmId: string, onProgress?: (blocksDone: number, blockCount: number) => void): Promise<LazyStreamResult | null>;
  /** Removes a checkpoint's file (only if it is that checkpoint) and its temporary files; true if the file went. */
  removeCheckpointFile(checkpoint: { path: string; id: string; createdAt: string }): Promise<boolean>;
  /** Validates a checkpoint file given by path: the strict reader, then its frozen disks exist and pass the safe-image check. */
  inspectCheckpoint(path: string): Promise<CheckpointInspection>;
  /** Cancels a checkpoint write in progress (its partial file goes); false if none runs for that fork. */
  cancelCheckpointWrite(forkId: string): Promise<boolean>;

  /** Kills a QEMU of the VM other than its tracked one (left by an interrupted operation). */
  killStray(vmId: string, runtime: VmRuntime): Promise<boolean>;

  /** Undoes the disk split of a fork (crash recovery before its switch-over). */
  undoForkDisks(request: ForkDisksRequest, result: ForkDisksResult): Promise<void>;

  /** Copies `base`'s content into the VM's disk and points the disk at base's parent (QMP block-stream). */
  streamDisk(vmId: string, diskId: string, base: string): Promise<void>;

  /** Gives a running VM a new identity through its guest agent; never throws, reports. */
  customize(vmId: string, identity: Identity): Promise<CustomizeResult>;

  /** The VM's QEMU memory use from /proc/<pid>/smaps_rollup. */
  memoryStats(vmId: string): Promise<VmMemoryStats>;

  /** Removes memory templates and disk bases nothing uses any more. */
  releaseTemplates(inUse: ReadonlySet<string>): Promise<string[]>;
  releaseBases(inUse: ReadonlySet<string>): Promise<string[]>;
  /** Removes the work folder of an operation (e.g. a fork's device state). */
  removeOperationFiles(operationId: string): Promise<void>;

  /** Kills QEMU at once. */
  killVm(vmId: string): Promise<void>;

  exec(vmId: string, request: ExecRequest): Promise<ExecResult>;

  /** The tail of the VM's serial console. */
  readConsole(vmId: string, maxBytes: number): Promise<string>;

  /** Removes the VM's folder, memory file and owned disks. */
  deleteVmFiles(vmId: string): Promise<void>;

  /**
   * Cleans up after a crash: kills QEMU processes of this host's state folder whose VM is not
   * in `live`, and removes VM folders and memory files whose VM is not in `known`.
   */
  reapOrphans(live: ReadonlySet<string>, known: ReadonlySet<string>): Promise<{ killed: number[]; removed: string[] }>;

  /** Subscribes to QEMU exits (clean power-off, crash, kill from outside). */
  onVmExit(listener: (event: VmExitEvent) => void): () => void;

  /** Disconnects from every VM without stopping any. */
  close(): Promise<void>;
}
