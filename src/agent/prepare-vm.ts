// Lays out a new VM's files on the host: validates the kernel and disk paths it
// was given (regular files inside the allowed roots, see path-policy.ts; a
// writable disk must be writable), installs the embedded default guest's base image once per host
// (read-only; each VM gets its own qcow2 delta on it), and creates the VM's
// folder. On any failure the folder is removed, so nothing is left behind.
import { access, chmod, copyFile, mkdir, realpath, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { loadDefaultGuest } from '../guest/index.ts';
import { createImage } from '../qemu/index.ts';
import { inspectImage } from '../storage/index.ts';
import type { HostLayout } from './layout.ts';
import type { PathPolicy } from './path-policy.ts';
import type { PrepareVmRequest, VmDisk, VmNic, VmSpec } from './types.ts';
import { randomBytes } from 'node:crypto';

/** A random unicast, locally administered MAC in QEMU's 52:54:00 range. */
export function newMac(): string {
  return ['52', '54', '00', ...Array.from(randomBytes(3), (x) => x.toString(16).padStart(2, '0'))].join(':');
}

/**
 * Reads the image's header and backing chain itself before QEMU may open it: the chain must stay in
 * the image's own folder (its datastore), not loop, declare every format and use no external data file.
 */
async function inspectUserImage(path: string): Promise<{ format: 'qcow2' | 'raw'; backing: string[] }> {
  const image = await inspectImage(path, { allowedRoots: [dirname(await realpath(path))] });
  return { format: image.format, backing: image.chain.map((c) => c.path) };
}

/** The default guest's kernel, initrd and data disk, copied once into <home>/images/default-guest-<hash>/. */
export function installDefaultGuest(layout: HostLayout): Promise<InstalledGuest> {
  // One install at a time per process; concurrent creates share it.
  const pending = installs.get(layout.imagesDir) ?? installOnce(layout).finally(() => installs.delete(layout.imagesDir));
  installs.set(layout.imagesDir, pending);
  return pending;
}

interface InstalledGuest {
  kernel: string;
  initrd: string;
  dataDisk: string;
  cmdline: string;
}

const installs = new Map<string, Promise<InstalledGuest>>();

async function installOnce(layout: HostLayout): Promise<InstalledGuest> {
  const guest = await loadDefaultGuest();
  const inputsHash = basename(await realpath(guest.dir));
  const dir = join(layout.imagesDir, `default-guest-${inputsHash}`);
  const target = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), dataDisk: join(dir, 'data.qcow2') };
  try {
    await access(join(dir, '.complete'));
  } catch {
    const tmp = `${dir}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    await copyFile(guest.kernel, join(tmp, 'vmlinuz'));
    await copyFile(guest.initrd, join(tmp, 'initrd.img'));
    await copyFile(guest.dataDisk, join(tmp, 'data.qcow2'));
    // Read-only, private: shared with QEMU's group when a VM starts (qemu-access.ts).
    for (const f of ['vmlinuz', 'initrd.img', 'data.qcow2']) await chmod(join(tmp, f), 0o400);
    await writeFile(join(tmp, '.complete'), `${guest.dir}\n`);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  }
  return { ...target, cmdline: guest.cmdline };
}

export async function prepareVmFiles(layout: HostLayout, policy: PathPolicy, vmId: string, request: PrepareVmRequest): Promise<VmSpec> {
  const files = layout.vmFiles(vmId);
  // Validate everything before creating anything: every file inside the allowed roots, regular, readable.
  if (request.boot.kind === 'kernel') {
    await policy.allowedFile('kernel.path', request.boot.kernel);
    if (request.boot.initrd) await policy.allowedFile('kernel.initrd', request.boot.initrd);
  }
  if (request.boot.kind === 'disk') await policy.allowedFile('bootDisk', request.boot.path, { writable: true });
  const extra: Array<{ path: string; readOnly: boolean; format: 'qcow2' | 'raw'; backing: string[] }> = [];
  for (const [i, disk] of request.disks.entries()) {
    await policy.allowedFile(`disks.${i}.path`, disk.path, { writable: !disk.readOnly });
    extra.push({ ...disk, ...(await inspectUserImage(disk.path)) });
  }
  const bootImage = request.boot.kind === 'disk' ? await inspectUserImage(request.boot.path) : undefined;

  await mkdir(layout.vmsDir, { recursive: true });
  await mkdir(files.dir);
  try {
    const disks: VmDisk[] = [];
    let boot: VmSpec['boot'];
    if (request.boot.kind === 'default-guest') {
      const guest = await installDefaultGuest(layout);
      const delta = join(files.dir, 'disk0.qcow2');
      await createImage({ path: delta, format: 'qcow2', backing: { path: guest.dataDisk, format: 'qcow2' } });
      disks.push({ id: 'disk0', path: delta, format: 'qcow2', readOnly: false, owned: true, backing: [guest.dataDisk] });
      boot = { kind: 'kernel', kernel: guest.kernel, initrd: guest.initrd, cmdline: `${guest.cmdline} offshoot.hostname=${request.name}` };
    } else if (request.boot.kind === 'kernel') {
      boot = { kind: 'kernel', kernel: request.boot.kernel, cmdline: request.boot.cmdline ?? 'console=ttyS0' };
      if (request.boot.initrd) boot.initrd = request.boot.initrd;
    } else {
      disks.push({ id: 'disk0', path: request.boot.path, format: bootImage?.format ?? 'raw', readOnly: false, owned: false, backing: bootImage?.backing ?? [] });
      boot = { kind: 'disk' };
    }
    for (const disk of extra) {
      disks.push({ id: `disk${disks.length}`, path: disk.path, format: disk.format, readOnly: disk.readOnly, owned: false, backing: disk.backing });
    }
    const nics: VmNic[] = request.network === 'user' ? [{ id: 'net0', mac: newMac(), network: 'user' }] : [];
    return { vcpus: request.vcpus, memoryMiB: request.memoryMiB, ...(request.memoryExtraKiB ? { memoryExtraKiB: request.memoryExtraKiB } : {}), boot, disks, nics, defaultGuest: request.boot.kind === 'default-guest', guestAgent: request.guestAgent !== false };
  } catch (err) {
    await rm(files.dir, { recursive: true, force: true });
    throw err;
  }
}
