// The in-process StorageAgent: datastore folders, disk files through qemu-img,
// content ids, and the freeze of a VM's disks (rename into a read-only base
// plus a new delta; for a running VM the delta is put on top by a QMP live
// snapshot, so the guest never stops). Every input image is read by
// Offshoot's own header check before qemu-img or QEMU opens it. Datastore
// folders are placed by the path policy (path-policy.ts), which they then
// join as allowed roots; an import reads any regular file the operator names
// (it copies), refused before anything opens it if it is a FIFO, socket or
// device, and its copy is never more readable than its source.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, open, readFile, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import { OffshootError, isNoSpace, toOffshootError, writeFileAtomic } from '../common/index.ts';
import { contentIdOfHash } from '../protocol/index.ts';
import type { QmpClient } from '../qemu/index.ts';
import { QemuImgError, convertImage, createImage, imageInfo, rebaseImage, resizeImage } from '../qemu/index.ts';
import { constants, realpathSync } from 'node:fs';
import type { DiskMeta } from '../storage/index.ts';
import { DatastoreLayout, QCOW2_MAGIC, cancelCopy, datastoreUsage, diskContentHash, diskVirtualSize, initDatastore, inspectImage, isQcow2, qcow2NeverWritten, removeDiskMeta, scanDatastore, writeDiskMeta } from '../storage/index.ts';
import { runCopyWorker } from './copy-runner.ts';
import type { CopyRunFile, CopyRunProgress, CopyRunResult } from './copy-runner.ts';
import type { HostLayout } from './layout.ts';
import { assertRegularFile, isInside } from './path-policy.ts';

const VIRTUAL_FILE_SYSTEMS = ['/proc', '/sys', '/dev'];
import type { PathPolicy } from './path-policy.ts';
import type { QemuAccess } from './qemu-access.ts';
import { liveSnapshot, streamDisk } from './live-disk-ops.ts';
import type { DiskChainEntry, FreezeResult } from './types.ts';
import type { VmDisk } from './types.ts';

export class ImportRefusedError extends OffshootError {
  constructor(path: string, reason: string) {
    super('IMPORT_REFUSED', `cannot import ${path}: ${reason}`, { path, reason }, 422);
  }
}

export class LocalStorageAgent {
  constructor(
    private readonly layout: HostLayout,
    private readonly policy: PathPolicy,
    private readonly qmpOf: (vmId: string) => QmpClient,
    /** How files are shared with a confined QEMU (a live snapshot's overlay is opened by QEMU itself). */
    private readonly access: () => QemuAccess,
  ) {}

  async useDatastores(paths: string[]): Promise<void> {
    this.policy.setDatastores(paths);
  }

  async initDatastore(path: string, name: string): Promise<{ path: string }> {
    const real = await this.policy.checkDatastorePath(path);
    const layout = await initDatastore(real, name);
    this.policy.addDatastore(layout.path);
    return { path: layout.path };
  }

  /** This host's own datastore, a folder the agent chooses in its home (the placement rule keeps people's datastores out of the home). */
  async initDefaultDatastore(name: string): Promise<{ path: string }> {
    const layout = await initDatastore(join(this.layout.home, 'datastores', 'default'), name);
    this.policy.addDatastore(layout.path);
    return { path: layout.path };
  }

  datastoreUsage(path: string) {
    return datastoreUsage(new DatastoreLayout(path));
  }

  scanDatastore(path: string) {
    return scanDatastore(new DatastoreLayout(path));
  }

  async forgetDatastore(path: string): Promise<void> {
    const layout = new DatastoreLayout(path);
    await rm(layout.marker, { force: true });
    for (const dir of [layout.workDir, layout.vmsDir, layout.poolsDir, layout.disksDir]) await rmdir(dir).catch(() => undefined);
    this.policy.removeDatastore(path);
  }

  async createDisk(path: string, format: 'qcow2' | 'raw', sizeBytes: number): Promise<void> {
    try {
      await createImage({ path, format, sizeBytes });
    } catch (err) {
      // qemu-img may leave a file behind (a raw file it could not grow): nothing of a failed create stays.
      await rm(path, { force: true });
      if (isNoSpace(err) || !(err instanceof QemuImgError)) throw toOffshootError(err);
      throw new OffshootError('DISK_CREATE_FAILED', `cannot create a ${format} disk of ${sizeBytes} bytes: ${err.message}`, { format, sizeBytes }, 422, { cause: err });
    }
  }

