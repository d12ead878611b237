// Datastores and the disks in them: add (on a host), attach to more hosts
// (a shared datastore: every host in it sees the same folder), list, show
// (capacity and use), remove, rescan (rebuild the disk records from the
// sidecars alone); disks: create blank, import, resize, show the chain,
// delete (refused while any VM, pool or child disk uses it), verify (hash the
// content and compare with every other disk of the same content id, or with a
// named one). Every file operation goes to the agent of a host that sees the
// datastore; disks are named by reference (`ds.<id>:disks/<disk>.<format>`).
import { randomBytes } from 'node:crypto';
import { NotFoundError, OffshootError } from '../../common/index.ts';
import type { DatastoreUsage, DiskChainEntry, FrozenDisk, Locator } from '../../protocol/index.ts';
import { makeLocator, runOperation } from '../../protocol/index.ts';
import { parseRequest } from '../requests.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn, datastoreHost } from './deps.ts';
import { ContentMismatchError, DatastoreInUseError, DiskInUseError } from './errors.ts';
import type { CopyFile, DatastoreRecord, DiskRecord } from './records.ts';
import { copiedDisk, isCopyJobDone } from './records.ts';
import { addDatastoreRequestSchema, attachDatastoreRequestSchema, createDiskRequestSchema, importDiskRequestSchema, resizeDiskRequestSchema, verifyDiskRequestSchema } from './requests.ts';
import type { DiskMetaData } from '../../protocol/index.ts';

export interface DatastoreView extends DatastoreRecord {
  /** The path on the first host (for people); `hosts` has every host's. */
  path: string;
  kind: 'local' | 'shared';
  usage: DatastoreUsage & { diskCount: number };
}

export interface DiskView extends DiskRecord {
  chain: DiskChainEntry[];
  users: string[];
}

export function newDiskId(): string {
  return `dsk-${randomBytes(5).toString('hex')}`;
}

export function newDatastoreId(): string {
  return `dst-${randomBytes(5).toString('hex')}`;
}

/** The reference of a file in a datastore (the protocol's naming of datastore files). */
export function datastoreFile(datastoreId: string, ...segments: string[]): Locator {
  return makeLocator({ kind: 'datastore', datastoreId }, ...segments);
}

/**
 * Disk records for the files of a frozen chain (top first), each a read-only base over the next,
 * with fresh ids; `fileOf` places each (e.g. its copy on a datastore). Only the top's content id is
 * known here; the others get theirs from their source file when registered.
 */
export function frozenChainRecords(f: FrozenDisk, datastore: string, fileOf: (id: string, format: 'qcow2' | 'raw', index: number) => Locator): DiskRecord[] {
  const createdAt = new Date().toISOString();
  const ids = f.chain.map(() => newDiskId());
  return f.chain.map((_, i) => {
    // Offshoot's chains are qcow2 below the top.
    const format = i === 0 ? f.format : 'qcow2';
    const id = ids[i] as string;
    return { id, name: id, datastore, file: fileOf(id, format, i), format, contentId: i === 0 ? f.contentId : '', parentId: ids[i + 1] ?? null, virtualSize: f.virtualSize, readOnly: true, createdAt };
  });
}

export function diskMeta(disk: DiskRecord): DiskMetaData {
  return { version: 1, id: disk.id, name: disk.name, contentId: disk.contentId, parentId: disk.parentId, format: disk.format, virtualSize: disk.virtualSize, readOnly: disk.readOnly, createdAt: disk.createdAt };
}

export class Catalog {
  constructor(private readonly deps: StorageDeps) {}

  async addDatastore(input: unknown): Promise<DatastoreView> {
    const request = parseRequest('datastore', addDatastoreRequestSchema, input);
    if (await this.deps.storageInventory.getDatastore(request.name)) throw new OffshootError('ALREADY_EXISTS', `datastore "${request.name}" already exists`, { kind: 'datastore', name: request.name }, 409);
    const host = request.host ? await this.deps.engine.fleet.resolve(request.host) : await this.deps.engine.fleet.defaultHost();
    const id = newDatastoreId();
    const { hostPath } = await agentOn(this.deps, host.id).registerDatastore({ datastoreId: id, name: request.name, hostPath: request.path });
    const record: DatastoreRecord = { id, name: request.name, hosts: [{ hostId: host.id, path: hostPath }], createdAt: new Date().toISOString() };
    try {
      await this.deps.storageInventory.insertDatastore(record);
    } catch (err) {
      await agentOn(this.deps, host.id).forgetDatastore({ datastoreId: id }).catch(() => undefined);
      throw err;
    }
    // A folder that already holds disks (moved from elsewhere, or re-added) describes them itself.
    await this.rescan(record.name);
    return this.showDatastore(record.name);
  }

