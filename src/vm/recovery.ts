// Recovery: what a controller does when it starts, when it takes over a task
// whose controller died, and when a host it monitors is lost or comes back.
// - A task left running by a controller that died (its lease expired, or it
//   is this controller's previous life) is taken over by one controller and
//   rolled forward or back from its journal: a fork or a checkpoint's freeze
//   is rolled back (fork/recover-fork.ts; the children it made and a
//   checkpoint file being written go too); a lazy restore whose host still
//   streams is reattached and finished, else its VM is removed; a start or a
//   stop reattaches to its agent operations and finishes; a live migration
//   goes forward or back from its journal (migrate/); kinds registered
//   by other parts (copy jobs, template placements) go on as they say; any other kind fails with
//   TASK_INTERRUPTED, its VM reconciled with what its host runs.
// - Checkpoints left `writing` by no running task are removed with their
//   partial files.
// - At start, on every reachable host this controller monitors: VMs whose
//   QEMU still runs are re-adopted, the others marked stopped, and QEMUs and
//   files the inventory does not know are reaped by the host's agent. VMs an
//   operation of another live controller holds are left alone, and what a
//   running task is making (fork children, a restore's VM) is not reaped.
// - A host that misses its lease: its live VMs become `unknown` (never
//   restarted elsewhere); when it answers again they are re-adopted the same way.
import { OffshootError } from '../common/index.ts';
import { follow, waitForOperationEnd } from '../protocol/index.ts';
import type { RestoreJournal } from './checkpoint/checkpoints.ts';
import type { EngineContext } from './engine-context.ts';
import type { ForkJournal } from './fork/index.ts';
import { recoverFork } from './fork/index.ts';
import type { HostRecord } from './hosts/index.ts';
import { isVmId } from './ids.ts';
import { recoverGroup, recoverMigration } from './migrate/index.ts';
import type { GroupJournal } from './migrate/index.ts';
import type { MigrateJournal } from './migrate/index.ts';
import type { TaskRecord, VmRecord } from './records.ts';
import { isLive } from './state.ts';
import type { VmState } from './state.ts';

export interface RecoveryReport {
  adopted: string[];
  lost: string[];
  killed: number[];
  removed: string[];
}

/**
 * How a task of one kind is recovered by the controller that took it over: returns what was done (the task then
 * fails with TASK_INTERRUPTED saying so), or 'resumed' when it went on with the task (TaskRunner.resume).
 */
export type TaskRecovery = (task: TaskRecord, journal: unknown) => Promise<string>;

/** States in which an operation was under way: a controller that died in them leaves the VM to be reconciled. */
const TRANSITIONAL: readonly VmState[] = ['starting', 'stopping', 'forking', 'checkpointing'];

/** How long a controller taking over a fork waits for its host to finish preparing it. */
const PREPARE_WAIT_MS = 10 * 60_000;

function journalOf(task: TaskRecord): unknown {
  return (task.result as { journal?: unknown } | null)?.journal;
}

export class Recovery {
  private readonly handlers = new Map<string, TaskRecovery>();

  constructor(private readonly ctx: EngineContext) {
    this.register('vm.fork', (task, journal) => this.recoverFreeze(task, journal as ForkJournal | undefined));
    this.register('vm.checkpoint', (task, journal) => this.recoverFreeze(task, journal as ForkJournal | undefined));
    // A template's creation (vm/fabric) freezes its VM as a fork does, with a fork journal.
    this.register('template.create', (task, journal) => this.recoverFreeze(task, journal as ForkJournal | undefined));
    this.register('vm.restore', (task, journal) => this.recoverRestore(task, journal as RestoreJournal | undefined));
    this.register('vm.migrate', async (_task, journal) => (journal ? recoverMigration(this.ctx, journal as MigrateJournal, this.ctx.logger) : 'nothing to roll back'));
    // A group migration: rolled back before its start, finished after it (recover-group.ts).
    this.register('vm.migrate-group', (_task, journal) => recoverGroup(this.ctx, journal as GroupJournal | undefined, this.ctx.logger));
  }

  register(kind: string, handler: TaskRecovery): void {
    this.handlers.set(kind, handler);
  }

