// The engine's migration front: validates a migrate request, claims the VM
// (migrating: nothing else acts on it until it runs at one host), and runs the
// migration as a `vm.migrate` task: first it waits in the queue until its
// hosts have a free slot (admission.ts: maxOutgoing at the source, maxIncoming
// at the destination), then resolves its tuning from its own options and the
// policies (policy.ts), then runs (run-migration.ts). Its result says which
// policy values it used and how long it was queued. It cancels one on request
// before its switch-over (after it, a cancel is too late and the task
// finishes), queued or running, here or, through the task's row, on the
// controller that runs it. A migration whose destination failed to load a
// stream the source completed (the source took the guest back) is tried once
// more.
import { OffshootError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { HostRecord } from '../hosts/index.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import type { VmState } from '../state.ts';
import type { TaskContext } from '../tasks.ts';
import { MigrationAdmission, singleNeeds } from './admission.ts';
import type { MigrationControlStore } from './admission.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import type { MigrateRequest } from './migrate-request.ts';
import { destinationOf, migrateRequestSchema, tuningOf } from './migrate-request.ts';
import { MigrationPlanError } from './plan-migration.ts';
import { policyFor, requestPolicy } from './policy.ts';
import type { MigrationPolicy, ResolvedPolicy } from './policy.ts';
import { runMigration } from './run-migration.ts';
import type { MigrateResult } from './run-migration.ts';
import { TaskCancellers } from './task-cancellers.ts';

export const MIGRATE_TASK_KIND = 'vm.migrate';

/** A migration's result with the policy values it used and its time in the queue. */
export type PolicyMigrateResult = MigrateResult & { policy: ResolvedPolicy; queuedMs: number };

export class Migrations {
  private readonly cancellers: TaskCancellers;
  readonly admission: MigrationAdmission;

  constructor(
    private readonly ctx: EngineContext,
    private readonly control: MigrationControlStore,
  ) {
    this.cancellers = new TaskCancellers(ctx);
    this.admission = new MigrationAdmission(ctx, control);
  }

  async migrate(vm: VmRecord, input: unknown): Promise<TaskRecord> {
    const request = parseRequest('migrate request', migrateRequestSchema, input);
    tuningOf(request);
    const asked = requestPolicy(input);
    const destination = await this.ctx.fleet.resolve(destinationOf(request));
    const source = await this.ctx.fleet.resolve(vm.hostId);
    if (source.id === destination.id) throw new MigrationPlanError(`VM "${vm.name}" already runs on host ${destination.name}`, { vm: vm.name, host: destination.name });
    const needs = singleNeeds(source.id, destination.id);
    await this.admission.check(needs);
    const { vm: claimed, previous } = await this.ctx.states.claimFrom(vm.id, 'migrate', 'migrating', `with a migration to ${destination.name}`);
    const controller = new AbortController();
    try {
      const task = await this.ctx.tasks.start(MIGRATE_TASK_KIND, claimed, (taskCtx) => this.run(claimed, previous, source, destination, request, asked, taskCtx, controller.signal).finally(() => this.ctx.states.release(vm.id)));
      this.cancellers.track(task.id, controller);
      return task;
    } catch (err) {
      this.ctx.states.release(vm.id);
      await this.ctx.states.settle(vm.id, ['migrating'], previous, null).catch(() => undefined);
      throw err;
    }
  }

  /** Queued until its hosts have a slot, then the migration with the policy's values. */
  private async run(vm: VmRecord, previous: VmState, source: HostRecord, destination: HostRecord, request: MigrateRequest, asked: MigrationPolicy, task: TaskContext, signal: AbortSignal): Promise<PolicyMigrateResult> {
    await task.journal({ vmId: vm.id, phase: 'queued', previous, sourceHostId: source.id, destinationHostId: destination.id } as MigrateJournal);
    let slots;
    try {
      slots = await this.admission.admit(task, singleNeeds(source.id, destination.id), AbortSignal.any([signal, task.signal]));
    } catch (err) {
      // Nothing moved: the VM is as it was (unless another controller took the task over: it does that).
      if (!task.signal.aborted) await this.ctx.states.settle(vm.id, ['migrating'], previous, null).catch(() => undefined);
      throw err;
    }
    try {
      const policy = await policyFor(this.control, asked, source.id, destination.id);
      const tuned: MigrateRequest = { ...request, maxBandwidth: policy.maxBandwidthBytesPerSecond, downtimeLimitMs: policy.downtimeLimitMs, postcopy: policy.postcopy, autoConverge: policy.autoConverge };
      // The hosts as they are now (a host may have changed state while the migration waited).
      const [from, to] = [await this.ctx.fleet.resolve(source.id), await this.ctx.fleet.resolve(destination.id)];
      const attempt = () => runMigration(this.ctx, vm, previous, from, to, tuned, task, signal);
      const result = await attempt()
        .catch(async (err: unknown) => {
          // QEMU 7.2 now and then loses the end of a completed stream (the destination fails to load the last
          // device sections: "Cannot read from TLS channel"); the source took the guest back (reverted), so
          // the migration is tried once more.
          if (!isRevertedArrival(err) || signal.aborted) throw err;
          this.ctx.logger.warn({ vm: vm.name, to: to.name, err: (err as Error).message }, 'the destination did not load a completed migration; the VM runs on at its source; trying once more');
          await task.progress(0.05, `${vm.name}: the destination did not load the migration; trying once more`);
          const claimed = await this.ctx.states.settle(vm.id, [previous], 'migrating', null);
          if (!claimed.moved) throw err;
          return attempt();
        })
        .catch(async (err: unknown) => {
          // A refusal before anything moved (the plan) leaves the VM as it was.
          if (!task.signal.aborted) await this.ctx.states.settle(vm.id, ['migrating'], previous, null).catch(() => undefined);
          throw err;
        });
      return { ...result, policy, queuedMs: slots.queuedMs };
    } finally {
      await slots.release();
    }
  }

  cancellable(taskId: string): boolean {
    return this.cancellers.has(taskId);
  }

  /** Whether this controller runs a migration a cancel request could reach. */
  running(): boolean {
    return this.cancellers.size > 0;
  }

  /** Cancel requests another controller wrote for migrations this one runs. */
  cancelRequested(taskIds: string[]): void {
    this.cancellers.requested(taskIds, 'the migration', 'it runs on at its source');
  }

  /** Cancels a migration before its switch-over; resolves with the finished task. */
  async cancel(taskId: string): Promise<TaskRecord> {
    return this.cancellers.cancel(taskId, 'the migration', 'it runs on at its source');
  }
}

/** A migration whose source completed but whose destination did not run the guest, taken back by the source. */
function isRevertedArrival(err: unknown): boolean {
  return err instanceof OffshootError && err.code === 'MIGRATION_FAILED' && err.details.step === 'destination' && err.details.reverted === true;
}
