// The disk half of a fork, done while the source still runs. Each writable
// disk of the source is renamed into a read-only base in <home>/bases (its
// QEMU keeps writing through its open file until the switch-over); the source
// and every child get a new qcow2 delta on it. Each rename is logged first so
// a crash can be undone. Disk state inheritance: when that would put a VM more
// than `maxDepth` deltas above its root image, the fork also returns a block
// stream per VM that copies the base's content into the VM's own delta and
// points it straight at the base's parent, so chains stay bounded however
// often forks are forked. Undo puts everything back as it was.
import { randomUUID } from 'node:crypto';
import { access as fsAccess, appendFile, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { OffshootError } from '../common/index.ts';
import { createImage } from '../qemu/index.ts';
import { diskVirtualSize } from '../storage/index.ts';
import type { HostLayout } from './layout.ts';
import type { QemuAccess } from './qemu-access.ts';
import type { ForkDisksRequest, ForkDisksResult, VmDisk } from './types.ts';

export class ForkUnsupportedDiskError extends OffshootError {
  constructor(vmId: string, disk: VmDisk) {
    super('FORK_UNSUPPORTED_DISK', `disk ${disk.id} (${disk.path}) of VM ${vmId} is a writable disk Offshoot does not own; attach it read-only or import it to fork this VM`, { vmId, disk: disk.id, path: disk.path }, 409);
  }
}

export function assertForkableDisks(vmId: string, disks: VmDisk[]): void {
  for (const disk of disks) if (!disk.readOnly && !disk.owned) throw new ForkUnsupportedDiskError(vmId, disk);
}

function shortId(): string {
  return randomUUID().slice(0, 8);
}

export async function forkDisks(layout: HostLayout, access: QemuAccess, request: ForkDisksRequest): Promise<ForkDisksResult> {
  assertForkableDisks(request.sourceId, request.sourceDisks);
  const result: ForkDisksResult = { source: [], children: Object.fromEntries(request.childIds.map((id) => [id, []])), frozen: [], streams: [] };
  await mkdir(layout.basesDir, { recursive: true });
  try {
    for (const id of request.childIds) await mkdir(layout.vmDir(id), { recursive: true });
    for (const disk of request.sourceDisks) {
      if (disk.readOnly) {
        result.source.push(disk);
        for (const id of request.childIds) result.children[id]?.push({ ...disk, owned: false });
        continue;
      }
      const base = join(layout.basesDir, `${shortId()}-${disk.id}.${disk.format}`);
      // The source still runs and writes its delta: size it now and create the new deltas without
      // opening it (-u); QEMU re-reads it when the incoming VMs activate their disks. A qcow2's size
      // comes from its header (no qemu-img start on the prepare path of every fork and checkpoint).
      const sizeBytes = await diskVirtualSize(disk.path, disk.format);
      if (request.renameLog) await logRename(request.renameLog, { from: disk.path, to: base });
      await rename(disk.path, base);
      result.frozen.push({ from: disk.path, to: base });
      await access.readOnlyFile(base);
      const backing = [base, ...disk.backing];
      const flatten = backing.length > request.maxDepth;
      const deltas = [
        { vmId: request.sourceId, path: join(layout.vmDir(request.sourceId), `${disk.id}-${shortId()}.qcow2`), list: result.source },
        ...request.childIds.map((id) => ({ vmId: id, path: join(layout.vmDir(id), `${disk.id}.qcow2`), list: result.children[id] as VmDisk[] })),
      ];
      // The source's delta first: it is on the stun path; the children's follow in parallel.
      const [first, ...rest] = deltas;
      const make = async (d: (typeof deltas)[number]) => {
        await createImage({ path: d.path, format: 'qcow2', backing: { path: base, format: disk.format }, sizeBytes, unsafeBacking: true });
        d.list.push({ id: disk.id, path: d.path, format: 'qcow2', readOnly: false, owned: true, backing });
        if (flatten && backing[1]) result.streams.push({ vmId: d.vmId, diskId: disk.id, base: backing[1] });
      };
      if (first) await make(first);
      await Promise.all(rest.map(make));
    }
    return result;
  } catch (err) {
    await undoForkDisks(layout, access, request, result);
    throw err;
  }
}

/** Removes the deltas a fork made and moves frozen bases back to where they were. Idempotent. */
export async function undoForkDisks(layout: HostLayout, access: QemuAccess, request: ForkDisksRequest, result: ForkDisksResult): Promise<void> {
  for (const disk of result.source) if (disk.owned && !request.sourceDisks.some((d) => d.path === disk.path)) await rm(disk.path, { force: true });
  for (const id of request.childIds) await rm(layout.vmDir(id), { recursive: true, force: true });
  for (const move of [...result.frozen].reverse()) await moveBack(move, access);
}

async function exists(path: string): Promise<boolean> {
  return fsAccess(path).then(
    () => true,
    () => false,
  );
}

/** Puts a base back where it was (a VM's own disk again), unless that already happened. */
async function moveBack({ from, to }: { from: string; to: string }, access: QemuAccess): Promise<boolean> {
  if (!(await exists(to)) || (await exists(from))) return false;
  await access.writableFile(to);
  await rename(to, from);
  return true;
}

async function logRename(log: string, move: { from: string; to: string }): Promise<void> {
  await mkdir(dirname(log), { recursive: true });
  await appendFile(log, `${JSON.stringify(move)}\n`);
}

/** Undoes every rename in a fork's log that has not been undone yet; returns how many it moved back. */
export async function undoRenameLog(log: string, access: QemuAccess): Promise<number> {
  const text = await readFile(log, 'utf8').catch(() => '');
  let moved = 0;
  for (const line of text.split('\n').filter((l) => l.trim()).reverse()) {
    if (await moveBack(JSON.parse(line) as { from: string; to: string }, access)) moved++;
  }
  return moved;
}
