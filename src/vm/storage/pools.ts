// Disk pools: for a VM, keep K pre-copied copies of its frozen disks on a
// datastore, so that a full clone onto that datastore takes one (a rename
// into the datastore's disks, O(1)) instead of copying. Each slot is filled by
// a copy job (resumable, verified) and the pool refills itself after a take.
// A pool never hands out a slot that is still filling, nor one made from
// content the VM has moved on from: a clone compares the content ids of the
// source's freshly frozen disks with the pool's, and a mismatch makes the pool
// drop its copies and refill from the new content. Pool state (slots, jobs)
// is in the inventory and survives a restart; the frozen source files stay
// pinned against garbage collection while the pool exists (GC pins of holder
// `pool:<id>`, kept by every controller). Changes of one pool (fills, takes,
// resizes, refills after a take) run one at a time across the fleet: in order
// in this process, under the pool's claim (`pool:<id>`) across controllers.
// Its refills are copy jobs, so tasks: a controller that dies mid-copy has the
// copy taken over, and every controller tops its pools up when it starts.
import { randomBytes } from 'node:crypto';
import { NotFoundError, OffshootError } from '../../common/index.ts';
import type { FrozenDisk } from '../../protocol/index.ts';
import { parseRequest } from '../requests.ts';
import type { Catalog } from './catalog.ts';
import { datastoreFile, frozenChainRecords, newDiskId } from './catalog.ts';
import type { CopyJobs } from './copy-jobs.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { freezeVmDisks } from './freeze.ts';
import type { CopyFile, CopyJobRecord, DiskRecord, PoolRecord, PoolSlot } from './records.ts';
import { createPoolRequestSchema, resizePoolRequestSchema } from './requests.ts';

export class Pools {
  /** One pool change at a time in this process (fills, takes, resizes race otherwise); the pool's claim across controllers. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly deps: StorageDeps,
    private readonly catalog: Catalog,
    private readonly jobs: CopyJobs,
  ) {
    jobs.handle('pool', {
      succeeded: (job) => this.serial(job.purpose.kind === 'pool' ? job.purpose.poolId : '', () => this.slotFilled(job)),
      abandoned: (job) => this.serial(job.purpose.kind === 'pool' ? job.purpose.poolId : '', () => this.slotAbandoned(job)),
    });
  }

  private serial<T>(poolId: string, fn: () => Promise<T>): Promise<T> {
    const claimed = () => this.deps.engine.coordinator.withClaim(`pool:${poolId}`, 'pool change', { waitMs: 120_000 }, fn);
    const next = this.queue.then(claimed, claimed);
    this.queue = next.catch(() => undefined);
    return next;
  }

  async get(ref: string): Promise<PoolRecord> {
    const pool = await this.deps.storageInventory.getPool(ref);
    if (!pool) throw new NotFoundError('pool', ref);
    return pool;
  }

  list(): Promise<PoolRecord[]> {
    return this.deps.storageInventory.listPools();
  }

  async create(input: unknown): Promise<PoolRecord> {
    const request = parseRequest('pool', createPoolRequestSchema, input);
    const ds = await this.catalog.datastore(request.datastore);
    const source = await this.deps.engine.resolve(request.vm);
    if (!ds.hosts.some((h) => h.hostId === source.hostId)) throw new OffshootError('INVALID_INPUT', `datastore ${ds.name} is not on the host of ${source.name}; a pool copies there from the VM's host`, { datastore: ds.name }, 400);
    const { frozen } = await freezeVmDisks(this.deps, source.id, 'create a pool of');
    const now = new Date().toISOString();
    const pool: PoolRecord = {
      id: `pool-${randomBytes(5).toString('hex')}`,
      name: request.name,
      hostId: source.hostId,
      sourceVmId: source.id,
      sourceVmName: source.name,
      datastore: ds.name,
      size: request.size,
      sourceContentIds: frozen.map((f) => f.contentId),
      sourceFiles: frozen.map((f) => ({ diskId: f.diskId, chain: frozenChainRecords(f, ds.name, (_id, _format, i) => f.chain[i] as string) })),
      slots: [],
      createdAt: now,
      updatedAt: now,
    };
    await this.deps.storageInventory.insertPool(pool);
    await this.pin(pool);
    return this.serial(pool.id, () => this.fill(pool.id));
  }

  async resize(ref: string, input: unknown): Promise<PoolRecord> {
    const { size } = parseRequest('pool resize', resizePoolRequestSchema, input);
    const pool = await this.get(ref);
    return this.serial(pool.id, async () => {
      await this.deps.storageInventory.updatePool(pool.id, { size });
      return this.fill(pool.id);
    });
  }

  async delete(ref: string): Promise<PoolRecord> {
    const pool = await this.get(ref);
    const cleanup = await this.serial(pool.id, async () => {
      await this.deps.storageInventory.updatePool(pool.id, { size: 0 });
      const drop = await this.detachSlots(await this.get(pool.id), () => true);
      await this.deps.storageInventory.deletePool(pool.id);
      return drop;
    });
    await cleanup();
    await this.unpin(pool);
    return pool;
  }

  /** At a controller's start: every pool's source files pinned (rows from before pins were rows), and every pool topped up in the background. */
  async recover(): Promise<void> {
    for (const pool of await this.list()) {
      await this.pin(pool);
      void this.serial(pool.id, () => this.fill(pool.id)).catch((err: unknown) => this.deps.logger.warn({ err, pool: pool.name }, 'cannot top a pool up'));
    }
  }

