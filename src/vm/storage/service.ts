// The storage service: the one request handler for datastores, disks, clones,
// pools and copy jobs under every front end (the REST API, the CLI through
// it). Each concern lives in its own module (catalog, clone, pools,
// copy-jobs, handover); this façade wires them, adds disk move and online
// flatten, and recovers after a daemon restart (jobs resume, pool pins come
// back). Drained and lost hosts hand their copy jobs over (handover.ts);
// disks are seeded to other hosts by content id (seed.ts) and a move plan
// tells what a move would skip (content-plan.ts); `vm move` runs one
// (move-vm.ts).
import { IllegalStateError, OffshootError } from '../../common/index.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import type { ContentAnswer } from '../../protocol/index.ts';
import { hashOfContentId, newOperationId, runOperation } from '../../protocol/index.ts';
import { parseRequest } from '../requests.ts';
import { Catalog, datastoreFile, diskMeta, newDiskId } from './catalog.ts';
import { Cloner } from './clone.ts';
import { CopyJobs } from './copy-jobs.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn, datastoreHost } from './deps.ts';
import { DiskInUseError } from './errors.ts';
import { planByContent } from './content-plan.ts';
import type { DiskContentPlan } from './content-plan.ts';
import { JobHandover } from './handover.ts';
import { Seeder } from './seed.ts';
import { VmMover } from './move-vm.ts';
import { Pools } from './pools.ts';
import { streamChainsIntoDisks } from './stream.ts';
import type { CopyJobRecord } from './records.ts';
import { copiedDisk } from './records.ts';
import { attachDiskRequestSchema, findContentRequestSchema, flattenRequestSchema, moveDiskRequestSchema, movePlanRequestSchema } from './requests.ts';

export class StorageService {
  readonly catalog: Catalog;
  readonly jobs: CopyJobs;
  readonly pools: Pools;
  readonly cloner: Cloner;
  readonly handover: JobHandover;
  readonly seeder: Seeder;
  readonly mover: VmMover;

  constructor(private readonly deps: StorageDeps) {
    this.catalog = new Catalog(deps);
    this.jobs = new CopyJobs(deps);
    this.pools = new Pools(deps, this.catalog, this.jobs);
    this.cloner = new Cloner(deps, this.catalog, this.jobs, this.pools);
    this.handover = new JobHandover(deps, this.catalog, this.jobs);
    this.seeder = new Seeder(deps, this.catalog, this.jobs);
    this.mover = new VmMover(deps, (vm, input) => this.movePlan(vm, input), (name) => this.catalog.datastore(name));
    // `host drain --stopped move` moves a host's stopped VMs with this service's cold move.
    deps.engine.drains.useColdMoves({ start: async (vmId, to) => (await this.mover.move(vmId, { to, mode: 'cold' })).task, cancel: (taskId) => deps.engine.cancelTask(taskId) });
    deps.engine.fleet.listen({ hostLost: (host) => this.handover.hostLost(host), hostAdminState: (host, previous) => this.handover.hostAdminState(host, previous) });
    this.jobs.handle('move', {
      succeeded: (job) => this.finishMove(job),
      abandoned: async () => undefined,
    });
    deps.engine.fleet.listen({ hostAdded: (host) => void this.catalog.ensureDefaultDatastore(host).catch((err: unknown) => deps.logger.warn({ err, host: host.name }, 'cannot make the default datastore of a host')) });
  }

  /** Every reachable host has its own default datastore (HOST-local), so a full clone needs no --datastore. */
  async ensureDefaultDatastores(): Promise<void> {
    for (const host of this.deps.engine.fleet.hosts()) {
      if (host.state === 'unreachable') continue;
      await this.catalog.ensureDefaultDatastore(host).catch((err: unknown) => this.deps.logger.warn({ err, host: host.name }, 'cannot make the default datastore of a host'));
    }
  }

  /**
   * After a restart, before the engine's recovery (and its garbage collection): pins what pools and unfinished
   * jobs read (pins are rows that outlive controllers; this adds those of an inventory from before they were).
   */
  async pinSources(): Promise<void> {
    const pins = this.deps.engine.coordinator.store.pins;
    for (const job of await this.jobs.list()) if (['queued', 'running', 'paused', 'failed'].includes(job.state)) await pins.add(`copy-job:${job.id}`, job.files.map((f) => f.source), null);
  }