  async importDisk(source: string, target: string, format: 'qcow2' | 'raw'): Promise<{ virtualSize: number; sourceFormat: string }> {
    const head = Buffer.alloc(512);
    // stat first (it never opens, so a FIFO cannot block), then open without blocking and check again.
    let sourceMode: number;
    try {
      const { mode, size } = await assertRegularFile('source', source);
      sourceMode = mode;
      // /proc and /sys files claim to be regular and empty, and read as something else entirely.
      if (VIRTUAL_FILE_SYSTEMS.some((root) => isInside(resolvePath(source), root)) || VIRTUAL_FILE_SYSTEMS.some((root) => isInside(realpathSync(source), root))) throw new Error('it is on a virtual file system (/proc, /sys, /dev)');
      if (size === 0) throw new Error('it is empty');
    } catch (err) {
      throw new ImportRefusedError(source, (err as Error).message);
    }
    const file = await open(source, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY).catch((err: Error) => {
      throw new ImportRefusedError(source, err.message);
    });
    try {
      if (!(await file.stat()).isFile()) throw new ImportRefusedError(source, 'not a regular file');
      await file.read(head, 0, head.length, 0);
    } finally {
      await file.close();
    }
    let sourceFormat: 'qcow2' | 'raw' | 'vmdk';
    if (head.readUInt32BE(0) === QCOW2_MAGIC) {
      // Its backing chain must stay in its own folder (see storage/safe-image.ts).
      await inspectImage(source, { allowedRoots: [dirname(source)] });
      sourceFormat = 'qcow2';
    } else if (head.subarray(0, 4).toString('latin1') === 'KDMV') {
      sourceFormat = 'vmdk'; // monolithic sparse: its data is inside the file
    } else if (head.subarray(0, 512).toString('latin1').includes('# Disk DescriptorFile')) {
      // A descriptor names extent files anywhere on the host: never follow it.
      throw new ImportRefusedError(source, 'a VMDK descriptor file refers to other files; convert it to a monolithic VMDK, qcow2 or raw first');
    } else {
      sourceFormat = 'raw';
    }
    await convertImage(source, target, { outFormat: format, inFormat: sourceFormat === 'vmdk' ? undefined : sourceFormat });
    // Never more readable than its source, and never by other users.
    await chmod(target, sourceMode & 0o640);
    return { virtualSize: (await imageInfo(target)).virtualSize, sourceFormat };
  }

  async resizeDisk(path: string, sizeBytes: number): Promise<void> {
    await resizeImage(path, sizeBytes);
  }

  async diskChain(path: string): Promise<DiskChainEntry[]> {
    const top = await imageInfo(path, { backingChain: true });
    return [top, ...(top.backingChain ?? [])].map((i) => ({ path: i.filename, format: i.format, virtualSize: i.virtualSize, actualSize: i.actualSize ?? null }));
  }

  writeDiskMeta(path: string, meta: DiskMeta): Promise<void> {
    return writeDiskMeta(path, meta);
  }

  async removeDisk(path: string): Promise<void> {
    await rm(path, { force: true });
    await removeDiskMeta(path);
    const dir = dirname(path);
    const base = basename(path);
    for (const name of await readdir(dir).catch(() => [] as string[])) if (name.startsWith(`${base}.copy`)) await rm(join(dir, name), { force: true });
  }

  hashDisk(path: string): Promise<string> {
    return diskContentHash(path);
  }

  /**
   * Content id of a read-only base, from its content (the same hash as `disk verify`, backing name left
   * out), so equal ids on two hosts mean equal bytes. A base never changes, so the id is kept in
   * <home>/content-ids.json against the file's identity and computed once.
   */
  async baseContentId(path: string): Promise<string> {
    const s = await stat(path, { bigint: true });
    const identity = `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}`;
    const cache = await this.contentIds();
    const known = cache.get(path);
    if (known?.identity === identity) return known.contentId;
    const hash = await diskContentHash(path);
    const contentId = contentIdOfHash(hash);
    cache.set(path, { identity, contentId });
    await this.saveContentIds(cache);
    return contentId;
  }

  private contentIdCache: Promise<Map<string, { identity: string; contentId: string }>> | undefined;

  private contentIds(): Promise<Map<string, { identity: string; contentId: string }>> {
    this.contentIdCache ??= readFile(join(this.layout.home, 'content-ids.json'), 'utf8')
      .then((text) => new Map(Object.entries(JSON.parse(text) as Record<string, { identity: string; contentId: string }>)))
      .catch(() => new Map());
    return this.contentIdCache;
  }

