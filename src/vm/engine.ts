// The VM engine: the single request handler under every front end (REST API,
// CLI through the API). It validates requests, places VMs on hosts, claims
// VMs through the state keeper, runs long work as tasks, and reaches each
// VM's host only through the agent protocol (the fleet's client for that
// host). Operations leave a VM either done or as it was. Checkpoints and
// restore live in checkpoint/checkpoints.ts, recovery, task takeover and
// host loss in recovery.ts, garbage collection in gc.ts, live migration,
// its policies and queue, and host drains in migrate/.
// It is one controller among those sharing the inventory (coordinator.ts):
// VM claims and versions, task leases, GC pins and the garbage lock are rows
// of the inventory, and its events reach every controller's subscribers; on
// SQLite it is the only one, through the same code.
import { AlreadyExistsError, NotFoundError, OffshootError, silentLogger } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { AgentClient, AgentEvent, ExecResult, HostInfo, VmMemoryStats } from '../protocol/index.ts';
import { newOperationId, runOperation } from '../protocol/index.ts';
import { Checkpoints } from './checkpoint/checkpoints.ts';
import type { CoordinationStore, SharedEventBus } from './coordination.ts';
import { Coordinator } from './coordinator.ts';
import type { EngineContext } from './engine-context.ts';
import { EventBus } from './events.ts';
import type { EngineEvent } from './events.ts';
import { forkRequestSchema } from './fork/fork-request.ts';
import { runFork } from './fork/run-fork.ts';
import type { ForkDeps } from './fork/run-fork.ts';
import { collectGarbage } from './gc.ts';
import type { Fleet, FleetListener, HostRecord } from './hosts/index.ts';
import { newTaskId, newVmId } from './ids.ts';
import type { Inventory, TaskRecord, VmRecord } from './records.ts';
import { PinSet } from './pin-set.ts';
import { Recovery } from './recovery.ts';
import type { TaskRecovery } from './recovery.ts';
import { applyIdentity, hasGuestAgent } from './identity.ts';
import { KeyedMutex } from './lock.ts';
import { DRAIN_TASK_KIND, GroupMigrations, HostDrains, MIGRATION_TASK_KINDS, MigrationPolicies, Migrations } from './migrate/index.ts';
import type { MigrationControlStore } from './migrate/index.ts';
import { execRequestSchema, parseRequest, startRequestSchema, stopRequestSchema } from './requests.ts';
import { parseCreateVmRequest, resolveMemoryMiB } from './spec.ts';
import { BUSY_STATES, LIVE_STATES, assertOperationAllowed, isLive } from './state.ts';
import { StateKeeper } from './state-keeper.ts';
import { TaskRunner } from './tasks.ts';
import type { TaskContext } from './tasks.ts';

export interface VmEngineOptions {
  inventory: Inventory;
  fleet: Fleet;
  logger?: Logger;
  /** How long a boot may take until the guest agent answers. */
  bootTimeoutMs?: number;
  /** Fault injection for tests (see fork/run-fork.ts). */
  faults?: (point: string) => Promise<void> | void;
  /** Files in use that VMs and checkpoints do not name (pools' and copy jobs' sources), by host. */
  extraFilesInUse?: (hostId: string) => Promise<string[]>;
  /** The recorded content ids of datastore disks among these files (a migration finds bases seeded at its destination by them). */
  contentIdsOf?: (files: string[]) => Promise<Record<string, string>>;
  /**
   * This controller among those sharing the inventory: its id (default: a new one; give a stable one so a restarted
   * controller recovers its own tasks at once), the lease of its tasks and claims (default 30 s), the store of the
   * coordination rows (default: the inventory's own), and the shared event bus (default: none, events stay here).
   */
  coordination?: { controllerId?: string; leaseMs?: number; store?: CoordinationStore; bus?: SharedEventBus<EngineEvent> };
}

/** The coordination parts of an inventory that has them (the store's KyselyInventory). */
function coordinationOf(inventory: Inventory): CoordinationStore {
  const parts = inventory as Inventory & Partial<CoordinationStore>;
  if (!parts.claims || !parts.pins || !parts.leases || !parts.controllers) throw new Error('the inventory has no coordination store: pass VmEngineOptions.coordination.store');
  return { claims: parts.claims, pins: parts.pins, leases: parts.leases, controllers: parts.controllers };
}