  /** The name of a host's own default datastore. */
  static defaultName(hostName: string): string {
    return `${hostName}-local`.slice(0, 63);
  }

  /** A host's own datastore, made in a folder its agent chooses, the first time the host is seen. */
  async ensureDefaultDatastore(host: { id: string; name: string }): Promise<DatastoreRecord> {
    const name = Catalog.defaultName(host.name);
    const existing = await this.deps.storageInventory.getDatastore(name);
    if (existing) return existing;
    const id = newDatastoreId();
    const { hostPath } = await agentOn(this.deps, host.id).registerDatastore({ datastoreId: id, name });
    const record: DatastoreRecord = { id, name, hosts: [{ hostId: host.id, path: hostPath }], createdAt: new Date().toISOString() };
    await this.deps.storageInventory.insertDatastore(record);
    await this.rescan(name);
    this.deps.logger.info({ host: host.name, datastore: name, path: hostPath }, "made a host's default datastore");
    return record;
  }

  /** Makes a datastore shared: another host that sees the same folder (perhaps at another path) joins it. */
  async attachDatastore(name: string, input: unknown): Promise<DatastoreView> {
    const request = parseRequest('datastore attach', attachDatastoreRequestSchema, input);
    const ds = await this.datastore(name);
    const host = await this.deps.engine.fleet.resolve(request.host);
    if (ds.hosts.some((h) => h.hostId === host.id)) throw new OffshootError('ALREADY_EXISTS', `datastore ${name} is already on host ${host.name}`, { kind: 'datastore host', name: host.name }, 409);
    const { hostPath } = await agentOn(this.deps, host.id).registerDatastore({ datastoreId: ds.id, name: ds.name, hostPath: request.path ?? (ds.hosts[0]?.path as string) });
    await this.deps.storageInventory.updateDatastore(name, { hosts: [...ds.hosts, { hostId: host.id, path: hostPath }] });
    return this.showDatastore(name);
  }

  async datastore(name: string): Promise<DatastoreRecord> {
    const ds = (await this.deps.storageInventory.getDatastore(name)) ?? (await this.deps.storageInventory.listDatastores()).find((d) => d.id === name);
    if (!ds) throw new NotFoundError('datastore', name);
    return ds;
  }

  /** The datastore a disk reference is in. */
  async datastoreOf(file: Locator): Promise<DatastoreRecord | undefined> {
    const match = /^ds\.([^:]+):/.exec(file);
    if (!match) return undefined;
    return (await this.deps.storageInventory.listDatastores()).find((d) => d.id === match[1]);
  }

  private async view(ds: DatastoreRecord): Promise<DatastoreView> {
    const host = datastoreHost(this.deps, ds);
    const usage = await agentOn(this.deps, host).datastoreUsage({ datastoreId: ds.id });
    return { ...ds, path: ds.hosts[0]?.path ?? '', kind: ds.hosts.length > 1 ? 'shared' : 'local', usage: { ...usage, diskCount: usage.disks } };
  }

  async listDatastores(): Promise<DatastoreView[]> {
    const all = await this.deps.storageInventory.listDatastores();
    return Promise.all(all.map((ds) => this.view(ds)));
  }

  async showDatastore(name: string): Promise<DatastoreView> {
    return this.view(await this.datastore(name));
  }

  /** Forgets a datastore (its files stay); refused while VMs, pools or copy jobs use it. */
  async removeDatastore(name: string): Promise<DatastoreRecord> {
    const ds = await this.datastore(name);
    const users: string[] = [];
    for (const disk of await this.deps.storageInventory.listDisks(ds.name)) users.push(...(await this.usersOf(disk)).filter((u) => !u.startsWith('disk ')));
    for (const pool of await this.deps.storageInventory.listPools()) if (pool.datastore === ds.name) users.push(`pool ${pool.name}`);
    for (const job of await this.deps.storageInventory.listCopyJobs()) if (job.datastore === ds.name && !isCopyJobDone(job.state)) users.push(`copy job ${job.id}`);
    if (users.length) throw new DatastoreInUseError(ds.name, [...new Set(users)]);
    await this.deps.storageInventory.deleteDatastore(ds.name);
    for (const h of ds.hosts) await agentOn(this.deps, h.hostId).forgetDatastore({ datastoreId: ds.id }).catch((err: unknown) => this.deps.logger.warn({ err, datastore: ds.name, hostId: h.hostId }, 'cannot tell a host to forget a datastore'));
    return ds;
  }