  /**
   * A ready copy of the source's frozen disks on the datastore, moved into its disks folder and
   * registered; or null (no pool, nothing ready, or stale: then the pool refills from `frozen`).
   */
  async take(sourceVmId: string, datastore: string, frozen: FrozenDisk[]): Promise<{ pool: string; tops: Map<string, DiskRecord[]> } | null> {
    const pool = (await this.list()).find((p) => p.sourceVmId === sourceVmId && p.datastore === datastore);
    if (!pool) return null;
    return this.serial(pool.id, async () => {
      const current = await this.get(pool.id);
      const contentIds = frozen.map((f) => f.contentId);
      if (contentIds.join() !== current.sourceContentIds.join()) {
        this.deps.logger.info({ pool: current.name }, 'pool is stale (its source changed): refilling from the new content');
        this.later(await this.detachSlots(current, () => true), current.name);
        await this.unpin(current);
        const fresh = await this.deps.storageInventory.updatePool(current.id, { sourceContentIds: contentIds, sourceFiles: frozen.map((f) => ({ diskId: f.diskId, chain: frozenChainRecords(f, datastore, (_id, _format, i) => f.chain[i] as string) })), slots: [] });
        await this.pin(fresh);
        await this.fill(fresh.id);
        return null;
      }
      const slot = current.slots.find((s) => s.state === 'ready');
      if (!slot) return null;
      const ds = await this.catalog.datastore(datastore);
      // slot.disks are in the order of the source chains (see fill).
      const sources = current.sourceFiles.flatMap((s) => s.chain.map((c) => c.file));
      const files: CopyFile[] = slot.disks.map((d, i) => ({ source: sources[i] as string, target: datastoreFile(ds.id, 'disks', `${d.id}.${d.format}`), disk: d }));
      // One call: the slot's files move into the datastore's disks (renames, relinked by name when filled) and the slot folder goes.
      await agentOn(this.deps, current.hostId).takePoolSlot({ datastoreId: ds.id, poolId: current.id, slotId: slot.id, disks: files.map((f, i) => ({ from: (slot.disks[i] as DiskRecord).file, to: f.target })) });
      await this.deps.storageInventory.updatePool(current.id, { slots: current.slots.filter((s) => s.id !== slot.id) });
      const registered = await this.catalog.registerCopies(files, current.hostId, false);
      // registerCopies keeps the order of slot.disks: each source disk's chain, top first.
      const tops = new Map<string, DiskRecord[]>();
      let next = 0;
      for (const source of current.sourceFiles) {
        tops.set(source.diskId, registered.slice(next, next + source.chain.length));
        next += source.chain.length;
      }
      void this.serial(current.id, () => this.fill(current.id)).catch((err: unknown) => this.deps.logger.error({ err, pool: current.name }, 'pool refill failed'));
      return { pool: current.name, tops };
    });
  }