/** How long a freeze or a collection waits for the fleet's garbage lock. */
const GARBAGE_LOCK_WAIT_MS = 5 * 60_000;

/** What a start journals: the agent operations it follows, so a controller taking it over reattaches to them. */
interface StartJournal {
  startOperationId: string;
  waitOperationId: string;
  timeoutMs: number;
}

export interface VmAndTask {
  vm: VmRecord;
  task?: TaskRecord;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class VmEngine implements FleetListener {
  readonly events = new EventBus();
  readonly tasks: TaskRunner;
  /** Shared with the storage service (clones and pools claim VMs through it). */
  readonly states: StateKeeper;
  readonly fleet: Fleet;
  readonly checkpoints: Checkpoints;
  readonly migrations: Migrations;
  readonly groupMigrations: GroupMigrations;
  /** Migration policies (defaults per fleet and host) and host drains (migrate/policies.ts, migrate/drain.ts). */
  readonly migrationPolicies: MigrationPolicies;
  readonly drains: HostDrains;
  /** Templates and bases that a request in flight has made but no VM record names yet (this controller's pins). */
  readonly pins: PinSet;
  /** This controller among the fleet's: its id, claims, the beat that renews leases and takes over tasks. */
  readonly coordinator: Coordinator;
  private readonly inventory: Inventory;
  private readonly logger: Logger;
  private readonly recovery: Recovery;
  private readonly ctx: EngineContext;
  private readonly options: VmEngineOptions;
  /** Garbage collection and freezes (which make bases no record names yet) run one at a time. */
  private readonly garbageLock = new KeyedMutex();
  private readonly cancelWatchers: Array<{ cancellable(): boolean; cancelRequested(taskIds: string[]): void }> = [];
  /** Task kinds another part cancels (a template placement): cancelTask hands their running tasks to it. */
  private readonly cancellers = new Map<string, (task: TaskRecord) => Promise<TaskRecord>>();

  constructor(options: VmEngineOptions) {
    this.options = options;
    this.inventory = options.inventory;
    this.fleet = options.fleet;
    this.logger = options.logger ?? silentLogger;
    const store = options.coordination?.store ?? coordinationOf(this.inventory);
    this.coordinator = new Coordinator({ controllerId: options.coordination?.controllerId, leaseMs: options.coordination?.leaseMs, store, logger: this.logger });
    const owner = this.coordinator.controllerId;
    if (options.coordination?.bus) this.events.connect(options.coordination.bus, this.logger);
    this.tasks = new TaskRunner(this.inventory, this.events, this.logger, { owner, leaseMs: this.coordinator.leaseMs, leases: store.leases, pins: store.pins });
    this.states = new StateKeeper(this.inventory, this.events, this.coordinator);
    this.pins = new PinSet(store.pins, `controller:${owner}`, owner, this.logger);
    this.ctx = {
      inventory: this.inventory,
      fleet: this.fleet,
      states: this.states,
      events: this.events,
      tasks: this.tasks,
      logger: this.logger,
      pins: this.pins,
      gcPins: store.pins,
      coordinator: this.coordinator,
      bootTimeoutMs: options.bootTimeoutMs ?? 120_000,
      faults: options.faults,
      agentOf: (vm) => this.fleet.agent(vm.hostId),
      collectGarbage: (hostId) => this.collectGarbage(hostId),
      holdGarbage: (fn) => this.holdGarbage(fn),
      contentIdsOf: options.contentIdsOf,
    };
    this.checkpoints = new Checkpoints(this.ctx);
    const control = (this.inventory as Inventory & { migrationControl?: MigrationControlStore }).migrationControl;
    if (!control) throw new Error('the inventory has no migration policies store (KyselyInventory.migrationControl)');
    this.migrations = new Migrations(this.ctx, control);
    this.groupMigrations = new GroupMigrations(this.ctx, (ref) => this.resolve(ref), this.migrations.admission, control);
    this.migrationPolicies = new MigrationPolicies(this.ctx, control);
    this.drains = new HostDrains(this.ctx, this.migrations);
    // Cancels of migrations and drains asked on another controller reach them through their task's row.
    for (const part of [this.migrations, this.groupMigrations, this.drains]) this.cancelWatchers.push({ cancellable: () => part.running(), cancelRequested: (ids) => part.cancelRequested(ids) });
    this.recovery = new Recovery(this.ctx);
    this.recovery.register('vm.start', (task, journal) => this.resumeStart(task, journal as StartJournal | undefined));
    this.recovery.register('vm.stop', (task, journal) => this.resumeStop(task, journal as { stopOperationId: string; timeoutMs: number } | undefined));
    this.recovery.register(DRAIN_TASK_KIND, async () => 'the drain stopped with its controller (each member migration is recovered on its own); run host drain again for the VMs left');
    this.fleet.listen(this);
    // The beat runs from now on (renewing the leases of the tasks this controller starts); recover() also takes
    // over the tasks of this controller's previous life at once.
    this.coordinator.start({
      renewTasks: () => this.tasks.renewLeases(),
      takeOver: (task) => this.recovery.takeOver(task),
      cancelRequested: (ids) => {
        this.checkpoints.cancelRequested(ids);
        for (const w of this.cancelWatchers) w.cancelRequested(ids);
      },
      cancellable: () => this.checkpoints.cancellable() || this.cancelWatchers.some((w) => w.cancellable()),
    });
  }

  /**
   * Another part whose tasks can be stopped from another controller (copy jobs): while `cancellable()`, the cancel
   * requests written into this controller's task rows are handed to it every second.
   */
  watchCancels(watcher: { cancellable(): boolean; cancelRequested(taskIds: string[]): void }): void {
    this.cancelWatchers.push(watcher);
  }

  /** Running tasks of `kind` are cancelled by `cancel` (which asks their controller, wherever it runs, and waits for their end). */
  registerCanceller(kind: string, cancel: (task: TaskRecord) => Promise<TaskRecord>): void {
    this.cancellers.set(kind, cancel);
  }

  /** This controller's id in the inventory (tasks' owner, claims' holder). */
  get controllerId(): string {
    return this.coordinator.controllerId;
  }

  /**
   * How a controller taking over a task of `kind` (its owner died) rolls it forward or back: return a sentence
   * saying what was done (the task then fails with TASK_INTERRUPTED and it), or 'resumed' when the handler went on
   * with it (TaskRunner.resume). Kinds without a handler fail, their VM reconciled with its host.
   */
  registerRecovery(kind: string, handler: TaskRecovery): void {
    this.recovery.register(kind, handler);
  }

  /** The protocol client of a VM's host. */
  agentOf(vm: Pick<VmRecord, 'hostId'>): AgentClient {
    return this.fleet.agent(vm.hostId);
  }

  /** A host's name (its id if the fleet does not know it). */
  hostName(hostId: string): string {
    return this.fleet.hosts().find((h) => h.id === hostId)?.name ?? hostId;
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

  /** What a host's agent tells of itself (the controller's own host by default). */
  async hostInfo(hostRef?: string): Promise<HostInfo> {
    const host = hostRef ? await this.fleet.resolve(hostRef) : (this.fleet.hosts().find((h) => h.id === this.fleet.localHostId) ?? this.fleet.hosts()[0]);
    if (!host) throw new NotFoundError('host', hostRef ?? 'local');
    return this.fleet.agent(host.id).hostInfo({});
  }

  async create(input: unknown): Promise<VmAndTask> {
    const request = parseCreateVmRequest(input);
    await this.options.faults?.('vm.create');
    const memoryMiB = resolveMemoryMiB(request.memory);
    if (await this.inventory.findVmByName(request.name)) throw new AlreadyExistsError('VM', request.name);
    const host = await this.fleet.place(memoryMiB, request.host);
    const agent = this.fleet.agent(host.id);
    const id = newVmId();
    const spec = await agent.prepareVm({
      vmId: id,
      name: request.name,
      vcpus: request.vcpus,
      memoryMiB,
      boot: request.kernel
        ? { kind: 'kernel', kernel: { hostPath: request.kernel.path }, ...(request.kernel.initrd ? { initrd: { hostPath: request.kernel.initrd } } : {}), ...(request.kernel.cmdline !== undefined ? { cmdline: request.kernel.cmdline } : {}) }
        : request.bootDisk
          ? { kind: 'disk', disk: { hostPath: request.bootDisk } }
          : { kind: 'default-guest' },
      disks: request.disks.map((d) => ({ source: { hostPath: d.path }, readOnly: d.readOnly })),
      network: request.network,
      guestAgent: request.guestAgent,
    });
    const now = new Date().toISOString();
    const vm: VmRecord = { id, name: request.name, state: 'created', stateReason: null, hostId: host.id, spec, runtime: null, createdAt: now, updatedAt: now };
    try {
      await this.inventory.insertVm(vm);
    } catch (err) {
      await agent.deleteVmFiles({ vmId: id }).catch(() => undefined);
      throw err;
    }
    this.events.publish({ type: 'vm.created', vm, at: now });
    this.logger.info({ vm: vm.name, id, host: host.name }, 'VM created');
    if (!request.start) return { vm };
    return this.start(id, request.startTimeoutMs === undefined ? {} : { timeoutMs: request.startTimeoutMs });
  }

  /**
   * Boots the VM. The task finishes once the guest is usable: its guest agent answers (any guest; within
   * `timeoutMs`, else GUEST_AGENT_UNAVAILABLE and the VM is stopped), and a pending identity (a clone's first
   * boot) is applied. A guest created with guestAgent: false is done when QEMU runs.
   */
  async start(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const { timeoutMs = this.ctx.bootTimeoutMs } = parseRequest('start request', startRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'start', 'starting');
    const journal: StartJournal = { startOperationId: newOperationId(), waitOperationId: newOperationId(), timeoutMs };
    const task = await this.tasks.start('vm.start', vm, (ctx) => this.runStart(vm, journal, ctx));
    return { vm: await this.resolve(id), task };
  }

  /**
   * A start's work, phase by phase, following agent operations whose ids are in its journal: a controller taking
   * the task over runs it again from the top and so reattaches to the same QEMU and guest-agent wait.
   */
  private async runStart(vm: VmRecord, journal: StartJournal, ctx: TaskContext): Promise<unknown> {
    const { id } = vm;
    const { timeoutMs } = journal;
    const agent = this.agentOf(vm);
    try {
      await ctx.journal(journal);
      await ctx.progress(0.05, 'starting QEMU');
      const t0 = performance.now();
      const runtime = await runOperation(agent, 'startVm', { operationId: journal.startOperationId, vmId: vm.id, name: vm.name, spec: vm.spec });
      await this.states.settle(id, ['starting'], 'starting', null, { runtime });
      const guestAgent = hasGuestAgent(vm.spec);
      if (guestAgent) {
        await ctx.progress(0.3, 'booting: waiting for the guest agent');
        await runOperation(agent, 'waitForGuestAgent', { operationId: journal.waitOperationId, vmId: id, timeoutMs }).catch((err: unknown) => {
          if (!(err instanceof OffshootError && err.code === 'GUEST_AGENT_UNAVAILABLE')) throw err;
          throw new OffshootError('GUEST_AGENT_UNAVAILABLE', `the guest agent of VM "${vm.name}" did not answer within ${timeoutMs} ms of its start; the VM was stopped (a guest with no QEMU guest agent: create it with guestAgent: false; a slow one: start it with a longer timeout)`, { vm: vm.name, timeoutMs }, 504, { cause: err });
        });
      }
      const agentMs = guestAgent ? Math.round(performance.now() - t0) : null;
      let identity = null;
      if (vm.spec.identity?.pending) {
        await ctx.progress(0.8, `giving ${vm.name} its own identity`);
        identity = await applyIdentity(agent, this.states, vm, { timeoutMs: 30_000 });
        if (!identity.ok) throw new OffshootError('IDENTITY_FAILED', `VM "${vm.name}" could not be given its own identity: ${identity.error}`, { vm: vm.name, error: identity.error }, 500);
      }
      const { moved, vm: after } = await this.states.settle(id, ['starting'], 'running', guestAgent ? null : 'started without a guest agent (guestAgent: false)');
      if (!moved) throw new OffshootError('START_INTERRUPTED', `VM "${vm.name}" became ${after.state} before it finished booting`, { vm: vm.name, state: after.state }, 409);
      return { vm: after, guestAgent: guestAgent ? 'answered' : 'none', agentMs, identity };
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      await agent.killVm({ vmId: id }).catch(() => undefined);
      await this.states.settle(id, ['starting', 'running', 'paused'], 'failed', `start failed: ${(err as Error).message}`, { runtime: null });
      throw err;
    }
  }

  /** A start whose controller died: run it again from its journal (reattaching to its operations), or fail the VM. */
  private async resumeStart(task: TaskRecord, journal: StartJournal | undefined): Promise<string> {
    const vm = await this.inventory.getVm(task.targetId);
    if (!vm || vm.state !== 'starting') return `nothing to do (the VM is ${vm?.state ?? 'gone'})`;
    if (!journal?.startOperationId) return this.recovery.reconcileVm(vm.id, 'start interrupted');
    this.tasks.resume(task, (ctx) => this.runStart(vm, journal, ctx));
    return 'resumed';
  }

  /** A stop whose controller died: follow its power-down operation again, then record the VM stopped. */
  private async resumeStop(task: TaskRecord, journal: { stopOperationId: string; timeoutMs: number } | undefined): Promise<string> {
    const vm = await this.inventory.getVm(task.targetId);
    if (!vm || vm.state !== 'stopping') return `nothing to do (the VM is ${vm?.state ?? 'gone'})`;
    if (!journal?.stopOperationId) return this.recovery.reconcileVm(vm.id, 'stop interrupted');
    this.tasks.resume(task, (ctx) => this.runStop(vm, journal, ctx));
    return 'resumed';
  }

  /** Forks a running (or paused) VM into N children that share its memory copy-on-write; see fork/run-fork.ts. */
  async fork(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const request = parseRequest('fork request', forkRequestSchema, input);
    const { id } = await this.resolve(ref);
    // Busy until the task ends: after the switch-over the VM runs again, but the fork still flattens its disks.
    const { vm: source, previous: before } = await this.states.claimFrom(id, 'fork', 'forking', 'with a fork');
    const forkId = newTaskId();
    const deps: ForkDeps = { ...this.ctx, agent: this.agentOf(source) };
    try {
      const task = await this.tasks.start('vm.fork', source, (ctx) => runFork(deps, { ...source, state: before }, request, ctx, forkId).finally(() => this.states.release(id)));
      return { vm: await this.resolve(id), task };
    } catch (err) {
      await this.states.release(id);
      await this.states.settle(id, ['forking'], before, null).catch(() => undefined);
      throw err;
    }
  }

  /** Live-migrates a VM to another host (see migrate/run-migration.ts). */
  async migrate(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const task = await this.migrations.migrate(await this.resolve(ref), input);
    return { vm: await this.resolve(task.targetId), task };
  }

  /** Live-migrates several VMs together, with one switch-over (see migrate/run-group.ts); answers the `vm.migrate-group` task. */
  migrateGroup(input: unknown): Promise<TaskRecord> {
    return this.groupMigrations.migrate(input);
  }

  checkpoint(ref: string, input: unknown = {}): Promise<VmAndTask> {
    return this.checkpoints.checkpoint(ref, input);
  }

  restore(input: unknown): Promise<VmAndTask> {
    return this.checkpoints.restore(input);
  }

  /**
   * Cancels a running task that allows it (a checkpoint being written, a migration before its switch-over). The task rolls back as after
   * a failure and ends failed with TASK_CANCELLED; returns it once it has.
   */
  async cancelTask(id: string): Promise<TaskRecord> {
    if (this.migrations.cancellable(id)) return this.migrations.cancel(id);
    if (this.groupMigrations.cancellable(id)) return this.groupMigrations.cancel(id);
    if (this.drains.cancellable(id)) return this.drains.cancel(id);
    const task = await this.tasks.get(id);
    const canceller = this.cancellers.get(task.kind);
    if (canceller && task.state === 'running') return canceller(task);
    // A migration or drain another controller runs: ask it through the task's row (it polls for that every second).
    if (task.state === 'running' && MIGRATION_TASK_KINDS.includes(task.kind)) {
      await this.coordinator.store.leases.requestCancel(id);
      return this.tasks.wait(id);
    }
    return this.checkpoints.cancel(id);
  }

  /** Sets a host draining and live-migrates its VMs off (see migrate/drain.ts); answers the `host.drain` task. */
  drainHost(ref: string, input: unknown = {}): Promise<TaskRecord> {
    return this.drains.drain(ref, input);
  }

  listCheckpoints() {
    return this.checkpoints.list();
  }

  getCheckpoint(ref: string) {
    return this.checkpoints.get(ref);
  }

  deleteCheckpoint(ref: string) {
    return this.checkpoints.delete(ref);
  }

  /** The VM's QEMU memory: resident, proportional, shared and private (from smaps_rollup). */
  async memory(ref: string): Promise<VmMemoryStats & { mode: string; templateId: string | null }> {
    const vm = await this.resolve(ref);
    if (!isLive(vm.state) || vm.state === 'unknown' || !vm.runtime) throw new OffshootError('ILLEGAL_STATE', `cannot read the memory of VM "${vm.name}": it is ${vm.state}`, { vm: vm.name, state: vm.state, required: LIVE_STATES }, 409);
    return { ...(await this.agentOf(vm).memoryStats({ vmId: vm.id })), mode: vm.runtime.memory.mode, templateId: vm.runtime.memory.templateId };
  }

  /**
   * Runs `fn` (a freeze: it makes bases that its VM's record names only once it has written it) with garbage
   * collection held off, so a collection running meanwhile cannot delete a base no record names yet.
   */
  holdGarbage<T>(fn: () => Promise<T>): Promise<T> {
    // In this process first, then across the fleet: a claim on `gc` that every controller's freezes and collections take.
    return this.garbageLock.run('gc', () => this.coordinator.withClaim('gc', 'garbage lock', { waitMs: GARBAGE_LOCK_WAIT_MS, long: true }, fn));
  }

  /** Removes memory templates no live VM maps and disk bases no VM's chain uses (see gc.ts; never while a freeze runs on any controller). */
  collectGarbage(hostId?: string): Promise<{ templates: string[]; files: string[] }> {
    return this.holdGarbage(() => this.collectGarbageNow(hostId));
  }

  private collectGarbageNow(hostId?: string): Promise<{ templates: string[]; files: string[] }> {
    const pinned = async () => {
      await this.pins.flushed();
      return [...(await this.ctx.gcPins.paths()), ...this.pins];
    };
    return collectGarbage({ inventory: this.inventory, fleet: this.fleet, logger: this.logger, pinned, agent: (h) => this.fleet.agent(h), extraFiles: this.options.extraFilesInUse }, hostId);
  }

  /** ACPI power-down, then kill after the timeout. */
  async stop(ref: string, input: unknown = {}): Promise<VmAndTask> {
    const { timeoutMs } = parseRequest('stop request', stopRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'stop', 'stopping');
    const journal = { stopOperationId: newOperationId(), timeoutMs };
    const task = await this.tasks.start('vm.stop', vm, (ctx) => this.runStop(vm, journal, ctx));
    return { vm: await this.resolve(id), task };
  }

  private async runStop(vm: VmRecord, journal: { stopOperationId: string; timeoutMs: number }, ctx: TaskContext): Promise<unknown> {
    const { id } = vm;
    const { timeoutMs } = journal;
    await ctx.journal(journal);
    await ctx.progress(0.1, 'waiting for the guest to power off');
    let forced = false;
    try {
      forced = (await runOperation(this.agentOf(vm), 'stopVm', { operationId: journal.stopOperationId, vmId: id, timeoutMs })).forced;
    } catch (err) {
      if (!(err instanceof OffshootError && err.code === 'VM_NOT_RUNNING')) throw err;
    }
    const reason = forced ? `killed after the guest did not power off within ${timeoutMs} ms` : 'stopped by request';
    const { vm: after } = await this.states.settle(id, ['stopping'], 'stopped', reason, { runtime: null });
    await this.collectGarbage(vm.hostId);
    return { vm: after, forced };
  }

  async pause(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'pause');
    await this.agentOf(vm).pauseVm({ vmId: id });
    return (await this.states.settle(id, ['running'], 'paused', null)).vm;
  }

  async resume(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'resume');
    await this.agentOf(vm).resumeVm({ vmId: id });
    return (await this.states.settle(id, ['paused'], 'running', null)).vm;
  }

