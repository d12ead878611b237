// `disk seed DISK --to HOST|DATASTORE` (issue 13, cross-site moves): a disk
// and the chain below it are copied ahead of time to a datastore of another
// host (a host's own default datastore when a host is named), keeping their
// content ids, so that a later move of a VM over that base finds it there by
// id (content-plan.ts) and sends only what lies above it. A copy job (purpose
// `seed`) on a host of the target datastore; when that host does not see the
// source's datastore it reads each file from a host that does (that host's
// one-file server, copy-file-op.ts). Layers the destination already holds
// (by content id, in the target datastore) are not copied again: the copies
// are linked over them. With verify, what it holds is hashed first, and a
// layer whose bytes differ from the source's is copied anew.
import { OffshootError } from '../../common/index.ts';
import type { Locator } from '../../protocol/index.ts';
import { parseRequest } from '../requests.ts';
import { Catalog, datastoreFile, newDiskId } from './catalog.ts';
import { planByContent } from './content-plan.ts';
import type { DiskContentPlan } from './content-plan.ts';
import type { CopyJobs } from './copy-jobs.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn, datastoreHost } from './deps.ts';
import type { CopyFile, CopyJobRecord, DatastoreRecord, DiskRecord } from './records.ts';
import { copiedDisk } from './records.ts';
import { seedDiskRequestSchema } from './requests.ts';

export interface SeedResult {
  /** The datastore the chain is seeded into, and the host that copies. */
  datastore: string;
  host: string;
  /** The copy job of the layers the destination lacked (null: it held them all). */
  job: CopyJobRecord | null;
  /** Layers the destination already held (not copied), and the ones copied. */
  skipped: Array<{ disk: string; contentId: string; file: Locator }>;
  copied: Array<{ disk: string; contentId: string; bytes: number }>;
  /** With verify: a held layer whose bytes differed from the source's (copied anew). */
  mismatch: DiskContentPlan['mismatch'];
}

export class Seeder {
  constructor(
    private readonly deps: StorageDeps,
    private readonly catalog: Catalog,
    private readonly jobs: CopyJobs,
  ) {
    jobs.handle('seed', { succeeded: (job) => this.finish(job), abandoned: async () => undefined });
  }

  async seed(ref: string, input: unknown): Promise<SeedResult> {
    const request = parseRequest('disk seed', seedDiskRequestSchema, input);
    const disk = await this.catalog.resolveDisk(ref);
    const chain = await this.chainOf(disk);
    const sourceDs = await this.catalog.datastore(disk.datastore);
    const target = await this.targetDatastore(request.to);
    if (target.id === sourceDs.id) throw new OffshootError('INVALID_INPUT', `disk ${disk.datastore}/${disk.name} is on datastore ${target.name} already`, { disk: disk.id, datastore: target.name }, 400);
    const hostId = datastoreHost(this.deps, target);
    const sourceHost = datastoreHost(this.deps, sourceDs, hostId);

    // What the destination holds already, by content id (in the target datastore only: the copies are linked over it).
    const [plan] = await planByContent(agentOn(this.deps, sourceHost), agentOn(this.deps, hostId), {
      disks: [{ id: disk.id, backing: chain.map((d) => d.file) }],
      contentIds: Object.fromEntries(chain.map((d) => [d.file, d.contentId])),
      verify: request.verify,
    });
    const inTarget = plan && plan.heldLayers > 0 && plan.destBacking.every((b) => b.file.startsWith(`ds.${target.id}:`));
    const held = inTarget ? (plan?.heldLayers ?? 0) : 0;
    const toCopy = chain.slice(0, chain.length - held);
    const heldFiles = inTarget ? (plan?.destBacking ?? []) : [];
    const skipped = chain.slice(chain.length - held).map((d, i) => ({ disk: `${d.datastore}/${d.name}`, contentId: d.contentId, file: heldFiles[i]?.file as Locator }));
    const result = { datastore: target.name, host: this.deps.engine.hostName(hostId), skipped, mismatch: plan?.mismatch ?? null };
    if (toCopy.length === 0) return { ...result, job: null, copied: [] };

    // The copies: fresh ids, the source's names and content ids, each over the next (the lowest over the held layer).
    const existing = await this.deps.storageInventory.listDisks();
    const heldTop = heldFiles[0] ? existing.find((d) => d.file === heldFiles[0]?.file) : undefined;
    // A copy keeps its source's name unless the target datastore has a disk of that name (e.g. a copy whose bytes differ).
    const taken = new Set(existing.filter((d) => d.datastore === target.name).map((d) => d.name));
    const ids = toCopy.map(() => newDiskId());
    const sees = sourceDs.hosts.some((h) => h.hostId === hostId);
    const files: CopyFile[] = toCopy.map((d, i) => {
      const id = ids[i] as string;
      const name = taken.has(d.name) ? `${d.name.slice(0, 50)}-${id.slice(-8)}` : d.name;
      const copy: DiskRecord = { ...d, id, name, datastore: target.name, file: datastoreFile(target.id, 'disks', `${id}.${d.format}`), parentId: ids[i + 1] ?? heldTop?.id ?? null, readOnly: true, createdAt: new Date().toISOString() };
      return { source: d.file, target: copy.file, disk: copy, ...(sees ? {} : { sourceHostId: sourceHost }) };
    });
    const described = (await agentOn(this.deps, sourceHost).describeFiles({ files: toCopy.map((d) => ({ file: d.file, contentId: false })) })).files;
    const job = await this.jobs.submit({ kind: 'seed', diskId: disk.id }, target.name, hostId, files);
    return { ...result, job, copied: toCopy.map((d, i) => ({ disk: `${d.datastore}/${d.name}`, contentId: d.contentId, bytes: described[i]?.dataBytes ?? 0 })) };
  }

  /** The disk and every disk below it, top first. */
  private async chainOf(disk: DiskRecord): Promise<DiskRecord[]> {
    const chain = [disk];
    for (let parent = disk.parentId; parent; ) {
      const p = await this.catalog.resolveDisk(parent);
      chain.push(p);
      parent = p.parentId;
    }
    return chain;
  }

  /** A datastore by name, or the default datastore of a host by name or id. */
  private async targetDatastore(to: string): Promise<DatastoreRecord> {
    const ds = await this.catalog.datastore(to).catch(() => undefined);
    if (ds) return ds;
    const host = await this.deps.engine.fleet.resolve(to).catch(() => {
      throw new OffshootError('NOT_FOUND', `no datastore or host "${to}"`, { kind: 'datastore or host', ref: to }, 404);
    });
    return (await this.deps.storageInventory.getDatastore(Catalog.defaultName(host.name))) ?? this.catalog.ensureDefaultDatastore(host);
  }

  /** The copies become read-only disks of the target datastore, each linked over the one below it. */
  private async finish(job: CopyJobRecord): Promise<void> {
    const agent = agentOn(this.deps, job.hostId);
    const disks = await this.deps.storageInventory.listDisks();
    for (const file of job.files) {
      const disk = copiedDisk(file);
      if (disk.format !== 'qcow2') continue;
      const parent = job.files.find((f) => f.disk?.id === disk.parentId)?.disk ?? disks.find((d) => d.id === disk.parentId);
      await agent.relinkDisk({ file: file.target, backing: parent ? { file: parent.file, format: parent.format } : null });
    }
    await this.catalog.registerCopies(job.files, job.hostId, false);
  }
}
