// `vm clone SRC NEW --linked|--full|--instant`: freeze the source's disks
// (freeze.ts), then
// - linked: a qcow2 delta per disk over the frozen base, in O(1);
// - instant: the linked clone boots at once and QEMU streams the base's data
//   into its delta in the background (copy-on-read streaming never overwrites
//   what the guest already wrote); when the stream ends the clone no longer
//   depends on the source;
// - full: the frozen chain is copied into a datastore by a copy job (sparse,
//   resumable, verified), or taken from a ready pool slot in O(1) when a pool
//   of that source on that datastore holds copies of the same content.
// The clone gets its own identity (../identity.ts: new MACs, hostname and
// machine-id, applied in the guest at its first start); its disk deltas live
// in its VM folder, on the source's host.
import { AlreadyExistsError, OffshootError } from '../../common/index.ts';
import type { FrozenDisk, Locator, VmDisk, VmSpec } from '../../protocol/index.ts';
import { withNewIdentity } from '../identity.ts';
import { newVmId } from '../ids.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import type { Catalog } from './catalog.ts';
import { datastoreFile, frozenChainRecords } from './catalog.ts';
import type { CopyJobs } from './copy-jobs.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { freezeVmDisks } from './freeze.ts';
import { streamChainsIntoDisks } from './stream.ts';
import type { Pools } from './pools.ts';
import type { CopyFile, CopyJobRecord, DiskRecord } from './records.ts';
import { copiedDisk } from './records.ts';
import { cloneRequestSchema } from './requests.ts';
import type { CloneMode } from './requests.ts';

export interface CloneResult {
  mode: CloneMode;
  /** The clone (absent while a full clone's copy job runs). */
  vm: VmRecord | null;
  task: TaskRecord | null;
  job: CopyJobRecord | null;
  /** The pool a full clone took its disks from. */
  pool: string | null;
  /** Time until the clone existed (or its copy job was queued). */
  ms: number;
}

interface CloneSpec {
  cloneVmId: string;
  cloneName: string;
  hostId: string;
  spec: VmSpec;
}

/** The chains of copied disks (top first), as cloneSpec takes them. */
function copiedChains(tops: Map<string, DiskRecord[]>): Map<string, { files: Locator[]; format: 'qcow2' | 'raw' }> {
  return new Map([...tops].map(([diskId, chain]) => [diskId, { files: chain.map((d) => d.file), format: (chain[0] as DiskRecord).format }]));
}

export class Cloner {
  constructor(
    private readonly deps: StorageDeps,
    private readonly catalog: Catalog,
    private readonly jobs: CopyJobs,
    private readonly pools: Pools,
  ) {
    jobs.handle('clone', {
      succeeded: (job) => this.finishFullClone(job),
      abandoned: async () => undefined,
    });
  }

  async clone(sourceRef: string, input: unknown): Promise<CloneResult> {
    const t0 = performance.now();
    const request = parseRequest('clone request', cloneRequestSchema, input);
    if (await this.deps.inventory.findVmByName(request.name)) throw new AlreadyExistsError('VM', request.name);
    const source = await this.deps.engine.resolve(sourceRef);

    // A linked or instant clone's delta lives in its VM folder, beside the host's bases.
    if (request.mode !== 'full' && request.datastore) throw new OffshootError('INVALID_INPUT', `--datastore applies to full clones; a ${request.mode} clone's delta lives in its VM folder (move the result with a full clone)`, { field: 'datastore', mode: request.mode }, 400);
    // A full clone copies into the named datastore, else into the source host's own one.
    const datastore = request.datastore ? await this.catalog.datastore(request.datastore) : request.mode === 'full' ? await this.catalog.ensureDefaultDatastore({ id: source.hostId, name: this.deps.engine.hostName(source.hostId) }) : null;
    const { frozen } = await freezeVmDisks(this.deps, source.id, 'clone');
    const hostId = source.hostId;
    const pins = frozen.flatMap((f) => f.chain);
    for (const p of pins) this.deps.engine.pins.add(p);
    try {
      await this.deps.faults?.('clone.frozen');
      const cloneVmId = newVmId();
      const start = request.start ?? request.mode === 'instant';
      if (request.mode === 'full' && datastore) {
        const taken = await this.pools.take(source.id, datastore.name, frozen);
        if (taken) {
          const vm = await this.createCloneVm({ cloneVmId, cloneName: request.name, hostId, spec: await this.cloneSpec(source.spec, hostId, cloneVmId, request.name, copiedChains(taken.tops)) });
          const task = start ? ((await this.deps.engine.start(vm.id)).task ?? null) : null;
          return { mode: 'full', vm, task, job: null, pool: taken.pool, ms: performance.now() - t0 };
        }
        if (!datastore.hosts.some((h) => h.hostId === hostId)) throw new OffshootError('INVALID_INPUT', `datastore ${datastore.name} is not on the host of ${source.name}; a full clone copies there from the source's host`, { datastore: datastore.name }, 400);
        const { files, tops } = this.planCopy(datastore, frozen);
        const spec = await this.cloneSpec(source.spec, hostId, cloneVmId, request.name, copiedChains(tops), true);
        const job = await this.jobs.submit({ kind: 'clone', cloneVmId, cloneName: request.name, spec, start }, datastore.name, hostId, files);
        return { mode: 'full', vm: null, task: null, job, pool: null, ms: performance.now() - t0 };
      }
      const frozenChains = new Map(frozen.map((f) => [f.diskId, { files: f.chain, format: f.format }]));
      const vm = await this.createCloneVm({ cloneVmId, cloneName: request.name, hostId, spec: await this.cloneSpec(source.spec, hostId, cloneVmId, request.name, frozenChains) });
      if (request.mode === 'linked') {
        const task = start ? ((await this.deps.engine.start(vm.id)).task ?? null) : null;
        return { mode: 'linked', vm, task, job: null, pool: null, ms: performance.now() - t0 };
      }
      // Busy until its stream ends: nothing may rewrite the clone's disks meanwhile.
      await this.deps.engine.states.claimBusy(vm.id, 'streaming its disks (instant clone)', 'use');
      let task: TaskRecord;
      try {
        const started = await this.deps.engine.start(vm.id);
        task = await this.deps.engine.tasks.start('vm.clone.stream', vm, async (ctx) => {
          try {
            if (started.task) {
              const boot = await this.deps.engine.tasks.wait(started.task.id);
              if (boot.state !== 'succeeded') throw new OffshootError(boot.error?.code ?? 'CLONE_START_FAILED', `the instant clone did not start: ${boot.message}`, { task: boot.id }, 500);
            }
            await this.deps.faults?.('clone.streaming');
            const t1 = performance.now();
            await streamChainsIntoDisks(this.deps, vm, vm.spec.disks.filter((d) => !d.readOnly).map((d) => d.id), ctx, 'streaming');
            return { vm: vm.name, streamedMs: Math.round(performance.now() - t1), independent: true };
          } finally {
            await this.deps.engine.states.release(vm.id);
          }
        });
      } catch (err) {
        await this.deps.engine.states.release(vm.id);
        throw err;
      }
      return { mode: 'instant', vm: await this.deps.engine.resolve(vm.id), task, job: null, pool: null, ms: performance.now() - t0 };
    } finally {
      for (const p of pins) this.deps.engine.pins.delete(p);
    }
  }

