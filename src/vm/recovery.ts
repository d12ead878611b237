// Recovery: what a controller does when it (re)starts, and when a host is
// lost or comes back.
// - Tasks a previous controller left running: a fork or a checkpoint's
//   freeze is rolled back or forward from its journal (fork/recover-fork.ts);
//   a lazy restore whose host still streams (an agent in its own process
//   outlives the controller) is reattached and finished, else its VM is
//   removed; the others fail with TASK_INTERRUPTED saying what was done.
// - Checkpoints left `writing` are removed with their partial files.
// - On every reachable host: VMs whose QEMU still runs are re-adopted, the
//   others marked stopped, and QEMUs and files the inventory does not know
//   are reaped by the host's agent.
// - A host that misses its lease: its live VMs become `unknown` (never
//   restarted elsewhere); when it answers again they are re-adopted the same way.
import { OffshootError } from '../common/index.ts';
import { follow } from '../protocol/index.ts';
import type { RestoreJournal } from './checkpoint/checkpoints.ts';
import type { EngineContext } from './engine-context.ts';
import type { ForkJournal } from './fork/index.ts';
import { recoverFork } from './fork/index.ts';
import type { HostRecord } from './hosts/index.ts';
import { recoverMigration } from './migrate/index.ts';
import type { MigrateJournal } from './migrate/index.ts';
import type { TaskRecord, VmRecord } from './records.ts';
import { isLive } from './state.ts';

export interface RecoveryReport {
  adopted: string[];
  lost: string[];
  killed: number[];
  removed: string[];
}

export class Recovery {
  constructor(private readonly ctx: EngineContext) {}

  async recoverAll(): Promise<RecoveryReport> {
    for (const task of await this.ctx.tasks.interrupted()) await this.recoverTask(task);
    for (const checkpoint of await this.ctx.inventory.listCheckpoints()) {
      if (checkpoint.state !== 'writing') continue;
      await this.ctx.agentOf(checkpoint).removeCheckpoint({ file: checkpoint.file, checkpointId: checkpoint.id, createdAt: checkpoint.createdAt }).catch(() => undefined);
      await this.ctx.inventory.deleteCheckpoint(checkpoint.id);
      this.ctx.logger.warn({ checkpoint: checkpoint.name }, 'removed a checkpoint that was interrupted while being written');
    }
    const report: RecoveryReport = { adopted: [], lost: [], killed: [], removed: [] };
    for (const host of this.ctx.fleet.hosts()) {
      if (host.state === 'unreachable') continue;
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

  private async recoverTask(task: TaskRecord): Promise<void> {
    const journal = (task.result as { journal?: unknown } | null)?.journal;
    let recovery = 'nothing to roll back';
    try {
      // A template's creation (vm/fabric) freezes its VM as a fork does, with a fork journal.
      if ((task.kind === 'vm.fork' || task.kind === 'vm.checkpoint' || task.kind === 'template.create') && journal) {
        const j = journal as ForkJournal;
        const source = await this.ctx.inventory.getVm(j.sourceId);
        const hostId = j.hostId ?? source?.hostId;
        if (hostId) recovery = await recoverFork({ inventory: this.ctx.inventory, agent: this.ctx.fleet.agent(hostId), states: this.ctx.states, logger: this.ctx.logger }, j);
      }
      if (task.kind === 'vm.migrate' && journal) recovery = await recoverMigration(this.ctx, journal as MigrateJournal, this.ctx.logger);
      if (task.kind === 'vm.restore') {
        if (await this.reattachRestore(task, journal as RestoreJournal | undefined)) return;
        recovery = await this.removeUnfinishedRestore(task.targetId);
      }
    } catch (err) {
      recovery = `rollback failed: ${(err as Error).message}`;
    }
    await this.ctx.tasks.failInterrupted(task, recovery);
  }

  /** A lazy restore whose host still streams its memory: follow the stream to its end, then the task succeeds. */
  private async reattachRestore(task: TaskRecord, journal: RestoreJournal | undefined): Promise<boolean> {
    if (!journal?.streamOperationId) return false;
    const vm = await this.ctx.inventory.getVm(journal.vmId);
    if (!vm || vm.state !== 'running' || !vm.runtime) return false;
    const agent = this.ctx.fleet.agent(journal.hostId);
    const found = await agent.getOperation({ operationId: journal.streamOperationId, afterSeq: 0, waitMs: 0 }).catch(() => undefined);
    if (!found || (found.operation.state !== 'running' && found.operation.state !== 'succeeded')) return false;
    // The agent kept the VM and its stream through the controller's restart: adopt the VM, finish the task.
    const status = (await agent.adoptVm({ vmId: vm.id, runtime: vm.runtime }).catch(() => ({ status: null }))).status;
    if (!status) return false;
    this.ctx.logger.info({ vm: vm.name, operation: journal.streamOperationId }, 'reattached to a lazy restore stream after a controller restart');
    this.ctx.tasks.resume(task, async (taskCtx) => {
      try {
        const stream = await follow<'restoreStream'>(agent, journal.streamOperationId as string, { onProgress: (e) => void taskCtx.progress(0.4 + 0.6 * e.progress, `${vm.name} runs; ${e.message}`).catch(() => undefined) });
        return { vm: await this.ctx.inventory.getVm(vm.id), reattached: true, stream };
      } catch (err) {
        await this.removeUnfinishedRestore(vm.id);
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

  /** Re-adopts the VMs of one host (running QEMUs kept, the others stopped) and lets its agent reap what nobody knows. */
  async adoptHost(host: HostRecord): Promise<RecoveryReport> {
    const agent = this.ctx.fleet.agent(host.id);
    const vms = (await this.ctx.inventory.listVms()).filter((vm) => vm.hostId === host.id);
    const adopted: VmRecord[] = [];
    const lost: string[] = [];
    for (const vm of vms) {
      if (!isLive(vm.state)) continue;
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
    const { killed, removed } = await agent.reapOrphans({ live: adopted.map((v) => v.id), known: vms.map((v) => v.id) });
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
