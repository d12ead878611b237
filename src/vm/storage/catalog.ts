// Datastores and the disks in them: add, list, show (capacity and use),
// remove, rescan (rebuild the disk records from the sidecars alone); disks:
// create blank, import, resize, show the chain, delete (refused while any VM,
// pool or child disk uses it), verify (hash the content and compare with every
// other disk of the same content id, or with a named one).
import { randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import { AlreadyExistsError, NotFoundError } from '../../common/index.ts';
import type { DatastoreUsage, DiskMeta } from '../../storage/index.ts';
import { newContentId } from '../../storage/index.ts';
import { parseRequest } from '../requests.ts';
import type { StorageDeps } from './deps.ts';
import { ContentMismatchError, DatastoreInUseError, DiskInUseError } from './errors.ts';
import type { CopyFile, DatastoreRecord, DiskRecord } from './records.ts';
import { isCopyJobDone } from './records.ts';
import { addDatastoreRequestSchema, createDiskRequestSchema, importDiskRequestSchema, resizeDiskRequestSchema, verifyDiskRequestSchema } from './requests.ts';
import type { DiskChainEntry, FrozenDisk } from '../../agent/index.ts';
import { OffshootError } from '../../common/index.ts';

export interface DatastoreView extends DatastoreRecord {
  usage: DatastoreUsage;
}

export interface DiskView extends DiskRecord {
  chain: DiskChainEntry[];
  users: string[];
}

export function newDiskId(): string {
  return `dsk-${randomBytes(5).toString('hex')}`;
}

/**
 * Disk records for the files of a frozen chain (top first), each a read-only base over the next,
 * with fresh ids; `pathOf` places each (e.g. its copy on a datastore). Only the top's content id is
 * known here; the others get theirs from their source file when registered.
 */
export function frozenChainRecords(f: FrozenDisk, datastore: string, pathOf: (id: string, format: 'qcow2' | 'raw', index: number) => string): DiskRecord[] {
  const createdAt = new Date().toISOString();
  const ids = f.chain.map(() => newDiskId());
  return f.chain.map((_, i) => {
    // Offshoot's chains are qcow2 below the top.
    const format = i === 0 ? f.format : 'qcow2';
    const id = ids[i] as string;
    return { id, name: id, datastore, path: pathOf(id, format, i), format, contentId: i === 0 ? f.contentId : '', parentId: ids[i + 1] ?? null, virtualSize: f.virtualSize, readOnly: true, createdAt };
  });
}

export function diskMeta(disk: DiskRecord): DiskMeta {
  return { version: 1, id: disk.id, name: disk.name, contentId: disk.contentId, parentId: disk.parentId, format: disk.format, virtualSize: disk.virtualSize, readOnly: disk.readOnly, createdAt: disk.createdAt };
}

export class Catalog {
  constructor(private readonly deps: StorageDeps) {}

  async addDatastore(input: unknown): Promise<DatastoreView> {
    const request = parseRequest('datastore', addDatastoreRequestSchema, input);
    // Before anything is created on the host.
    if (await this.deps.storageInventory.getDatastore(request.name)) throw new AlreadyExistsError('datastore', request.name);
    const { path } = await this.deps.storage.initDatastore(request.path, request.name);
    const record: DatastoreRecord = { name: request.name, path, createdAt: new Date().toISOString() };
    try {
      await this.deps.storageInventory.insertDatastore(record);
    } finally {
      await this.syncDatastores();
    }
    // A folder that already holds disks (moved from elsewhere, or re-added) describes them itself.
    await this.rescan(record.name);
    return this.showDatastore(record.name);
  }

  async datastore(name: string): Promise<DatastoreRecord> {
    const ds = await this.deps.storageInventory.getDatastore(name);
    if (!ds) throw new NotFoundError('datastore', name);
    return ds;
  }

  async listDatastores(): Promise<DatastoreView[]> {
    const all = await this.deps.storageInventory.listDatastores();
    return Promise.all(all.map(async (ds) => ({ ...ds, usage: await this.deps.storage.datastoreUsage(ds.path) })));
  }

  async showDatastore(name: string): Promise<DatastoreView> {
    const ds = await this.datastore(name);
    return { ...ds, usage: await this.deps.storage.datastoreUsage(ds.path) };
  }

  /** Forgets a datastore (its files stay); refused while VMs, pools or copy jobs use it. */
  async removeDatastore(name: string): Promise<DatastoreRecord> {
    const ds = await this.datastore(name);
    const users: string[] = [];
    for (const disk of await this.deps.storageInventory.listDisks(name)) users.push(...(await this.usersOf(disk)).filter((u) => !u.startsWith('disk ')));
    for (const pool of await this.deps.storageInventory.listPools()) if (pool.datastore === name) users.push(`pool ${pool.name}`);
    for (const job of await this.deps.storageInventory.listCopyJobs()) if (job.datastore === name && !isCopyJobDone(job.state)) users.push(`copy job ${job.id}`);
    if (users.length) throw new DatastoreInUseError(name, [...new Set(users)]);
    await this.deps.storageInventory.deleteDatastore(name);
    await this.syncDatastores();
    return ds;
  }

  /** Tells the host which datastore folders exist (they are where VMs may use files). */
  private async syncDatastores(): Promise<void> {
    await this.deps.storage.useDatastores((await this.deps.storageInventory.listDatastores()).map((d) => d.path));
  }

  async rescan(name: string): Promise<{ datastore: string; disks: DiskRecord[]; problems: { path: string; reason: string }[] }> {
    const ds = await this.datastore(name);
    const scanned = await this.deps.storage.scanDatastore(ds.path);
    const disks: DiskRecord[] = scanned.disks.map(({ path, meta }) => ({ id: meta.id, name: meta.name, datastore: name, path, format: meta.format, contentId: meta.contentId, parentId: meta.parentId, virtualSize: meta.virtualSize, readOnly: meta.readOnly, createdAt: meta.createdAt }));
    await this.deps.storageInventory.replaceDisks(name, disks);
    return { datastore: name, disks, problems: scanned.problems };
  }

  async resolveDisk(ref: string): Promise<DiskRecord> {
    const byId = await this.deps.storageInventory.getDisk(ref);
    if (byId) return byId;
    const [ds, name] = ref.split('/');
    if (ds && name) {
      const found = (await this.deps.storageInventory.listDisks(ds)).find((d) => d.name === name);
      if (found) return found;
    }
    throw new NotFoundError('disk', ref);
  }

  listDisks(datastore?: string): Promise<DiskRecord[]> {
    return this.deps.storageInventory.listDisks(datastore);
  }

  async showDisk(ref: string): Promise<DiskView> {
    const disk = await this.resolveDisk(ref);
    return { ...disk, chain: await this.deps.storage.diskChain(disk.path), users: await this.usersOf(disk) };
  }

  /** VMs whose disks (or their backing chains) include this disk, pools copying it, and disks over it. */
  async usersOf(disk: DiskRecord): Promise<string[]> {
    const users: string[] = [];
    for (const vm of await this.deps.inventory.listVms()) {
      if (vm.spec.disks.some((d) => d.path === disk.path || d.backing.includes(disk.path))) users.push(`VM ${vm.name}`);
    }
    for (const child of await this.deps.storageInventory.listDisks(disk.datastore)) if (child.parentId === disk.id) users.push(`disk ${child.datastore}/${child.name}`);
    for (const job of await this.deps.storageInventory.listCopyJobs()) {
      if (!isCopyJobDone(job.state) && job.files.some((f) => f.source === disk.path)) users.push(`copy job ${job.id}`);
    }
    return users;
  }

  private async newDiskRecord(datastore: DatastoreRecord, name: string, format: 'qcow2' | 'raw', virtualSize: number): Promise<DiskRecord> {
    const existing = (await this.deps.storageInventory.listDisks(datastore.name)).find((d) => d.name === name);
    if (existing) throw new OffshootError('ALREADY_EXISTS', `disk "${datastore.name}/${name}" already exists`, { kind: 'disk', name: `${datastore.name}/${name}` }, 409);
    const id = newDiskId();
    return { id, name, datastore: datastore.name, path: join(datastore.path, 'disks', `${id}.${format}`), format, contentId: newContentId(), parentId: null, virtualSize, readOnly: false, createdAt: new Date().toISOString() };
  }

  /** Registers a disk whose file exists: sidecar first (the datastore's truth), then the record. */
  async register(disk: DiskRecord): Promise<DiskRecord> {
    await this.deps.storage.writeDiskMeta(disk.path, diskMeta(disk));
    try {
      await this.deps.storageInventory.insertDisk(disk);
    } catch (err) {
      await this.deps.storage.removeDisk(disk.path);
      throw err;
    }
    return disk;
  }

  async createDisk(input: unknown): Promise<DiskRecord> {
    const request = parseRequest('disk', createDiskRequestSchema, input);
    const ds = await this.datastore(request.datastore);
    const disk = await this.newDiskRecord(ds, request.name, request.format, request.size);
    await this.deps.storage.createDisk(disk.path, disk.format, disk.virtualSize);
    return this.register(disk);
  }

  async importDisk(input: unknown): Promise<DiskRecord> {
    const request = parseRequest('disk import', importDiskRequestSchema, input);
    const ds = await this.datastore(request.datastore);
    const disk = await this.newDiskRecord(ds, request.name, request.format, 0);
    try {
      const { virtualSize } = await this.deps.storage.importDisk(request.source, disk.path, request.format);
      return await this.register({ ...disk, virtualSize });
    } catch (err) {
      await this.deps.storage.removeDisk(disk.path);
      throw err;
    }
  }

  async resizeDisk(ref: string, input: unknown): Promise<DiskRecord> {
    const { size } = parseRequest('disk resize', resizeDiskRequestSchema, input);
    const disk = await this.resolveDisk(ref);
    const users = await this.usersOf(disk);
    if (users.length) throw new DiskInUseError(`${disk.datastore}/${disk.name}`, users);
    if (disk.readOnly) throw new OffshootError('DISK_READ_ONLY', `disk ${disk.datastore}/${disk.name} is a read-only base; its content never changes`, { disk: disk.id }, 409);
    if (size < disk.virtualSize) throw new OffshootError('DISK_SHRINK_REFUSED', `shrinking disk ${disk.datastore}/${disk.name} from ${disk.virtualSize} to ${size} bytes would cut off data; Offshoot only grows disks`, { disk: disk.id, from: disk.virtualSize, to: size }, 409);
    await this.deps.storage.resizeDisk(disk.path, size);
    const updated = await this.deps.storageInventory.updateDisk(disk.id, { virtualSize: size, contentId: newContentId() });
    await this.deps.storage.writeDiskMeta(updated.path, diskMeta(updated));
    return updated;
  }

  /** Deletes a disk nothing uses (`exceptJob`: the copy job moving it, which is what deletes it). */
  async deleteDisk(ref: string, exceptJob?: string): Promise<DiskRecord> {
    const disk = await this.resolveDisk(ref);
    const users = (await this.usersOf(disk)).filter((u) => u !== `copy job ${exceptJob}`);
    if (users.length) throw new DiskInUseError(`${disk.datastore}/${disk.name}`, users);
    await this.deps.storageInventory.deleteDisk(disk.id);
    await this.deps.storage.removeDisk(disk.path);
    return disk;
  }

  /** Hashes the disk; with `against`, compares with that disk; otherwise with every disk of the same content id. */
  async verifyDisk(ref: string, input: unknown): Promise<{ disk: string; contentId: string; contentHash: string; compared: { disk: string; contentId: string; contentHash: string; equal: boolean }[] }> {
    const { against } = parseRequest('disk verify', verifyDiskRequestSchema, input);
    const disk = await this.resolveDisk(ref);
    const others = against ? [await this.resolveDisk(against)] : (await this.deps.storageInventory.listDisks()).filter((d) => d.contentId === disk.contentId && d.id !== disk.id);
    const contentHash = await this.deps.storage.hashDisk(disk.path);
    const compared = [];
    for (const other of others) {
      const hash = await this.deps.storage.hashDisk(other.path);
      compared.push({ disk: `${other.datastore}/${other.name}`, contentId: other.contentId, contentHash: hash, equal: hash === contentHash });
    }
    const broken = compared.find((c) => c.contentId === disk.contentId && !c.equal);
    if (broken) throw new ContentMismatchError(`${disk.datastore}/${disk.name}`, broken.disk, { contentId: disk.contentId, hashes: [contentHash, broken.contentHash] });
    return { disk: `${disk.datastore}/${disk.name}`, contentId: disk.contentId, contentHash, compared };
  }

  /**
   * Gives copied chain files their content ids and registers them as disks. With `relink`, each copy
   * is first re-pointed at its copied parent by file name (relative: they sit in one folder, so a later
   * move of the whole set, e.g. out of a pool slot, needs no relink).
   */
  async registerCopies(files: CopyFile[], relink = true): Promise<DiskRecord[]> {
    if (relink) await this.relinkCopies(files);
    const registered: DiskRecord[] = [];
    for (const file of files) {
      // A copy carries its source's content id: equal ids mean equal content.
      const contentId = file.disk.contentId || (await this.deps.storage.baseContentId(file.source));
      registered.push(await this.register({ ...file.disk, path: file.target, contentId }));
    }
    return registered;
  }

  async relinkCopies(files: CopyFile[]): Promise<void> {
    for (const file of files) {
      const parent = files.find((f) => f.disk.id === file.disk.parentId);
      if (file.disk.format === 'qcow2') await this.deps.storage.relinkDisk(file.target, parent ? { path: basename(parent.target), format: parent.disk.format } : null);
    }
  }
}