  async recoverAll(): Promise<RecoveryReport> {
    await this.ctx.coordinator.forgetPreviousLife();
    for (const task of await this.ctx.tasks.interrupted()) await this.recoverTask(task);
    await this.removeOrphanCheckpoints();
    const report: RecoveryReport = { adopted: [], lost: [], killed: [], removed: [] };
    for (const host of this.ctx.fleet.hosts()) {
      // Another controller monitors it (and keeps its VMs right); an unreachable one is re-adopted when it returns.
      if (host.state === 'unreachable' || !this.ctx.fleet.monitors(host.id)) continue;
      const one = await this.adoptHost(host).catch((err: unknown) => {
        this.ctx.logger.warn({ host: host.name, err: (err as Error).message }, 'cannot recover the VMs of a host now; they are unknown until it answers');
        return null;
      });
      if (!one) {
        await this.hostLost(host);
        continue;
      }
      for (const k of Object.keys(report) as Array<keyof RecoveryReport>) (report[k] as unknown[]).push(...one[k]);
    }
    await this.ctx.collectGarbage();
    this.ctx.logger.info(report, 'recovery done');
    return report;
  }

  /** A task this controller took over from one that died: recover it, then collect what it left on its host. */
  async takeOver(task: TaskRecord): Promise<void> {
    await this.recoverTask(task);
    const vm = await this.ctx.inventory.getVm(task.targetId);
    await this.removeOrphanCheckpoints();
    await this.ctx.collectGarbage(vm?.hostId).catch((err: unknown) => this.ctx.logger.warn({ err }, 'garbage collection after a takeover failed'));
  }

  private async recoverTask(task: TaskRecord): Promise<void> {
    let recovery: string;
    try {
      const handler = this.handlers.get(task.kind);
      recovery = handler ? await handler(task, journalOf(task)) : await this.reconcileVm(task.targetId, `${task.kind} interrupted`);
      if (recovery === 'resumed') return;
    } catch (err) {
      recovery = `rollback failed: ${(err as Error).message}`;
    }
    await this.ctx.tasks.failInterrupted(task, recovery);
  }

  /** A fork or a checkpoint's freeze: rolled back from its journal; the children it made and a checkpoint being written go. */
  private async recoverFreeze(task: TaskRecord, j: ForkJournal | undefined): Promise<string> {
    if (!j) return this.reconcileVm(task.targetId, `${task.kind} interrupted before it began`);
    const source = await this.ctx.inventory.getVm(j.sourceId);
    const hostId = j.hostId ?? source?.hostId;
    if (!hostId) return 'nothing to roll back';
    const agent = this.ctx.fleet.agent(hostId);
    if (j.prepareOperationId && j.phase === 'preparing') {
      // The host may still be preparing (an agent outlives its controller): what it stages after the rollback
      // would be left behind, so wait for the preparation to end first (abortFork then undoes it).
      await waitForOperationEnd(agent, j.prepareOperationId, PREPARE_WAIT_MS).catch(() => true);
    }
    if (j.writeOperationId) {
      // A checkpoint file still being written by an agent that lived on: stop the writer before removing its file.
      await agent.cancelOperation({ operationId: j.writeOperationId }).catch(() => undefined);
      await waitForOperationEnd(agent, j.writeOperationId, 30_000).catch(() => true);
    }
    let recovery = await recoverFork({ inventory: this.ctx.inventory, agent, states: this.ctx.states, logger: this.ctx.logger }, j);
    for (const childId of j.childIds) {
      await agent.killVm({ vmId: childId }).catch(() => undefined);
      await agent.deleteVmFiles({ vmId: childId }).catch(() => undefined);
    }
    if (j.checkpointId) {
      const checkpoint = await this.ctx.inventory.findCheckpoint(j.checkpointId);
      if (checkpoint?.state === 'writing') {
        await agent.removeCheckpoint({ file: checkpoint.file, checkpointId: checkpoint.id, createdAt: checkpoint.createdAt }).catch(() => undefined);
        await this.ctx.inventory.deleteCheckpoint(checkpoint.id);
        recovery += `; removed the unfinished checkpoint ${checkpoint.name}`;
      }
    }
    return recovery;
  }

  private async recoverRestore(task: TaskRecord, journal: RestoreJournal | undefined): Promise<string> {
    if (await this.reattachRestore(task, journal)) return 'resumed';
    return this.removeUnfinishedRestore(journal?.vmId ?? task.targetId);
  }