  async kill(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    const claimed = await this.states.claim(id, 'kill');
    try {
      await this.agentOf(claimed).killVm({ vmId: id });
    } catch (err) {
      if (!(err instanceof OffshootError && err.code === 'VM_NOT_RUNNING')) throw err;
    }
    const { vm } = await this.states.settle(id, LIVE_STATES, 'stopped', 'killed by request', { runtime: null });
    await this.collectGarbage(vm.hostId);
    return vm;
  }

  async delete(ref: string): Promise<VmRecord> {
    const { id } = await this.resolve(ref);
    // Under the VM's claim (a freeze for a clone on another controller waits, or this waits for it), and the
    // record goes only if nobody changed it meanwhile.
    const vm = await this.states.whenIdle(id, 'delete', async (vm) => {
      assertOperationAllowed(vm.name, vm.state, 'delete');
      await this.agentOf(vm).deleteVmFiles({ vmId: id });
      await this.inventory.deleteVm(id, vm.version === undefined ? {} : { expectVersion: vm.version });
      this.events.publish({ type: 'vm.deleted', vmId: id, name: vm.name, at: new Date().toISOString() });
      this.logger.info({ vm: vm.name, id }, 'VM deleted');
      return vm;
    });
    await this.collectGarbage(vm.hostId);
    return vm;
  }

