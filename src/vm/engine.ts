// The VM engine: the single request handler under every front end (REST API,
// CLI through the API). It validates requests, claims VMs through the state
// keeper, runs long work as tasks, and calls the host agent for everything
// that touches QEMU or files. Operations leave a VM either done or as it was.
import { basename, isAbsolute } from 'node:path';
import { AlreadyExistsError, IllegalStateError, NotFoundError, OffshootError, isValidName, silentLogger } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { ExecResult, HostAgent, PrepareVmRequest, VmMemoryStats, VmSpec } from '../agent/index.ts';
import { checkpointRequestSchema, restoreRequestSchema } from './checkpoint/checkpoint-requests.ts';
import { runCheckpoint } from './checkpoint/run-checkpoint.ts';
import type { CheckpointDeps } from './checkpoint/run-checkpoint.ts';
import { forkRequestSchema } from './fork/fork-request.ts';
import { runFork } from './fork/run-fork.ts';
import type { ForkDeps, ForkJournal } from './fork/run-fork.ts';
import { recoverFork } from './fork/recover-fork.ts';
import { EventBus } from './events.ts';
import { newTaskId, newVmId } from './ids.ts';
import type { CheckpointRecord, Inventory, TaskRecord, VmRecord } from './records.ts';
import { execRequestSchema, parseRequest, startRequestSchema, stopRequestSchema } from './requests.ts';
import { applyIdentity, hasGuestAgent, withNewIdentity } from './identity.ts';
import { parseCreateVmRequest, resolveMemoryMiB } from './spec.ts';
import { BUSY_STATES, LIVE_STATES, assertOperationAllowed, isLive } from './state.ts';
import { StateKeeper } from './state-keeper.ts';
import { KeyedMutex } from './lock.ts';
import { TaskRunner } from './tasks.ts';

export interface VmEngineOptions {
  inventory: Inventory;
  agent: HostAgent;
  logger?: Logger;
  /** How long a boot may take until the guest agent answers. */
  bootTimeoutMs?: number;
  /** Fault injection for tests (see fork/run-fork.ts). */
  faults?: (point: string) => Promise<void> | void;
}

