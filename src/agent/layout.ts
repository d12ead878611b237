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

  constructor(readonly home: string, memoryDir?: string) {
    this.vmsDir = join(home, 'vms');
    this.imagesDir = join(home, 'images');
    this.memoryDir = memoryDir ?? join('/dev/shm', `offshoot-${createHash('sha256').update(home).digest('hex').slice(0, 12)}`);
    this.accelCacheFile = join(home, 'accel.json');
  }

  vmDir(vmId: string): string {
    return join(this.vmsDir, vmId);
  }

  vmFiles(vmId: string) {
    const dir = this.vmDir(vmId);
    const files = {
      dir,
      qmpSocket: join(dir, 'qmp.sock'),
      qgaSocket: join(dir, 'qga.sock'),
      consoleLog: join(dir, 'console.log'),
      qemuLog: join(dir, 'qemu.log'),
      pidFile: join(dir, 'qemu.pid'),
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
