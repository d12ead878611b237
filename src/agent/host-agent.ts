// The host-agent interface: everything that touches QEMU processes, files and
// memory on one host. The daemon's orchestration (src/vm) only talks to this
// interface; today the implementation is in-process (LocalHostAgent), later the
// same calls travel over HTTP to agents on other hosts. Every argument and
// result is plain JSON-safe data for that reason.
import type { ExecRequest, ExecResult, HostInfo, PrepareVmRequest, VmExitEvent, VmRuntime, VmSpec } from './types.ts';

export interface HostAgent {
  readonly hostId: string;

  hostInfo(): Promise<HostInfo>;

  /** Validates inputs and creates the VM's folder and disks; returns the resolved spec. Leaves nothing behind on failure. */
  prepareVm(vmId: string, request: PrepareVmRequest): Promise<VmSpec>;

  /** Starts QEMU for the VM and returns once QMP answers and the guest is running. */
  startVm(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime>;

  /** Waits until the guest agent answers (boot complete). */
  waitForGuestAgent(vmId: string, timeoutMs: number): Promise<void>;

  /** Re-attaches to a QEMU left running by a previous daemon. Returns its run status, or undefined if it is gone. */
  adoptVm(vmId: string, runtime: VmRuntime): Promise<'running' | 'paused' | undefined>;

  pauseVm(vmId: string): Promise<void>;
  resumeVm(vmId: string): Promise<void>;

  /** ACPI power-down; kills QEMU if the guest has not powered off within timeoutMs. */
  stopVm(vmId: string, timeoutMs: number): Promise<{ forced: boolean }>;

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