export interface VmAndTask {
  vm: VmRecord;
  task?: TaskRecord;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class VmEngine {
  readonly events = new EventBus();
  readonly tasks: TaskRunner;
  /** Shared with the storage service (clones and pools claim VMs through it). */
  readonly states: StateKeeper;
  private readonly inventory: Inventory;
  private readonly agent: HostAgent;
  private readonly logger: Logger;
  private readonly bootTimeoutMs: number;
  private readonly faults: VmEngineOptions['faults'];
  private readonly unsubscribe: () => void;
  /** Tasks that can be cancelled (checkpoints being written), by task id. */
  private readonly cancellers = new Map<string, AbortController>();
  /** Templates and bases that an operation in flight has made but no VM record names yet. */
  readonly pins = new Set<string>();
  /** Garbage collection and freezes (which make bases no record names yet) run one at a time. */
  private readonly garbageLock = new KeyedMutex();

  constructor(options: VmEngineOptions) {
    this.inventory = options.inventory;
    this.agent = options.agent;
    this.logger = options.logger ?? silentLogger;
    this.bootTimeoutMs = options.bootTimeoutMs ?? 120_000;
    this.faults = options.faults;
    this.tasks = new TaskRunner(this.inventory, this.events, this.logger);
    this.states = new StateKeeper(this.inventory, this.events);
    // A fork or checkpoint owns its VM and handles its QEMU's end itself; so does a start (or restore)
    // still in progress, which fails the VM with the reason.
    const exitable = LIVE_STATES.filter((s) => !BUSY_STATES.includes(s) && s !== 'starting');
    this.unsubscribe = this.agent.onVmExit((event) => {
      void this.states
        .settle(event.vmId, exitable, event.clean ? 'stopped' : 'failed', event.reason, { runtime: null })
        .then(({ moved, vm }) => moved && this.logger.info({ vm: vm.name, state: vm.state, reason: event.reason }, 'VM QEMU ended'))
        .then(() => this.collectGarbage())
        .catch((err: unknown) => this.logger.error({ err, vmId: event.vmId }, 'cannot record QEMU exit'));
    });
  }

  /** Finds a VM by id or name. */
  async resolve(ref: string): Promise<VmRecord> {
    const vm = UUID.test(ref) ? await this.inventory.getVm(ref) : await this.inventory.findVmByName(ref);
    if (!vm) throw new NotFoundError('VM', ref);
    return vm;
  }

  list(): Promise<VmRecord[]> {
    return this.inventory.listVms();
  }

  async create(input: unknown): Promise<VmAndTask> {
    const request = parseCreateVmRequest(input);
    await this.faults?.('vm.create');
    const memoryMiB = resolveMemoryMiB(request.memory);
    if (await this.inventory.findVmByName(request.name)) throw new AlreadyExistsError('VM', request.name);
    const id = newVmId();
    const prepare: PrepareVmRequest = {
      name: request.name,
      vcpus: request.vcpus,
      memoryMiB,
      boot: request.kernel
        ? { kind: 'kernel', kernel: request.kernel.path, initrd: request.kernel.initrd, cmdline: request.kernel.cmdline }
        : request.bootDisk
          ? { kind: 'disk', path: request.bootDisk }
          : { kind: 'default-guest' },
      disks: request.disks,
      network: request.network,
      guestAgent: request.guestAgent,
    };
    const spec = await this.agent.prepareVm(id, prepare);
    const now = new Date().toISOString();
    const vm: VmRecord = { id, name: request.name, state: 'created', stateReason: null, spec, runtime: null, createdAt: now, updatedAt: now };
    try {
      await this.inventory.insertVm(vm);
    } catch (err) {
      await this.agent.deleteVmFiles(id);
      throw err;
    }
    this.events.publish({ type: 'vm.created', vm, at: now });
    this.logger.info({ vm: vm.name, id }, 'VM created');
    if (!request.start) return { vm };
    return this.start(id, request.startTimeoutMs === undefined ? {} : { timeoutMs: request.startTimeoutMs });
  }

  /**
   * Boots the VM. The task finishes once the guest is usable: its guest agent answers (any guest; within
   * `timeoutMs`, else GUEST_AGENT_UNAVAILABLE and the VM is stopped), and a pending identity (a clone's first
   * boot) is applied. A guest created with guestAgent: false is done when QEMU runs.
   */
  async start(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const { timeoutMs = this.bootTimeoutMs } = parseRequest('start request', startRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'start', 'starting');
    const task = await this.tasks.start('vm.start', vm, async (ctx) => {
      try {
        await ctx.progress(0.05, 'starting QEMU');
        const t0 = performance.now();
        const runtime = await this.agent.startVm(vm.id, vm.name, vm.spec);
        await this.states.settle(id, ['starting'], 'starting', null, { runtime });
        const agent = hasGuestAgent(vm.spec);
        if (agent) {
          await ctx.progress(0.3, 'booting: waiting for the guest agent');
          await this.agent.waitForGuestAgent(id, timeoutMs).catch((err: unknown) => {
            if (!(err instanceof OffshootError && err.code === 'GUEST_AGENT_UNAVAILABLE')) throw err;
            throw new OffshootError('GUEST_AGENT_UNAVAILABLE', `the guest agent of VM "${vm.name}" did not answer within ${timeoutMs} ms of its start; the VM was stopped (a guest with no QEMU guest agent: create it with guestAgent: false; a slow one: start it with a longer timeout)`, { vm: vm.name, timeoutMs }, 504, { cause: err });
          });
        }
        const agentMs = agent ? Math.round(performance.now() - t0) : null;
        let identity = null;
        if (vm.spec.identity?.pending) {
          await ctx.progress(0.8, `giving ${vm.name} its own identity`);
          identity = await applyIdentity(this.agent, this.states, vm, { timeoutMs: 30_000 });
          if (!identity.ok) throw new OffshootError('IDENTITY_FAILED', `VM "${vm.name}" could not be given its own identity: ${identity.error}`, { vm: vm.name, error: identity.error }, 500);
        }
        const { moved, vm: after } = await this.states.settle(id, ['starting'], 'running', agent ? null : 'started without a guest agent (guestAgent: false)');
        if (!moved) throw new OffshootError('START_INTERRUPTED', `VM "${vm.name}" became ${after.state} before it finished booting`, { vm: vm.name, state: after.state }, 409);
        return { vm: after, guestAgent: agent ? 'answered' : 'none', agentMs, identity };
      } catch (err) {
        await this.agent.killVm(id).catch(() => undefined);
        await this.states.settle(id, ['starting', 'running', 'paused'], 'failed', `start failed: ${(err as Error).message}`, { runtime: null });
        throw err;
      }
    });
    return { vm: await this.resolve(id), task };
  }

  /** Forks a running (or paused) VM into N children that share its memory copy-on-write; see fork/run-fork.ts. */
  async fork(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const request = parseRequest('fork request', forkRequestSchema, input);
    const { id } = await this.resolve(ref);
    // Busy until the task ends: after the switch-over the VM runs again, but the fork still flattens its disks.
    const { vm: source, previous: before } = await this.states.claimFrom(id, 'fork', 'forking', 'with a fork');
    const forkId = newTaskId();
    const deps: ForkDeps = { inventory: this.inventory, agent: this.agent, states: this.states, events: this.events, logger: this.logger, pins: this.pins, collectGarbage: async () => void (await this.collectGarbage()), holdGarbage: (fn) => this.holdGarbage(fn), faults: this.faults };
    try {
      const task = await this.tasks.start('vm.fork', source, (ctx) => runFork(deps, { ...source, state: before }, request, ctx, forkId).finally(() => this.states.release(id)));
      return { vm: await this.resolve(id), task };
    } catch (err) {
      this.states.release(id);
      await this.states.settle(id, ['forking'], before, null).catch(() => undefined);
      throw err;
    }
  }

  /** A live checkpoint: a short stun, then the VM runs on while the file is written (see checkpoint/run-checkpoint.ts). */
  async checkpoint(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const request = parseRequest('checkpoint request', checkpointRequestSchema, input);
    const { id, name: vmName } = await this.resolve(ref);
    const name = request.name ?? `${vmName}-${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}`;
    if (await this.inventory.findCheckpoint(name)) throw new AlreadyExistsError('checkpoint', name);
    // The host decides where the file goes and refuses an existing file or a place outside its allowed roots.
    const path = await this.agent.checkpointTarget(name, request.out);
    const { vm, previous } = await this.states.claimFrom(id, 'checkpoint', 'checkpointing');
    const deps: CheckpointDeps = { inventory: this.inventory, agent: this.agent, states: this.states, logger: this.logger, pins: this.pins, collectGarbage: async () => void (await this.collectGarbage()), holdGarbage: (fn) => this.holdGarbage(fn), faults: this.faults };
    const controller = new AbortController();
    const task = await this.tasks.start('vm.checkpoint', vm, (ctx) => runCheckpoint(deps, { ...vm, state: previous }, { name, path, stop: request.stop }, ctx, newTaskId(), controller.signal));
    this.cancellers.set(task.id, controller);
    this.tasks.wait(task.id).catch(() => undefined).finally(() => this.cancellers.delete(task.id));
    return { vm: await this.resolve(id), task };
  }

  /**
   * Restores a checkpoint as a new VM with its own identity. Lazy (the default): the VM runs before its
   * memory is read and the task goes on until the rest has streamed in (agent/lazy-restore.ts); eager:
   * all memory is loaded before it runs. A restore that fails at any point leaves no VM.
   */
  async restore(input: unknown): Promise<VmAndTask> {
    const request = parseRequest('restore request', restoreRequestSchema, input);
    const checkpoint = await this.findRestorable(request.checkpoint);
    const taken = new Set((await this.inventory.listVms()).map((v) => v.name));
    let name = request.name;
    if (name && taken.has(name)) throw new AlreadyExistsError('VM', name);
    for (let i = 1; !name; i++) if (!taken.has(`${checkpoint.vmName}-r${i}`)) name = `${checkpoint.vmName}-r${i}`;
    const vmName = name;
    const id = newVmId();
    const now = new Date().toISOString();
    const spec: VmSpec = withNewIdentity(checkpoint.spec, vmName);
    const record: VmRecord = { id, name: vmName, state: 'starting', stateReason: `restoring checkpoint ${checkpoint.name}`, spec, runtime: null, createdAt: now, updatedAt: now };
    // A file from elsewhere names frozen disks no record protects: keep them from garbage collection while it restores.
    const pinned = checkpoint.id.startsWith('file:') ? checkpoint.spec.disks.map((d) => d.path).filter((p) => !this.pins.has(p)) : [];
    for (const p of pinned) this.pins.add(p);
    await this.inventory.insertVm(record);
    this.events.publish({ type: 'vm.created', vm: record, at: now });
    const task = await this.tasks.start('vm.restore', record, async (ctx) => {
      try {
        await ctx.progress(0.05, `loading ${checkpoint.path}`);
        await this.faults?.('restore.starting');
        const t0 = performance.now();
        const restored = await this.agent.restoreVm(id, vmName, checkpoint.path, spec, request.mode);
        const runningMs = performance.now() - t0;
        const lazy = request.mode === 'lazy';
        const { vm } = await this.states.settle(id, ['starting'], 'running', `restored from checkpoint ${checkpoint.name}${lazy ? ' (lazily)' : ''}`, { runtime: restored.runtime, spec: restored.spec });
        await this.faults?.('restore.running');
        await ctx.progress(lazy ? 0.3 : 0.8, `${vmName} runs after ${runningMs.toFixed(0)} ms; customizing its identity`);
        const customize = await applyIdentity(this.agent, this.states, vm, { timeoutMs: 30_000 });
        if (!lazy) return { vm, checkpoint: checkpoint.name, mode: request.mode, runningMs, customize, stream: null };
        // A lazy restore holds its task until the checkpoint is no longer needed (the VM runs meanwhile). If
        // the stream fails, the agent has killed the VM and this throws why; the VM is then removed below.
        await ctx.progress(0.4, `${vmName} runs; streaming the rest of its memory from the checkpoint`);
        const stream = await this.agent.waitForRestoreStream(id, (done, count) => void ctx.progress(0.4 + 0.6 * (done / count), `${vmName} runs; memory streamed: ${done} of ${count} blocks`).catch(() => undefined));
        return { vm: await this.resolve(id), checkpoint: checkpoint.name, mode: request.mode, runningMs, customize, stream };
      } catch (err) {
        await this.agent.killVm(id).catch(() => undefined);
        await this.agent.deleteVmFiles(id).catch(() => undefined);
        await this.inventory.deleteVm(id);
        this.events.publish({ type: 'vm.deleted', vmId: id, name: vmName, at: new Date().toISOString() });
        throw err;
      }
    });
    this.tasks.wait(task.id).catch(() => undefined).finally(() => pinned.forEach((p) => this.pins.delete(p)));
    return { vm: record, task };
  }

  /**
   * Cancels a running task that allows it (today: a checkpoint being written). The task rolls back as after
   * a failure and ends failed with TASK_CANCELLED; returns it once it has. A checkpoint already past its
   * write finishes normally.
   */
  async cancelTask(id: string): Promise<TaskRecord> {
    const task = await this.tasks.get(id);
    const controller = this.cancellers.get(id);
    if (!controller) {
      if (task.state !== 'running') throw new IllegalStateError(`task ${id}`, task.state, ['running'], 'cancel');
      throw new OffshootError('TASK_NOT_CANCELLABLE', `task ${id} (${task.kind}) cannot be cancelled; only a checkpoint being written can`, { id, kind: task.kind }, 409);
    }
    controller.abort(new OffshootError('TASK_CANCELLED', `${task.kind} of ${task.targetName} cancelled by request`, { id, kind: task.kind }, 409));
    return this.tasks.wait(id);
  }

  listCheckpoints(): Promise<CheckpointRecord[]> {
    return this.inventory.listCheckpoints();
  }

  /** A checkpoint by name, id or path; a file this host has no record of is read and validated (id "file:PATH"). */
  async getCheckpoint(ref: string): Promise<CheckpointRecord> {
    const checkpoint = await this.inventory.findCheckpoint(ref);
    if (checkpoint) return checkpoint;
    if (isAbsolute(ref)) return this.checkpointFromFile(ref);
    throw new NotFoundError('checkpoint', ref);
  }

  /** A complete checkpoint by name, id or known path, or a checkpoint file given by absolute path (carried from another machine). */
  private async findRestorable(ref: string): Promise<CheckpointRecord> {
    const checkpoint = await this.getCheckpoint(ref);
    if (checkpoint.state !== 'complete') throw new IllegalStateError(`checkpoint "${checkpoint.name}"`, checkpoint.state, ['complete'], 'restore');
    return checkpoint;
  }

  /**
   * A checkpoint file as a record: the host validates it with the strict reader and checks that the frozen
   * disks it names exist and pass the safe-image check (CHECKPOINT_CORRUPT, CHECKPOINT_VERSION,
   * CHECKPOINT_NOT_FOUND or CHECKPOINT_DISK_UNAVAILABLE otherwise).
   */
  private async checkpointFromFile(path: string): Promise<CheckpointRecord> {
    const { memoryBytes, fileBytes, metadata } = await this.agent.inspectCheckpoint(path);
    const vm = (metadata.vm ?? {}) as { id?: unknown; name?: unknown };
    const vmName = typeof vm.name === 'string' && isValidName(vm.name) ? vm.name : 'restored';
    const name = basename(path).replace(/\.ckpt$/, '');
    return { id: `file:${path}`, name, vmId: typeof vm.id === 'string' ? vm.id : '', vmName, path, state: 'complete', memoryBytes, fileBytes, spec: metadata.spec as VmSpec, createdAt: typeof metadata.createdAt === 'string' ? metadata.createdAt : '' };
  }

  async deleteCheckpoint(ref: string): Promise<CheckpointRecord> {
    // Only a recorded checkpoint: a file this host did not write is not deleted through Offshoot.
    const checkpoint = await this.inventory.findCheckpoint(ref);
    if (!checkpoint) throw new NotFoundError('checkpoint', ref);
    if (checkpoint.state === 'writing') throw new IllegalStateError(`checkpoint "${checkpoint.name}"`, checkpoint.state, ['complete', 'failed'], 'delete');
    await this.agent.removeCheckpointFile(checkpoint);
    await this.inventory.deleteCheckpoint(checkpoint.id);
    await this.collectGarbage();
    return checkpoint;
  }

  /** The VM's QEMU memory: resident, proportional, shared and private (from smaps_rollup). */
  async memory(ref: string): Promise<VmMemoryStats & { mode: string; templateId: string | null }> {
    const vm = await this.resolve(ref);
    if (!isLive(vm.state) || !vm.runtime) throw new IllegalStateError(`VM "${vm.name}"`, vm.state, LIVE_STATES, 'read the memory of');
    return { ...(await this.agent.memoryStats(vm.id)), mode: vm.runtime.memory.mode, templateId: vm.runtime.memory.templateId };
  }

  /**
   * Runs `fn` (a freeze: it makes bases that its VM's record names only once it has written it) with garbage
   * collection held off, so a collection running meanwhile cannot delete a base no record names yet.
   */
  holdGarbage<T>(fn: () => Promise<T>): Promise<T> {
    return this.garbageLock.run('gc', fn);
  }

  /** Removes memory templates no live VM maps and disk bases no VM's chain uses (never while a freeze runs). */
  collectGarbage(): Promise<{ templates: string[]; bases: string[] }> {
    return this.garbageLock.run('gc', () => this.collectGarbageNow());
  }

  private async collectGarbageNow(): Promise<{ templates: string[]; bases: string[] }> {
    const vms = await this.inventory.listVms();
    const templates = new Set<string>(this.pins);
    const bases = new Set<string>(this.pins);
    for (const vm of vms) {
      if (vm.runtime?.memory.templateId && isLive(vm.state)) templates.add(vm.runtime.memory.templateId);
      for (const disk of vm.spec.disks) for (const b of disk.backing ?? []) bases.add(b);
    }
    // A checkpoint refers to the disks frozen with it.
    for (const checkpoint of await this.inventory.listCheckpoints()) {
      for (const disk of checkpoint.spec.disks) for (const b of [disk.path, ...disk.backing]) bases.add(b);
    }
    const removed = { templates: await this.agent.releaseTemplates(templates), bases: await this.agent.releaseBases(bases) };
    if (removed.templates.length || removed.bases.length) this.logger.info(removed, 'released unused templates and bases');
    return removed;
  }

  /** ACPI power-down, then kill after the timeout. */
  async stop(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const { timeoutMs } = parseRequest('stop request', stopRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'stop', 'stopping');
    const task = await this.tasks.start('vm.stop', vm, async (ctx) => {
      await ctx.progress(0.1, 'waiting for the guest to power off');
      let forced = false;
      try {
        forced = (await this.agent.stopVm(id, timeoutMs)).forced;
      } catch (err) {
        if (!(err instanceof OffshootError && err.code === 'VM_NOT_RUNNING')) throw err;
      }
      const reason = forced ? `killed after the guest did not power off within ${timeoutMs} ms` : 'stopped by request';
      const { vm: after } = await this.states.settle(id, ['stopping'], 'stopped', reason, { runtime: null });
      await this.collectGarbage();
      return { vm: after, forced };
    });
    return { vm: await this.resolve(id), task };
  }

  async pause(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    await this.states.claim(id, 'pause');
    await this.agent.pauseVm(id);
    return (await this.states.settle(id, ['running'], 'paused', null)).vm;
  }

  async resume(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    await this.states.claim(id, 'resume');
    await this.agent.resumeVm(id);
    return (await this.states.settle(id, ['paused'], 'running', null)).vm;
  }

  async kill(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    await this.states.claim(id, 'kill');
    try {
      await this.agent.killVm(id);
    } catch (err) {
      if (!(err instanceof OffshootError && err.code === 'VM_NOT_RUNNING')) throw err;
    }
    const { vm } = await this.states.settle(id, LIVE_STATES, 'stopped', 'killed by request', { runtime: null });
    await this.collectGarbage();
    return vm;
  }

  async delete(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    return this.states.withVm(id, async (vm) => {
      assertOperationAllowed(vm.name, vm.state, 'delete');
      await this.agent.deleteVmFiles(id);
      await this.inventory.deleteVm(id);
      this.events.publish({ type: 'vm.deleted', vmId: id, name: vm.name, at: new Date().toISOString() });
      this.logger.info({ vm: vm.name, id }, 'VM deleted');
      return vm;
    }).then(async (vm) => {
      await this.collectGarbage();
      return vm;
    });
  }

  async exec(ref: string, input: unknown): Promise<ExecResult> {
    const request = parseRequest('exec request', execRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'exec');
    if (!hasGuestAgent(vm.spec)) throw new OffshootError('GUEST_AGENT_ABSENT', `VM "${vm.name}" has no guest agent (created with guestAgent: false): nothing can run in it through Offshoot`, { vm: vm.name }, 409);
    return this.agent.exec(id, request);
  }

  async console(ref: string, maxBytes = 64 * 1024): Promise<string> {
    const { id } = await this.resolve(ref);
    return this.agent.readConsole(id, maxBytes);
  }

  /**
   * After a daemon (re)start: fails tasks the previous daemon left running, re-adopts VMs
   * whose QEMU still runs, marks the others stopped, and removes orphan processes and files.
   */
  async recover(): Promise<{ adopted: string[]; lost: string[]; killed: number[]; removed: string[] }> {
    for (const task of await this.tasks.interrupted()) {
      const journal = (task.result as { journal?: ForkJournal } | null)?.journal;
      let recovery = 'nothing to roll back';
      if ((task.kind === 'vm.fork' || task.kind === 'vm.checkpoint') && journal) {
        recovery = await recoverFork({ inventory: this.inventory, agent: this.agent, states: this.states, logger: this.logger }, journal).catch((err: unknown) => `rollback failed: ${(err as Error).message}`);
      }
      if (task.kind === 'vm.restore') recovery = await this.removeUnfinishedRestore(task.targetId).catch((err: unknown) => `rollback failed: ${(err as Error).message}`);
      await this.tasks.failInterrupted(task, recovery);
    }
    // A checkpoint still being written when the daemon died is incomplete: remove it and its partial file.
    for (const checkpoint of await this.inventory.listCheckpoints()) {
      if (checkpoint.state !== 'writing') continue;
      await this.agent.removeCheckpointFile(checkpoint).catch(() => undefined);
      await this.inventory.deleteCheckpoint(checkpoint.id);
      this.logger.warn({ checkpoint: checkpoint.name }, 'removed a checkpoint that was interrupted while being written');
    }
    const vms = await this.inventory.listVms();
    const adopted: string[] = [];
    const lost: string[] = [];
    for (const vm of vms) {
      if (!isLive(vm.state)) continue;
      const status = vm.runtime ? await this.agent.adoptVm(vm.id, vm.runtime).catch(() => undefined) : undefined;
      if (status) {
        adopted.push(vm.name);
        if (status !== vm.state) await this.states.force(vm.id, status, vm.state === 'starting' ? 'adopted while booting' : null);
      } else {
        lost.push(vm.name);
        await this.states.force(vm.id, 'stopped', 'QEMU was not running when the daemon restarted', { runtime: null });
      }
    }
    const live = new Set(vms.filter((vm) => adopted.includes(vm.name)).map((vm) => vm.id));
    const known = new Set(vms.map((vm) => vm.id));
    const { killed, removed } = await this.agent.reapOrphans(live, known);
    await this.collectGarbage();
    this.logger.info({ adopted, lost, killed, removed }, 'recovery done');
    return { adopted, lost, killed, removed };
  }

  /**
   * A restore the daemon died in never finished: a lazily restored VM cannot run on without the stream
   * that died with it, an eager one never started. Its VM goes, as after a failed restore.
   */
  private async removeUnfinishedRestore(vmId: string): Promise<string> {
    const vm = await this.inventory.getVm(vmId);
    if (!vm) return 'nothing to roll back';
    if (vm.runtime) await this.agent.killStray(vmId, vm.runtime).catch(() => false);
    await this.agent.deleteVmFiles(vmId).catch(() => undefined);
    await this.inventory.deleteVm(vmId);
    this.events.publish({ type: 'vm.deleted', vmId, name: vm.name, at: new Date().toISOString() });
    this.logger.warn({ vm: vm.name }, 'removed a VM whose restore was interrupted');
    return `removed the unfinished VM ${vm.name}`;
  }

  /** Stops watching; VMs keep running (the next daemon re-adopts them). A lazy restore's task (and so close) waits for its stream. */
  async close(): Promise<void> {
    this.unsubscribe();
    await this.tasks.drain();
  }
}