  private async saveContentIds(cache: Map<string, { identity: string; contentId: string }>): Promise<void> {
    // Entries of files that are gone are dropped as the cache is written.
    const live: Record<string, { identity: string; contentId: string }> = {};
    for (const [path, entry] of cache) if (await stat(path).then(() => true, () => false)) live[path] = entry;
    const file = join(this.layout.home, 'content-ids.json');
    await writeFileAtomic(file, JSON.stringify(live));
  }

  async freezeDisks(vmId: string, disks: VmDisk[], running: boolean): Promise<FreezeResult> {
    const result: FreezeResult = { disks: [], frozen: [], moves: [], deltas: [] };
    await mkdir(this.layout.basesDir, { recursive: true });
    try {
      for (const disk of disks) {
        if (disk.readOnly || !disk.owned) {
          result.disks.push(disk);
          if (disk.readOnly) result.frozen.push({ diskId: disk.id, format: disk.format, chain: [disk.path, ...disk.backing], contentId: await this.baseContentId(disk.path), virtualSize: (await imageInfo(disk.path)).virtualSize });
          continue;
        }
        // Read by Offshoot itself (no qemu-img start): the freeze is on the clone's O(1) path.
        const virtualSize = await diskVirtualSize(disk.path, disk.format);
        // A stopped VM's delta with nothing written since it was made: its base is the frozen state already.
        const [below] = disk.backing;
        if (!running && below && disk.format === 'qcow2' && (await qcow2NeverWritten(disk.path))) {
          result.disks.push(disk);
          result.frozen.push({ diskId: disk.id, format: (await isQcow2(below)) ? 'qcow2' : 'raw', chain: [...disk.backing], contentId: await this.baseContentId(below), virtualSize });
          continue;
        }
        const base = join(this.layout.basesDir, `${randomUUID().slice(0, 8)}-${disk.id}.${disk.format}`);
        const delta = join(dirname(disk.path), `${disk.id}-${randomUUID().slice(0, 8)}.qcow2`);
        await createImage({ path: delta, format: 'qcow2', backing: { path: base, format: disk.format }, sizeBytes: virtualSize, unsafeBacking: true });
        result.deltas.push(delta);
        await this.access().writableFile(delta);
        // Running: put the delta on top first (QEMU reopens the old image read-only by its current
        // name), then rename the old image into the base the delta already names.
        if (running) await liveSnapshot(this.qmpOf(vmId), disk.id, delta);
        await rename(disk.path, base);
        result.moves.push({ from: disk.path, to: base });
        await this.access().readOnlyFile(base);
        result.disks.push({ ...disk, path: delta, format: 'qcow2', backing: [base, ...disk.backing] });
        result.frozen.push({ diskId: disk.id, format: disk.format, chain: [base, ...disk.backing], contentId: await this.baseContentId(base), virtualSize });
      }
      return result;
    } catch (err) {
      // A live snapshot cannot be taken back; earlier disks of a running VM stay frozen (still consistent).
      if (!running) await this.undoFreeze(result);
      else for (const delta of result.deltas.filter((d) => !result.disks.some((x) => x.path === d))) await rm(delta, { force: true });
      throw err;
    }
  }

  async undoFreeze(result: FreezeResult): Promise<void> {
    for (const delta of result.deltas) await rm(delta, { force: true });
    for (const move of [...result.moves].reverse()) {
      await this.access().writableFile(move.to).catch(() => undefined);
      await rename(move.to, move.from).catch(() => undefined);
    }
  }

  async createDelta(path: string, backing: { path: string; format: 'qcow2' | 'raw' }): Promise<void> {
    await mkdir(dirname(path), { recursive: true });
    await createImage({ path, format: 'qcow2', backing });
  }

  async relinkDisk(path: string, backing: { path: string; format: 'qcow2' | 'raw' } | null): Promise<void> {
    await rebaseImage(path, backing, { unsafe: true });
  }

  async removeFolder(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }

  async moveFile(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async runCopy(file: CopyRunFile, onProgress: (p: CopyRunProgress) => void, signal?: AbortSignal): Promise<CopyRunResult> {
    await mkdir(dirname(file.target), { recursive: true });
    return runCopyWorker(file, onProgress, signal);
  }

  async cancelCopy(target: string): Promise<void> {
    await cancelCopy(target);
  }

  async streamWholeChain(vmId: string, diskId: string, onProgress?: (p: { offset: number; length: number }) => void): Promise<void> {
    await streamDisk(this.qmpOf(vmId), diskId, { onProgress });
  }
}