  /** Checkpoints left `writing` that no running checkpoint task writes: removed with their partial files. */
  private async removeOrphanCheckpoints(): Promise<void> {
    const writing = (await this.ctx.inventory.listCheckpoints()).filter((c) => c.state === 'writing');
    if (writing.length === 0) return;
    const running = await this.ctx.inventory.listTasks({ state: 'running' });
    const writers = new Set(running.filter((t) => t.kind === 'vm.checkpoint').map((t) => t.targetId));
    for (const checkpoint of writing) {
      if (writers.has(checkpoint.vmId)) continue;
      await this.ctx.agentOf(checkpoint).removeCheckpoint({ file: checkpoint.file, checkpointId: checkpoint.id, createdAt: checkpoint.createdAt }).catch(() => undefined);
      await this.ctx.inventory.deleteCheckpoint(checkpoint.id);
      this.ctx.logger.warn({ checkpoint: checkpoint.name }, 'removed a checkpoint that was interrupted while being written');
    }
  }

  /**
   * A VM an interrupted operation left in a transitional state, made to agree with its host: re-adopted in the state
   * its QEMU is in, or stopped (a QEMU started but never recorded is killed). Returns what was done.
   */
  async reconcileVm(vmId: string, why: string): Promise<string> {
    const vm = await this.ctx.inventory.getVm(vmId);
    if (!vm || !TRANSITIONAL.includes(vm.state)) return 'nothing to roll back';
    const agent = this.ctx.agentOf(vm);
    const status = vm.runtime ? (await agent.adoptVm({ vmId, runtime: vm.runtime }).catch(() => ({ status: null }))).status : null;
    if (status) {
      await this.ctx.states.force(vmId, status, `${why}; its QEMU ran on`);
      return `VM ${vm.name} was ${vm.state} and is ${status} again`;
    }
    await agent.killVm({ vmId }).catch(() => undefined);
    await this.ctx.states.force(vmId, 'stopped', `${why}; its QEMU was gone`, { runtime: null });
    return `VM ${vm.name} was ${vm.state} and is stopped`;
  }

  /** A lazy restore whose host still streams its memory: follow the stream to its end, then the task succeeds. */
  private async reattachRestore(task: TaskRecord, journal: RestoreJournal | undefined): Promise<boolean> {
    if (!journal?.streamOperationId) return false;
    const vm = await this.ctx.inventory.getVm(journal.vmId);
    if (!vm || vm.state !== 'running' || !vm.runtime) return false;
    const agent = this.ctx.fleet.agent(journal.hostId);
    const found = await agent.getOperation({ operationId: journal.streamOperationId, afterSeq: 0, waitMs: 0 }).catch(() => undefined);
    if (!found || (found.operation.state !== 'running' && found.operation.state !== 'succeeded')) return false;
    // The agent kept the VM and its stream through the controller's end: adopt the VM, finish the task.
    const status = (await agent.adoptVm({ vmId: vm.id, runtime: vm.runtime }).catch(() => ({ status: null }))).status;
    if (!status) return false;
    this.ctx.logger.info({ vm: vm.name, operation: journal.streamOperationId }, 'reattached to a lazy restore stream');
    this.ctx.tasks.resume(task, async (taskCtx) => {
      try {
        const stream = await follow<'restoreStream'>(agent, journal.streamOperationId as string, { onProgress: (e) => void taskCtx.progress(0.4 + 0.6 * e.progress, `${vm.name} runs; ${e.message}`).catch(() => undefined) });
        return { vm: await this.ctx.inventory.getVm(vm.id), reattached: true, stream };
      } catch (err) {
        if (!taskCtx.signal.aborted) await this.removeUnfinishedRestore(vm.id);
        throw err;
      }
    });
    return true;
  }

  /**
   * A restore whose controller died never finished (an in-process host's stream died with it): a lazily
   * restored VM cannot run on without its stream, an eager one never started. Its VM goes.
   */
  private async removeUnfinishedRestore(vmId: string): Promise<string> {
    const vm = await this.ctx.inventory.getVm(vmId);
    if (!vm) return 'nothing to roll back';
    const agent = this.ctx.agentOf(vm);
    if (vm.runtime) await agent.killStray({ vmId, runtime: vm.runtime }).catch(() => undefined);
    await agent.killVm({ vmId }).catch(() => undefined);
    await agent.deleteVmFiles({ vmId }).catch(() => undefined);
    await this.ctx.inventory.deleteVm(vmId);
    this.ctx.events.publish({ type: 'vm.deleted', vmId, name: vm.name, at: new Date().toISOString() });
    this.ctx.logger.warn({ vm: vm.name }, 'removed a VM whose restore was interrupted');
    return `removed the unfinished VM ${vm.name}`;
  }