  /** After the engine's recovery: copy jobs that no running task carries go on from their recorded chunks, and pools are topped up. */
  async resumeJobs(): Promise<string[]> {
    const resumed = await this.jobs.recover();
    await this.pools.recover();
    return resumed;
  }

  close(): Promise<void> {
    return this.jobs.close();
  }

  /**
   * Which read-only layers of a VM's disks `to` holds by content id (content-plan.ts): what a move of the VM there
   * would skip, and what it would send. Read-only; a migration calls it before it creates the destination's images.
   */
  async movePlan(vmRef: string, input: unknown): Promise<{ vm: string; from: string; to: string; disks: DiskContentPlan[]; skippedBytes: number; sendBytes: number }> {
    const { to, verify } = parseRequest('move plan', movePlanRequestSchema, input);
    const vm = await this.deps.engine.resolve(vmRef);
    const dest = await this.deps.engine.fleet.resolve(to);
    if (dest.id === vm.hostId) throw new OffshootError('INVALID_INPUT', `VM ${vm.name} is on host ${dest.name} already`, { vm: vm.name, host: dest.name }, 400);
    const backing = new Set(vm.spec.disks.flatMap((d) => d.backing));
    // Datastore layers carry the id their sidecar records (a seeded copy keeps it).
    const contentIds = Object.fromEntries((await this.deps.storageInventory.listDisks()).filter((d) => backing.has(d.file)).map((d) => [d.file, d.contentId]));
    const disks = await planByContent(agentOn(this.deps, vm.hostId), agentOn(this.deps, dest.id), { disks: vm.spec.disks.map((d) => ({ id: d.id, backing: d.backing })), contentIds, verify });
    return { vm: vm.name, from: this.deps.engine.hostName(vm.hostId), to: dest.name, disks, skippedBytes: disks.reduce((n, d) => n + d.skippedBytes, 0), sendBytes: disks.reduce((n, d) => n + d.sendBytes, 0) };
  }

  /** Which chains of content ids (top first) a host holds, and where (the agent's findContent). */
  async findContent(hostRef: string, input: unknown): Promise<{ host: string; answers: Array<ContentAnswer & { contentIds: string[] }> }> {
    const { chains, verify } = parseRequest('content request', findContentRequestSchema, input);
    const host = await this.deps.engine.fleet.resolve(hostRef);
    // With verify, a layer whose id was made from its hash is checked against that hash unless one is given.
    const queries = chains.map((q) => (verify ? { contentIds: q.contentIds, hashes: q.contentIds.map((id, i) => q.hashes?.[i] ?? hashOfContentId(id)) } : q));
    const { answers } = await runOperation(agentOn(this.deps, host.id), 'findContent', { operationId: newOperationId(), queries, verify });
    return { host: host.name, answers: chains.map((q, i) => ({ contentIds: q.contentIds, ...(answers[i] as ContentAnswer) })) };
  }

  clone(sourceRef: string, input: unknown) {
    return this.cloner.clone(sourceRef, input);
  }

  /** Moves a disk nobody uses to another datastore: a copy job, then the old file goes. */
  async moveDisk(ref: string, input: unknown): Promise<CopyJobRecord> {
    const { datastore } = parseRequest('disk move', moveDiskRequestSchema, input);
    const disk = await this.catalog.resolveDisk(ref);
    const target = await this.catalog.datastore(datastore);
    if (target.name === disk.datastore) throw new OffshootError('INVALID_INPUT', `disk ${disk.datastore}/${disk.name} is already on datastore ${datastore}`, { disk: disk.id }, 400);
    const users = await this.catalog.usersOf(disk);
    if (users.length) throw new DiskInUseError(`${disk.datastore}/${disk.name}`, users);
    if (disk.parentId) throw new OffshootError('DISK_HAS_PARENT', `disk ${disk.datastore}/${disk.name} is a delta over another disk; flatten it or move its chain`, { disk: disk.id }, 409);
    // The copy runs on a host that sees both datastores.
    const from = await this.catalog.datastore(disk.datastore);
    const host = from.hosts.find((h) => target.hosts.some((t) => t.hostId === h.hostId));
    if (!host) throw new OffshootError('INVALID_INPUT', `no host sees both datastore ${from.name} and datastore ${target.name}`, { from: from.name, to: target.name }, 400);
    const id = newDiskId();
    const moved = { ...disk, id, datastore: target.name, file: datastoreFile(target.id, 'disks', `${id}.${disk.format}`) };
    return this.jobs.submit({ kind: 'move', diskId: disk.id }, target.name, datastoreHost(this.deps, target, host.hostId), [{ source: disk.file, target: moved.file, disk: moved }]);
  }