  /** Copy plan of a full clone: every file of every frozen chain into the datastore, as read-only disks. */
  private planCopy(datastore: { id: string; name: string }, frozen: FrozenDisk[]): { files: CopyFile[]; tops: Map<string, DiskRecord[]> } {
    const files: CopyFile[] = [];
    const tops = new Map<string, DiskRecord[]>();
    for (const f of frozen) {
      const chain = frozenChainRecords(f, datastore.name, (id, format) => datastoreFile(datastore.id, 'disks', `${id}.${format}`));
      tops.set(f.diskId, chain);
      f.chain.forEach((source, i) => files.push({ source, target: (chain[i] as DiskRecord).file, disk: chain[i] as DiskRecord }));
    }
    return { files, tops };
  }

  /**
   * The clone's spec: its own identity (new MACs, its name as hostname, a new machine-id applied in the
   * guest at its first start: see ../identity.ts) and, per writable disk, a qcow2 delta in the clone's VM folder over
   * `chains` (top first: the frozen source chain, or its copies), created now (one qemu-img per disk,
   * all at once: the whole cost of a linked clone) or, with `later`, when a copy job is done.
   */
  private async cloneSpec(spec: VmSpec, hostId: string, cloneVmId: string, cloneName: string, chains: Map<string, { files: Locator[]; format: 'qcow2' | 'raw' }>, later = false): Promise<VmSpec> {
    const agent = agentOn(this.deps, hostId);
    const disks = await Promise.all(
      spec.disks.map(async (disk): Promise<VmDisk> => {
        const chain = chains.get(disk.id);
        if (disk.readOnly || !chain) return { ...disk, owned: false };
        // The delta's reference is the host's naming of a VM's device file; a later full clone makes it when its copy is done.
        const file = later ? `home:vms/${cloneVmId}/${disk.id}.qcow2` : (await agent.createDelta({ vmId: cloneVmId, diskId: disk.id, backing: { file: chain.files[0] as Locator, format: chain.format } })).file;
        return { id: disk.id, file, format: 'qcow2', readOnly: false, owned: true, backing: chain.files };
      }),
    );
    return { ...withNewIdentity(spec, cloneName), disks };
  }

  private async createCloneVm(clone: CloneSpec): Promise<VmRecord> {
    const now = new Date().toISOString();
    const vm: VmRecord = { id: clone.cloneVmId, name: clone.cloneName, state: 'created', stateReason: null, hostId: clone.hostId, spec: clone.spec, runtime: null, createdAt: now, updatedAt: now };
    await this.deps.inventory.insertVm(vm);
    this.deps.engine.events.publish({ type: 'vm.created', vm, at: now });
    this.deps.logger.info({ vm: vm.name, id: vm.id }, 'clone created');
    return vm;
  }

  /** After the copy: re-point each copied file at its copied parent, register the disks, create the clone. */
  private async finishFullClone(job: CopyJobRecord): Promise<void> {
    const purpose = job.purpose;
    if (purpose.kind !== 'clone') return;
    const spec = purpose.spec;
    await this.catalog.registerCopies(job.files, job.hostId);
    const agent = agentOn(this.deps, job.hostId);
    const disks: VmDisk[] = [];
    for (const disk of spec.disks) {
      const top = disk.readOnly || !disk.owned ? undefined : job.files.find((f) => f.target === disk.backing[0]);
      disks.push(top ? { ...disk, file: (await agent.createDelta({ vmId: purpose.cloneVmId, diskId: disk.id, backing: { file: top.target, format: copiedDisk(top).format } })).file } : disk);
    }
    if (await this.deps.inventory.findVmByName(purpose.cloneName)) throw new AlreadyExistsError('VM', purpose.cloneName);
    await this.createCloneVm({ cloneVmId: purpose.cloneVmId, cloneName: purpose.cloneName, hostId: job.hostId, spec: { ...spec, disks } });
    if (purpose.start) await this.deps.engine.start(purpose.cloneVmId);
  }
}
