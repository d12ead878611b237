// Who may open which file: guest memory and the home are private to their
// owner, and a confined QEMU (see confinement.ts) gets exactly the access it
// needs, through ownership by its user or its group:
//
//   <home>                 0710 root:offshoot-qemu (0700 without a QEMU user)
//   <home>/vms, images,    0710 root:offshoot-qemu  (search only, no listing)
//     bases, images/*
//   <home>/vms/<vm>        0700 offshoot-qemu  QEMU makes its sockets, pid file
//                                              and console log there
//   a VM's own disks       0600 offshoot-qemu
//   bases, default guest   0440 root:offshoot-qemu (read-only for QEMU)
//   <memory dir>, its      0700 offshoot-qemu  RAM files 0600 (QEMU creates them;
//     templates/                               the daemon's umask is 077)
//   <home>/net/keys/<op>   0700 offshoot-qemu  a migration's one-time TLS-PSK key
//                                              (keys.psk 0600), gone with its path
//   everything else        0600 / 0700 root (inventory, log, token, work, checkpoints)
//
// Before each QEMU starts, every file of its spec is shared as it needs it
// (prepareLaunch): written files owned by the QEMU user, read-only files
// readable by its group, and every folder above them searchable. Folders and
// files inside the home, the memory folder and the datastores are adjusted;
// anything else (an --allow-images folder) only gets the group's read (or
// write) bit when its group is root, else QEMU_CANNOT_ACCESS says what to fix.
// A template stays writable by its owner: QEMU 7.2 opens a share=off
// memory-backend-file read-write (a private read-only mapping needs 8.2's
// rom=off); nothing maps it share=on. Without a QEMU user (unconfined) only
// the private modes apply.
import { chmod, chown, mkdir, readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { OffshootError } from '../common/index.ts';
import type { QemuUser } from './confinement.ts';
import { canReachAs, searchableBy } from './confinement.ts';
import type { HostLayout } from './layout.ts';
import { isInside } from './path-policy.ts';
import type { PathPolicy } from './path-policy.ts';
import type { VmBoot, VmDisk, VmMemory } from './types.ts';

export class QemuAccessError extends OffshootError {
  constructor(path: string, blocking: string, user: string) {
    super('QEMU_CANNOT_ACCESS', `QEMU (user ${user}) cannot reach ${path}: ${blocking} does not let it in; give the ${user} group search (x) and read permission there, or import the disk into a datastore`, { path, blocking, user }, 409);
  }
}

const DAEMON_FILES = ['inventory.sqlite', 'inventory.sqlite-wal', 'inventory.sqlite-shm', 'daemon.log', 'token', 'daemon.json', 'daemon.lock', 'accel.json', 'serve.out'];

export class QemuAccess {
  /** Folders a trial as the QEMU user found reachable (through an ACL the mode bits do not show). */
  private readonly reachable = new Set<string>();

  constructor(
    readonly user: QemuUser | null,
    private readonly layout: HostLayout,
    private readonly policy: PathPolicy,
  ) {}

  /** At start: the home private (and searchable by the QEMU group), the daemon's own files 0600, the memory folder the QEMU user's. */
  async prepareHome(): Promise<void> {
    await this.sharedDir(this.layout.home);
    for (const name of DAEMON_FILES) await chmod(`${this.layout.home}/${name}`, 0o600).catch(() => undefined);
    for (const dir of [this.layout.workDir, this.layout.checkpointsDir]) await chmod(dir, 0o700).catch(() => undefined);
    for (const dir of [this.layout.vmsDir, this.layout.imagesDir, this.layout.basesDir]) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await this.sharedDir(dir);
    }
    await this.ownedDir(this.layout.memoryDir);
  }

  /** A folder QEMU writes into (a VM's folder, the memory folder): made if missing, owned by the QEMU user, 0700. */
  async ownedDir(path: string): Promise<void> {
    await mkdir(path, { recursive: true, mode: 0o700 });
    if (this.user) await chown(path, this.user.uid, this.user.gid);
    await chmod(path, 0o700);
  }

  /** A folder of Offshoot's that QEMU only passes through: root's, searchable by the QEMU group. */
  async sharedDir(path: string): Promise<void> {
    if (this.user) await chown(path, 0, this.user.gid);
    await chmod(path, this.user ? 0o710 : 0o700);
  }

  /** A file QEMU writes (a VM's own disk or RAM file, a template): the QEMU user's, 0600. */
  async writableFile(path: string): Promise<void> {
    if (this.user) await chown(path, this.user.uid, this.user.gid);
    await chmod(path, 0o600);
  }

  /** A file of Offshoot's that QEMU only reads (a base, the default guest's kernel and disk): root's, read-only for the QEMU group. */
  async readOnlyFile(path: string): Promise<void> {
    if (this.user) await chown(path, 0, this.user.gid);
    await chmod(path, this.user ? 0o440 : 0o400);
  }

  /** Before a QEMU starts: its folder, disks, kernel and memory, each shared as QEMU needs it. */
  async prepareLaunch(vmDir: string, spec: { boot: VmBoot; disks: VmDisk[] }, memory: VmMemory): Promise<void> {
    await this.ownedDir(this.layout.memoryDir);
    await this.ownedDir(vmDir);
    await this.reach(vmDir);
    if (memory.mode === 'derived') await this.ownedDir(dirname(memory.file));
    if (await exists(memory.file)) await this.writableFile(memory.file);
    if (!this.user) return;
    const files: Array<{ path: string; write: boolean; owned: boolean }> = [];
    for (const disk of spec.disks) {
      files.push({ path: disk.path, write: !disk.readOnly, owned: disk.owned });
      for (const b of disk.backing) files.push({ path: b, write: false, owned: false });
    }
    if (spec.boot.kind === 'kernel') {
      files.push({ path: spec.boot.kernel, write: false, owned: false });
      if (spec.boot.initrd) files.push({ path: spec.boot.initrd, write: false, owned: false });
    }
    for (const f of files) {
      // A missing file is QEMU's to report (QEMU_START_FAILED, naming it).
      if (!(await exists(f.path))) continue;
      await this.reach(dirname(f.path));
      if (f.owned && f.write) await this.writableFile(f.path);
      else await this.shareFile(f.path, f.write);
    }
  }

  /**
   * A folder of one-time keys QEMU reads (a migration's TLS-PSK credential, in the home): the folders
   * above it searchable by QEMU, the folder and its files the QEMU user's (0700, 0600).
   */
  async credentialFolder(dir: string): Promise<void> {
    await this.reach(dirname(dir));
    await this.ownedDir(dir);
    for (const name of await readdir(dir)) await this.writableFile(join(dir, name));
  }

  /** Folders Offshoot may adjust for QEMU: the home, the memory folder, the datastores (not --allow-images folders). */
  private adjustable(path: string): boolean {
    const allowedDirs = this.policy.allowedImageDirs();
    const own = [this.layout.home, this.layout.memoryDir, ...this.policy.roots().filter((r) => r !== this.policy.home && !allowedDirs.includes(r))];
    return own.some((root) => isInside(path, root));
  }

  /** Makes every folder from `dir` up searchable by the QEMU user, where Offshoot may; QEMU_CANNOT_ACCESS elsewhere. */
  private async reach(dir: string): Promise<void> {
    const user = this.user;
    if (!user) return;
    for (let attempt = 0; attempt < 64; attempt++) {
      const check = searchableBy(user, dir);
      if (check.ok) return;
      const info = await stat(check.blocking);
      if (!this.adjustable(check.blocking) || (info.gid !== 0 && info.gid !== user.gid && info.uid !== user.uid)) {
        // The mode bits say no, but an ACL may say yes (setup.sh lets the QEMU user through /root so).
        if (this.reachable.has(dir) || canReachAs(user, dir)) {
          this.reachable.add(dir);
          return;
        }
        throw new QemuAccessError(dir, check.blocking, user.name);
      }
      if (info.uid !== user.uid) await chown(check.blocking, -1, user.gid);
      await chmod(check.blocking, (info.mode & 0o7777) | (info.uid === user.uid ? 0o100 : 0o010));
    }
  }

  /** A file QEMU reads (or writes) that it does not own: its group gets read (and write), if Offshoot may change it. */
  private async shareFile(path: string, write: boolean): Promise<void> {
    const user = this.user;
    if (!user) return;
    const info = await stat(path);
    const need = write ? 0o060 : 0o040;
    const mode = info.mode & 0o7777;
    if (info.uid === user.uid) {
      if ((mode & (write ? 0o600 : 0o400)) !== (write ? 0o600 : 0o400)) await chmod(path, mode | (write ? 0o600 : 0o400));
      return;
    }
    if (info.gid === user.gid && (mode & need) === need) return;
    if (!this.adjustable(path) && info.gid !== 0 && info.gid !== user.gid) {
      if ((mode & (write ? 0o006 : 0o004)) === (write ? 0o006 : 0o004)) return;
      throw new QemuAccessError(path, path, user.name);
    }
    await chown(path, -1, user.gid);
    // Offshoot's own files lose any access by other users; an operator's file only gains the group's.
    await chmod(path, this.adjustable(path) ? (mode & ~0o027) | need : mode | need);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
