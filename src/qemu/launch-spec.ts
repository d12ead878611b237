// The typed input of one QEMU process: everything argv.ts needs to build the
// command line of a VM's QEMU. It says nothing about how the files named here
// came to be (the memory and storage layers own that); it only describes one
// launch, so a fork child, a restore and a cold boot are all just specs.

export type Accelerator = 'kvm' | 'tcg';

export interface QemuDiskSpec {
  /** Block node name (and device id). QMP block jobs address the disk by it. */
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  readOnly?: boolean;
}

export interface QemuNicSpec {
  /** Netdev id and device id. */
  id: string;
  /** Unicast MAC, "52:54:00:12:34:56". */
  mac: string;
  network: 'user';
}

export type QemuBootSpec =
  | { kind: 'kernel'; kernel: string; initrd?: string; cmdline?: string }
  | { kind: 'disk' };

export interface QemuMemorySpec {
  /** memory-backend-file mem-path. */
  path: string;
  /**
   * true: the VM's own file ("owned", share=on): the file is the guest's RAM.
   * false: a private copy-on-write mapping of an immutable template ("derived",
   * share=off): writes stay in this process, the file is never modified.
   */
  share: boolean;
}

export interface QemuLaunchSpec {
  /** Goes into `-name guest=NAME,process=offshoot-<vmId>` so the process can be found in /proc. */
  vmId: string;
  name: string;
  accel: Accelerator;
  vcpus: number;
  memoryMiB: number;
  /**
   * KiB of guest RAM beyond memoryMiB (default 0): the RAM block is then not a multiple of 256 KiB,
   * which keeps QEMU 7.2's TCG from losing guest writes during a live migration (see argv.ts).
   */
  memoryExtraKiB?: number;
  memory: QemuMemorySpec;
  boot: QemuBootSpec;
  /** virtio-blk via -blockdev with node-name = id. */
  disks: QemuDiskSpec[];
  /** virtio-net-pci + -netdev user. */
  nics: QemuNicSpec[];
  qmpSocket: string;
  qgaSocket: string;
  /** The guest's serial console is appended to this file. */
  consoleLog: string;
  pidFile: string;
  /** 'defer': start waiting for `migrate-incoming` (fork children, restore). */
  incoming?: 'defer';
  /**
   * Start with the vCPUs stopped (-S); QMP `cont` starts them. With
   * `incoming`, the VM then stays paused after the incoming migration
   * finishes instead of running at once.
   */
  paused?: boolean;
  /** virtio-rng-pci; default true. */
  rng?: boolean;
  /**
   * QEMU's seccomp sandbox: the value of `-sandbox` (e.g. "on,obsolete=deny,elevateprivileges=deny,
   * spawn=deny,resourcecontrol=deny"); none when absent. With spawn=deny QEMU can run no program, so
   * no `exec:` migration URI works: migrate over unix sockets instead.
   */
  sandbox?: string;
  /**
   * TCG's translation buffer (tb-size) in MiB, for a VM whose translated code should stay cached (a pool
   * child of the elastic fabric); default: DERIVED_TCG_TB_MIB for a derived VM, QEMU's own otherwise.
   */
  tcgTranslationMiB?: number;
  /**
   * Machine type, default 'q35' (the newest q35 of this QEMU). Pin a versioned
   * type (e.g. 'pc-q35-7.2') when restoring device state saved by an older QEMU.
   */
  machine?: string;
}

/** The virtio-serial port name qemu-ga listens on inside the guest. */
export const GUEST_AGENT_PORT = 'org.qemu.guest_agent.0';

/** Prefix of the `process=` value of `-name`; followed by the VM id. */
export const PROCESS_NAME_PREFIX = 'offshoot-';