  /** Starts copy jobs until ready + filling slots reach the pool's size; drops extra ready slots. */
  private async fill(poolId: string): Promise<PoolRecord> {
    let pool = await this.get(poolId);
    const ds = await this.catalog.datastore(pool.datastore);
    if (pool.slots.length > pool.size) {
      const extra = pool.slots.length - pool.size;
      const victims = new Set([...pool.slots].sort((a, b) => (a.state === 'filling' ? -1 : 1) - (b.state === 'filling' ? -1 : 1)).slice(0, extra).map((s) => s.id));
      this.later(await this.detachSlots(pool, (s) => victims.has(s.id)), pool.name);
      pool = await this.get(poolId);
    }
    while (pool.slots.length < pool.size) {
      const slotId = `slot-${randomBytes(4).toString('hex')}`;
      const files: CopyFile[] = [];
      const disks: DiskRecord[] = [];
      for (const source of pool.sourceFiles) {
        const ids = source.chain.map(() => newDiskId());
        source.chain.forEach((c, i) => {
          const disk: DiskRecord = { ...c, id: ids[i] as string, name: ids[i] as string, parentId: ids[i + 1] ?? null, datastore: ds.name, file: datastoreFile(ds.id, 'pools', pool.id, slotId, `${ids[i]}.${c.format}`) };
          disks.push(disk);
          files.push({ source: c.file, target: disk.file, disk });
        });
      }
      const slot: PoolSlot = { id: slotId, state: 'filling', jobId: null, disks };
      pool = await this.deps.storageInventory.updatePool(pool.id, { slots: [...pool.slots, slot] });
      const job = await this.jobs.submit({ kind: 'pool', poolId: pool.id, slot: slotId }, ds.name, pool.hostId, files);
      pool = await this.deps.storageInventory.updatePool(pool.id, { slots: pool.slots.map((s) => (s.id === slotId ? { ...s, jobId: job.id } : s)) });
    }
    return pool;
  }

  private async slotFilled(job: CopyJobRecord): Promise<void> {
    if (job.purpose.kind !== 'pool') return;
    const { poolId, slot } = job.purpose;
    const pool = await this.deps.storageInventory.getPool(poolId);
    if (!pool?.slots.some((s) => s.id === slot)) {
      for (const f of job.files) await agentOn(this.deps, job.hostId).removeDisk({ file: f.target });
      return;
    }
    await this.catalog.relinkCopies(job.files, job.hostId);
    await this.deps.storageInventory.updatePool(poolId, { slots: pool.slots.map((s) => (s.id === slot ? { ...s, state: 'ready' as const } : s)) });
  }

  private async slotAbandoned(job: CopyJobRecord): Promise<void> {
    if (job.purpose.kind !== 'pool') return;
    const { poolId, slot } = job.purpose;
    const pool = await this.deps.storageInventory.getPool(poolId);
    if (pool) await this.deps.storageInventory.updatePool(poolId, { slots: pool.slots.filter((s) => s.id !== slot) });
  }

  /**
   * Takes slots out of the pool record at once; returns the clean-up (cancel their copy jobs, remove
   * their files) for the caller to run *outside* the pool's queue: a cancelled job calls back into it.
   */
  private async detachSlots(pool: PoolRecord, which: (slot: PoolSlot) => boolean): Promise<() => Promise<void>> {
    const drop = pool.slots.filter(which);
    await this.deps.storageInventory.updatePool(pool.id, { slots: pool.slots.filter((s) => !which(s)) });
    return async () => {
      const ds = await this.deps.storageInventory.getDatastore(pool.datastore);
      for (const slot of drop) {
        if (slot.jobId) {
          const job = await this.jobs.get(slot.jobId).catch(() => undefined);
          if (job && job.state !== 'succeeded' && job.state !== 'cancelled') await this.jobs.cancel(slot.jobId).catch((err: unknown) => this.deps.logger.warn({ err, jobId: slot.jobId }, 'cannot cancel a pool copy'));
        }
        const agent = agentOn(this.deps, pool.hostId);
        for (const disk of slot.disks) await agent.removeDisk({ file: disk.file });
        if (ds) await agent.removePoolSlot({ datastoreId: ds.id, poolId: pool.id, slotId: slot.id });
      }
    };
  }

  private later(cleanup: () => Promise<void>, pool: string): void {
    void cleanup().catch((err: unknown) => this.deps.logger.error({ err, pool }, 'pool slot clean-up failed'));
  }


  private pin(pool: PoolRecord): Promise<void> {
    return this.deps.engine.coordinator.store.pins.add(`pool:${pool.id}`, pool.sourceFiles.flatMap((s) => s.chain.map((c) => c.file)), null);
  }

  private unpin(pool: PoolRecord): Promise<void> {
    return this.deps.engine.coordinator.store.pins.remove(`pool:${pool.id}`);
  }
}