  async rescan(name: string): Promise<{ datastore: string; disks: DiskRecord[]; problems: { file: string; reason: string }[] }> {
    const ds = await this.datastore(name);
    const scanned = await agentOn(this.deps, datastoreHost(this.deps, ds)).scanDatastore({ datastoreId: ds.id });
    const disks: DiskRecord[] = scanned.disks.map(({ file, meta }) => ({ id: meta.id, name: meta.name, datastore: ds.name, file, format: meta.format, contentId: meta.contentId, parentId: meta.parentId, virtualSize: meta.virtualSize, readOnly: meta.readOnly, createdAt: meta.createdAt }));
    await this.deps.storageInventory.replaceDisks(ds.name, disks);
    return { datastore: ds.name, disks, problems: scanned.problems };
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

  /** The agent of a host that sees the disk's datastore. */
  async agentForDisk(disk: DiskRecord) {
    return agentOn(this.deps, datastoreHost(this.deps, await this.datastore(disk.datastore)));
  }

  async showDisk(ref: string): Promise<DiskView> {
    const disk = await this.resolveDisk(ref);
    const agent = await this.agentForDisk(disk);
    return { ...disk, chain: (await agent.diskChain({ file: disk.file })).chain, users: await this.usersOf(disk) };
  }

  /** VMs whose disks (or their backing chains) include this disk, pools copying it, and disks over it. */
  async usersOf(disk: DiskRecord): Promise<string[]> {
    const users: string[] = [];
    for (const vm of await this.deps.inventory.listVms()) {
      if (vm.spec.disks.some((d) => d.file === disk.file || d.backing.includes(disk.file))) users.push(`VM ${vm.name}`);
    }
    for (const child of await this.deps.storageInventory.listDisks(disk.datastore)) if (child.parentId === disk.id) users.push(`disk ${child.datastore}/${child.name}`);
    for (const job of await this.deps.storageInventory.listCopyJobs()) {
      if (!isCopyJobDone(job.state) && job.files.some((f) => f.source === disk.file)) users.push(`copy job ${job.id}`);
    }
    return users;
  }

  private async newDiskRecord(datastore: DatastoreRecord, name: string, format: 'qcow2' | 'raw', virtualSize: number): Promise<DiskRecord> {
    const existing = (await this.deps.storageInventory.listDisks(datastore.name)).find((d) => d.name === name);
    if (existing) throw new OffshootError('ALREADY_EXISTS', `disk "${datastore.name}/${name}" already exists`, { kind: 'disk', name: `${datastore.name}/${name}` }, 409);
    const id = newDiskId();
    return { id, name, datastore: datastore.name, file: datastoreFile(datastore.id, 'disks', `${id}.${format}`), format, contentId: `cid-${randomBytes(16).toString('hex')}`, parentId: null, virtualSize, readOnly: false, createdAt: new Date().toISOString() };
  }

  /** Registers a disk whose file exists: sidecar first (the datastore's truth), then the record. */
  async register(disk: DiskRecord): Promise<DiskRecord> {
    const agent = await this.agentForDisk(disk);
    await agent.writeDiskMeta({ file: disk.file, meta: diskMeta(disk) });
    try {
      await this.deps.storageInventory.insertDisk(disk);
    } catch (err) {
      await agent.removeDisk({ file: disk.file });
      throw err;
    }
    return disk;
  }

  async createDisk(input: unknown): Promise<DiskRecord> {
    const request = parseRequest('disk', createDiskRequestSchema, input);
    const ds = await this.datastore(request.datastore);
    const disk = await this.newDiskRecord(ds, request.name, request.format, request.size);
    await agentOn(this.deps, datastoreHost(this.deps, ds)).createDisk({ datastoreId: ds.id, diskId: disk.id, format: disk.format, sizeBytes: disk.virtualSize });
    return this.register(disk);
  }

  async importDisk(input: unknown): Promise<DiskRecord> {
    const request = parseRequest('disk import', importDiskRequestSchema, input);
    const ds = await this.datastore(request.datastore);
    const disk = await this.newDiskRecord(ds, request.name, request.format, 0);
    const agent = agentOn(this.deps, datastoreHost(this.deps, ds, request.host ? (await this.deps.engine.fleet.resolve(request.host)).id : undefined));
    try {
      const { virtualSize } = await runOperation(agent, 'importDisk', { datastoreId: ds.id, diskId: disk.id, format: request.format, source: request.source });
      return await this.register({ ...disk, virtualSize });
    } catch (err) {
      await agent.removeDisk({ file: disk.file }).catch(() => undefined);
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
    const agent = await this.agentForDisk(disk);
    await agent.resizeDisk({ file: disk.file, sizeBytes: size });
    const updated = await this.deps.storageInventory.updateDisk(disk.id, { virtualSize: size, contentId: `cid-${randomBytes(16).toString('hex')}` });
    await agent.writeDiskMeta({ file: updated.file, meta: diskMeta(updated) });
    return updated;
  }

  /** Deletes a disk nothing uses (`exceptJob`: the copy job moving it, which is what deletes it). */
  async deleteDisk(ref: string, exceptJob?: string): Promise<DiskRecord> {
    const disk = await this.resolveDisk(ref);
    const users = (await this.usersOf(disk)).filter((u) => u !== `copy job ${exceptJob}`);
    if (users.length) throw new DiskInUseError(`${disk.datastore}/${disk.name}`, users);
    await this.deps.storageInventory.deleteDisk(disk.id);
    await (await this.agentForDisk(disk)).removeDisk({ file: disk.file });
    return disk;
  }

  /** Hashes the disk; with `against`, compares with that disk; otherwise with every disk of the same content id. */
  async verifyDisk(ref: string, input: unknown): Promise<{ disk: string; contentId: string; contentHash: string; compared: { disk: string; contentId: string; contentHash: string; equal: boolean }[] }> {
    const { against } = parseRequest('disk verify', verifyDiskRequestSchema, input);
    const disk = await this.resolveDisk(ref);
    const others = against ? [await this.resolveDisk(against)] : (await this.deps.storageInventory.listDisks()).filter((d) => d.contentId === disk.contentId && d.id !== disk.id);
    const hash = async (d: DiskRecord) => (await runOperation(await this.agentForDisk(d), 'hashDisk', { file: d.file })).hash;
    const contentHash = await hash(disk);
    const compared = [];
    for (const other of others) {
      const h = await hash(other);
      compared.push({ disk: `${other.datastore}/${other.name}`, contentId: other.contentId, contentHash: h, equal: h === contentHash });
    }
    const broken = compared.find((c) => c.contentId === disk.contentId && !c.equal);
    if (broken) throw new ContentMismatchError(`${disk.datastore}/${disk.name}`, broken.disk, { contentId: disk.contentId, hashes: [contentHash, broken.contentHash] });
    return { disk: `${disk.datastore}/${disk.name}`, contentId: disk.contentId, contentHash, compared };
  }

  /**
   * Gives copied chain files their content ids and registers them as disks. With `relink`, each copy
   * is first re-pointed at its copied parent (by file name: they sit in one folder, so a later move of
   * the whole set, e.g. out of a pool slot, needs no relink). `hostId` is the host that made the copies.
   */
  async registerCopies(files: CopyFile[], hostId: string, relink = true): Promise<DiskRecord[]> {
    const agent = agentOn(this.deps, hostId);
    if (relink) await this.relinkCopies(files, hostId);
    const registered: DiskRecord[] = [];
    for (const file of files) {
      // A copy carries its source's content id: equal ids mean equal content.
      const disk = copiedDisk(file);
      const contentId = disk.contentId || (await agent.contentId({ file: file.source })).contentId;
      registered.push(await this.register({ ...disk, file: file.target, contentId }));
    }
    return registered;
  }

  async relinkCopies(files: CopyFile[], hostId: string): Promise<void> {
    const agent = agentOn(this.deps, hostId);
    for (const file of files) {
      const disk = copiedDisk(file);
      const parent = files.find((f) => f.disk?.id === disk.parentId);
      if (disk.format === 'qcow2') await agent.relinkDisk({ file: file.target, backing: parent ? { file: parent.target, format: copiedDisk(parent).format } : null });
    }
  }
}
