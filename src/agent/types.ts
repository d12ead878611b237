// Types that cross the host-agent seam. They are plain data (JSON-safe), so the
// same interface can later be served over HTTP by an agent on another host.

export type Accelerator = 'kvm' | 'tcg';

/** A disk as attached to the VM. `owned` disks live in the VM's folder and are deleted with it. */
export interface VmDisk {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  owned: boolean;
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
  boot: VmBoot;
  disks: VmDisk[];
  nics: VmNic[];
  /** True when the guest is the embedded default guest (its agent is expected to answer). */
  defaultGuest: boolean;
}

/** What the host knows about where a running VM's QEMU and files are. */
export interface VmRuntime {
  hostId: string;
  pid: number;
  accel: Accelerator;
  dir: string;
  memoryFile: string;
  startedAt: string;
}

export interface HostInfo {
  hostId: string;
  accel: Accelerator;
  accelReason: string;
  qemuVersion: string;
  memoryDir: string;
  vmsDir: string;
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
  clean: boolean;
  reason: string;
}

/** What is needed to lay out a new VM's files on the host. */
export interface PrepareVmRequest {
  name: string;
  vcpus: number;
  memoryMiB: number;
  boot: { kind: 'default-guest' } | { kind: 'kernel'; kernel: string; initrd?: string; cmdline?: string } | { kind: 'disk'; path: string };
  disks: Array<{ path: string; readOnly: boolean }>;
  network: 'user' | 'none';
}