  private async finishMove(job: CopyJobRecord): Promise<void> {
    if (job.purpose.kind !== 'move') return;
    const old = await this.catalog.resolveDisk(job.purpose.diskId);
    const file = job.files[0];
    if (!file) return;
    await this.catalog.registerCopies([{ ...file, disk: { ...copiedDisk(file), name: old.name, contentId: old.contentId } }], job.hostId);
    await this.catalog.deleteDisk(old.id, job.id);
  }

  /**
   * Attaches a datastore disk to a stopped VM the way a template disk is used: the disk becomes a
   * read-only base (its content id is fixed from now on) and the VM gets its own qcow2 delta over it.
   */
  async attachDisk(vmRef: string, input: unknown): Promise<VmRecord> {
    const { disk: ref } = parseRequest('attach request', attachDiskRequestSchema, input);
    const disk = await this.catalog.resolveDisk(ref);
    const chain = [disk.file];
    for (let parent = disk.parentId; parent; ) {
      const p = await this.catalog.resolveDisk(parent);
      chain.push(p.file);
      parent = p.parentId;
    }
    const ds = await this.catalog.datastore(disk.datastore);
    const { id } = await this.deps.engine.resolve(vmRef);
    return this.deps.engine.states.whenIdle(id, 'attach a disk to', async (vm) => {
      if (vm.state !== 'created' && vm.state !== 'stopped') throw new IllegalStateError(`VM "${vm.name}"`, vm.state, ['created', 'stopped'], 'attach a disk to');
      if (!ds.hosts.some((h) => h.hostId === vm.hostId)) throw new OffshootError('INVALID_INPUT', `datastore ${ds.name} is not on the host of VM ${vm.name}`, { datastore: ds.name, vm: vm.name }, 400);
      const agent = agentOn(this.deps, vm.hostId);
      const used = new Set(vm.spec.disks.map((d) => d.id));
      let n = vm.spec.disks.length;
      while (used.has(`disk${n}`)) n++;
      const diskId = `disk${n}`;
      if (!disk.readOnly) {
        const frozen = await this.deps.storageInventory.updateDisk(disk.id, { readOnly: true });
        await agent.writeDiskMeta({ file: frozen.file, meta: diskMeta(frozen) });
      }
      const { file } = await agent.createDelta({ vmId: vm.id, diskId, backing: { file: disk.file, format: disk.format } });
      return this.deps.inventory.updateVm(vm.id, { spec: { ...vm.spec, disks: [...vm.spec.disks, { id: diskId, file, format: 'qcow2', readOnly: false, owned: true, backing: chain }] } });
    });
  }

  /** Online flatten: streams each writable disk's whole chain into its top (QEMU block-stream); the VM keeps running. */
  async flatten(vmRef: string, input: unknown): Promise<TaskRecord> {
    const { disk: only } = parseRequest('flatten request', flattenRequestSchema, input);
    const { id } = await this.deps.engine.resolve(vmRef);
    // Busy until the streams end: no fork, checkpoint or clone may rewrite these disks meanwhile.
    const vm = await this.deps.engine.states.claimBusy(id, 'flattening its disks', 'flatten the disks of', (current) => {
      if (current.state !== 'running' && current.state !== 'paused') throw new IllegalStateError(`VM "${current.name}"`, current.state, ['running', 'paused'], 'flatten the disks of');
      if (only && !current.spec.disks.some((d) => !d.readOnly && d.backing.length > 0 && d.id === only)) throw new OffshootError('NOT_FOUND', `VM ${current.name} has no writable disk "${only}" with a backing chain`, { vm: current.name, disk: only }, 404);
    });
    const disks = vm.spec.disks.filter((d) => !d.readOnly && d.backing.length > 0 && (!only || d.id === only));
    try {
      return await this.deps.engine.tasks.start('disk.flatten', vm, async (ctx) => {
        try {
          const { releasedBases } = await streamChainsIntoDisks(this.deps, vm, disks.map((d) => d.id), ctx, 'flattening');
          return { flattened: disks.map((d) => d.id), releasedBases };
        } finally {
          await this.deps.engine.states.release(vm.id);
        }
      });
    } catch (err) {
      await this.deps.engine.states.release(vm.id);
      throw err;
    }
  }
}
