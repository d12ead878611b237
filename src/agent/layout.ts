// Where a host keeps its files: one folder per VM under <home>/vms, base images
// under <home>/images, guest RAM files in the memory directory (tmpfs by
// default, so the file *is* the guest's RAM, see DESIGN.md "The memory model").
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { OffshootError } from '../common/index.ts';

/** Linux limits a unix socket path to 107 bytes. */
const MAX_SOCKET_PATH = 107;

export class HostLayout {
  readonly vmsDir: string;
  readonly imagesDir: string;
  readonly memoryDir: string;
  readonly accelCacheFile: string;
  /** Frozen disks (read-only bases) shared by forked VMs. */
  readonly basesDir: string;
  /** Scratch space of operations in flight (fork device state). */
  readonly workDir: string;
  /** Checkpoint files written without --out. */
  readonly checkpointsDir: string;

  constructor(readonly home: string, memoryDir?: string) {
    this.vmsDir = join(home, 'vms');
    this.imagesDir = join(home, 'images');
    this.memoryDir = memoryDir ?? join('/dev/shm', `offshoot-${createHash('sha256').update(home).digest('hex').slice(0, 12)}`);
    this.accelCacheFile = join(home, 'accel.json');
    this.basesDir = join(home, 'bases');
    this.workDir = join(home, 'work');
    this.checkpointsDir = join(home, 'checkpoints');
  }

  vmDir(vmId: string): string {
    return join(this.vmsDir, vmId);
  }

  /** The files of one VM; sockets are per QEMU instance, so two QEMUs of a VM can overlap (local migration). */
  vmFiles(vmId: string, instance = '0') {
    const dir = this.vmDir(vmId);
    const files = {
      dir,
      qmpSocket: join(dir, `qmp-${instance}.sock`),
      qgaSocket: join(dir, `qga-${instance}.sock`),
      migrationSocket: join(dir, `mig-${instance}.sock`),
      consoleLog: join(dir, 'console.log'),
      qemuLog: join(dir, 'qemu.log'),
      pidFile: join(dir, `qemu-${instance}.pid`),
      /** The VM's own RAM file (owned mode). */
      memoryFile: join(this.memoryDir, `${vmId}.ram`),
    };
    for (const socket of [files.qmpSocket, files.qgaSocket]) {
      if (socket.length > MAX_SOCKET_PATH) {
        throw new OffshootError('HOME_PATH_TOO_LONG', `socket path ${socket} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter OFFSHOOT_HOME`, { socket }, 500);
      }
    }
    return files;
  }
}