  async exec(ref: string, input: unknown): Promise<ExecResult> {
    const request = parseRequest('exec request', execRequestSchema, input);
    const { id } = await this.resolve(ref);
    const vm = await this.states.claim(id, 'exec');
    if (!hasGuestAgent(vm.spec)) throw new OffshootError('GUEST_AGENT_ABSENT', `VM "${vm.name}" has no guest agent (created with guestAgent: false): nothing can run in it through Offshoot`, { vm: vm.name }, 409);
    return this.agentOf(vm).exec({ vmId: id, ...request });
  }

  async console(ref: string, maxBytes = 64 * 1024): Promise<string> {
    const vm = await this.resolve(ref);
    return (await this.agentOf(vm).readConsole({ vmId: vm.id, maxBytes })).text;
  }

  /**
   * After a controller (re)start: fails tasks a previous controller left running (rolling back what their
   * journals say), re-adopts VMs whose QEMU still runs, marks the others stopped, and removes orphans.
   */
  recover() {
    return this.recovery.recoverAll();
  }

  /** Waits until the tasks this controller took over from others have been recovered (tests, benchmarks). */
  takeoversSettled(): Promise<void> {
    return this.coordinator.settled();
  }

  // The fleet's news (FleetListener).

  vmExited(host: HostRecord, event: Extract<AgentEvent, { type: 'vm.exit' }>): void {
    // A fork or checkpoint owns its VM and handles its QEMU's end itself; so does a start (or restore) still in
    // progress, which fails the VM with the reason. An exit of an older QEMU of the VM is old news.
    const exitable = LIVE_STATES.filter((s) => !BUSY_STATES.includes(s) && s !== 'unknown' && s !== 'starting');
    void this.states
      .withVm(event.vmId, async (vm) => vm)
      .then((vm) => {
        if (vm.hostId !== host.id || vm.runtime?.instance !== event.instance) return { moved: false, vm };
        return this.states.settle(event.vmId, exitable, event.clean ? 'stopped' : 'failed', event.reason, { runtime: null });
      })
      .then(async ({ moved, vm }) => {
        if (!moved) return;
        this.logger.info({ vm: vm.name, state: vm.state, reason: event.reason }, 'VM QEMU ended');
        await this.collectGarbage(host.id);
      })
      .catch((err: unknown) => {
        if (!(err instanceof OffshootError && err.code === 'ILLEGAL_STATE')) this.logger.error({ err, vmId: event.vmId }, 'cannot record a QEMU exit');
      });
  }

  hostLost(host: HostRecord): void {
    void this.recovery.hostLost(host).catch((err: unknown) => this.logger.error({ err, host: host.name }, 'cannot mark the VMs of an unreachable host'));
  }

  hostBack(host: HostRecord): void {
    void this.recovery.hostBack(host).catch((err: unknown) => this.logger.error({ err, host: host.name }, 'cannot re-adopt the VMs of a host'));
  }

  resync(host: HostRecord): void {
    void this.recovery.hostBack(host).catch((err: unknown) => this.logger.error({ err, host: host.name }, 'cannot reconcile the VMs of a host'));
  }

  /** Stops watching; VMs keep running (the next controller re-adopts them). A lazy restore's task (and so close) waits for its stream. */
  async close(): Promise<void> {
    await this.tasks.drain();
    await this.coordinator.stop();
    await this.events.disconnect();
  }
}
