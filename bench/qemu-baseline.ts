// Helpers for the baselines that drive QEMU by hand (no Offshoot): the
// hand-written command line that boots the default guest (with extra data
// disks when asked), connecting to a freshly started QEMU's QMP socket, and
// waiting for a migration to complete.
import type { GuestImage } from '../src/guest/index.ts';
import { QmpClient } from '../src/qemu/index.ts';

export interface RawGuestOptions {
  accel: string;
  memoryMiB: number;
  guest: GuestImage;
  disk: string;
  qgaSocket: string;
  /** Serial console: a file path, or none. */
  console?: string;
  qmpSocket?: string;
  incoming?: boolean;
  /** Start with the vCPUs stopped (-S): the caller runs the guest with `cont`. */
  paused?: boolean;
  /** More qcow2 disks after `disk`. With them, the drives' nodes are named disk0 (`disk`), disk1, ... for QMP. */
  extraDisks?: string[];
  /** The CPU model Offshoot uses (host under KVM, max under TCG); QEMU's default otherwise. */
  offshootCpu?: boolean;
  /** Guest RAM as a shared memory-backend-file at this path, as Offshoot does; anonymous RAM otherwise. */
  memoryFile?: string;
  /** The NIC (user networking) and RNG devices an Offshoot VM has. */
  offshootDevices?: boolean;
}

/** A qemu-system-x86_64 argv booting the embedded default guest, written without Offshoot's argv builder. */
export function rawGuestArgs(o: RawGuestOptions): string[] {
  return [
    '-accel', o.accel,
    ...(o.offshootCpu ? ['-cpu', o.accel === 'kvm' ? 'host' : 'max'] : []),
    '-machine', o.memoryFile ? 'q35,memory-backend=ram0' : 'q35', '-m', `${o.memoryMiB}M`,
    ...(o.memoryFile ? ['-object', `memory-backend-file,id=ram0,size=${o.memoryMiB}M,mem-path=${o.memoryFile},share=on`] : []),
    '-nodefaults', '-display', 'none', '-no-user-config', '-serial', o.console ? `file:${o.console}` : 'null',
    '-kernel', o.guest.kernel, '-initrd', o.guest.initrd, '-append', o.guest.cmdline,
    ...[o.disk, ...(o.extraDisks ?? [])].flatMap((file, i) => ['-drive', `file=${file},if=virtio,format=qcow2${o.extraDisks ? `,node-name=disk${i}` : ''}`]),
    '-device', 'virtio-serial-pci', '-chardev', `socket,id=qga0,path=${o.qgaSocket},server=on,wait=off`,
    '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
    ...(o.offshootDevices ? ['-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0', '-device', 'virtio-rng-pci'] : []),
    ...(o.qmpSocket ? ['-qmp', `unix:${o.qmpSocket},server=on,wait=off`] : []),
    ...(o.incoming ? ['-incoming', 'defer'] : []),
    ...(o.paused ? ['-S'] : []),
  ];
}

export async function connectQmpWhenReady(path: string, timeoutMs = 10_000): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 }).catch(() => undefined);
    if (qmp) return qmp;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`QMP at ${path} did not come up within ${timeoutMs} ms`);
}

export async function waitForMigrationDone(qmp: QmpClient): Promise<void> {
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