  /**
   * What running tasks hold: the VMs of tasks another live controller runs (never re-adopted under it), and every
   * VM id a running task makes or uses (never reaped as unknown: a fork's children, a restore's VM).
   */
  private async heldByTasks(): Promise<{ busy: Set<string>; reserved: Set<string> }> {
    const me = this.ctx.coordinator.controllerId;
    const now = Date.now();
    const elsewhere = new Set((await this.ctx.coordinator.store.leases.list()).filter((l) => l.owner !== me && l.expiresAt > now).map((l) => l.taskId));
    const busy = new Set<string>();
    const reserved = new Set<string>();
    for (const task of await this.ctx.inventory.listTasks({ state: 'running' })) {
      const j = journalOf(task) as { childIds?: unknown; vmId?: unknown; members?: unknown } | undefined;
      // (A group migration's journal names each member's VM.)
      const members = Array.isArray(j?.members) ? (j.members as Array<{ vmId?: unknown }>).map((m) => m.vmId).filter((id): id is string => typeof id === 'string') : [];
      const ids = [task.targetId, ...(Array.isArray(j?.childIds) ? (j.childIds as string[]) : []), ...(typeof j?.vmId === 'string' ? [j.vmId] : []), ...members];
      // Only VM ids: a copy job's or a pool's task targets its job or pool.
      for (const id of ids.filter(isVmId)) {
        reserved.add(id);
        if (elsewhere.has(task.id)) busy.add(id);
      }
    }
    return { busy, reserved };
  }

  /** Re-adopts the VMs of one host (running QEMUs kept, the others stopped) and lets its agent reap what nobody knows. */
  async adoptHost(host: HostRecord): Promise<RecoveryReport> {
    const agent = this.ctx.fleet.agent(host.id);
    const vms = (await this.ctx.inventory.listVms()).filter((vm) => vm.hostId === host.id);
    const { busy, reserved } = await this.heldByTasks();
    const adopted: VmRecord[] = [];
    const lost: string[] = [];
    for (const vm of vms) {
      if (!isLive(vm.state)) continue;
      if (busy.has(vm.id)) {
        // An operation of another live controller owns it: it settles the VM itself.
        adopted.push(vm);
        continue;
      }
      const status = vm.runtime ? (await agent.adoptVm({ vmId: vm.id, runtime: vm.runtime }).catch((err: unknown) => {
        if (err instanceof OffshootError && (err.code === 'HOST_UNREACHABLE' || err.code === 'STALE_EPOCH')) throw err;
        return { status: null };
      })).status : null;
      if (status) {
        adopted.push(vm);
        if (status !== vm.state) await this.ctx.states.force(vm.id, status, vm.state === 'starting' ? 'adopted while booting' : vm.state === 'unknown' ? 'its host answers again' : null);
      } else {
        lost.push(vm.name);
        await this.ctx.states.force(vm.id, 'stopped', vm.state === 'unknown' ? 'its QEMU was gone when its host answered again' : 'QEMU was not running when the controller restarted', { runtime: null });
      }
    }
    // The tasks again, just before the reap: a migration to this host started during the adoption is known too.
    const { reserved: reservedNow } = await this.heldByTasks();
    const known = new Set([...vms.map((v) => v.id), ...reserved, ...reservedNow]);
    const { killed, removed } = await agent.reapOrphans({ live: adopted.map((v) => v.id), known: [...known] });
    return { adopted: adopted.map((v) => v.name), lost, killed, removed };
  }

  /** A host missed its lease: its live VMs are unknown until it answers (they may well run on). */
  async hostLost(host: HostRecord): Promise<void> {
    for (const vm of await this.ctx.inventory.listVms()) {
      if (vm.hostId !== host.id || !isLive(vm.state) || vm.state === 'unknown') continue;
      await this.ctx.states.force(vm.id, 'unknown', `host ${host.name} is unreachable (was ${vm.state})`);
    }
  }

  /** A host answers again (or its agent restarted): re-adopt its VMs and collect what they no longer use. */
  async hostBack(host: HostRecord): Promise<void> {
    const report = await this.adoptHost(host);
    this.ctx.logger.info({ host: host.name, ...report }, 'host recovered');
    await this.ctx.collectGarbage(host.id);
  }
}
