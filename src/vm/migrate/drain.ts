// Draining a host (`offshoot host drain NAME`, POST /hosts/{ref}/evacuate):
// the host is set `draining` (out of placement; its copy jobs leave by
// themselves, storage/handover.ts), then one `host.drain` task live-migrates
// every running or paused VM off it, each as its own `vm.migrate` task, so
// the hosts' limits and the queue apply (with maxOutgoing=1 they go one after
// another, in order). Each VM goes to the `to` host if given, else to the
// ready host (not draining, able to migrate) with the most free memory left
// after the VMs this drain already sent there. The task's progress counts the
// VMs moved, queued and running; its result lists the VMs moved and those not
// moved with the reason: stopped VMs (by default a drain moves running guests
// only; it says when their disks are local to the host, so they are not
// forgotten), VMs busy with another operation, no destination with room, or a
// migration that failed (the VM then runs on at the source, the migration's
// guarantee). With `stopped: "move"` (`host drain --stopped move`) stopped and
// created VMs go too, each by a cold move (`vm.move`, storage/cold-move.ts:
// its files travel, bases the destination holds by content id are skipped; a
// failed move leaves it at the host as it was), started through the hook the
// storage service installs (useColdMoves). A cancel cancels the member
// migrations not yet switched over and the cold moves not yet re-homed.
import { z } from 'zod';
import { OffshootError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { HostRecord } from '../hosts/index.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import type { TaskContext } from '../tasks.ts';
import { GROUP_MIGRATE_TASK_KIND } from './group-migrations.ts';
import { MIGRATE_TASK_KIND } from './migrations.ts';
import type { Migrations, PolicyMigrateResult } from './migrations.ts';
import { TaskCancellers } from './task-cancellers.ts';

export const DRAIN_TASK_KIND = 'host.drain';

/** Task kinds a cancel reaches on whichever controller runs them (through the task's row). */
export const MIGRATION_TASK_KINDS: readonly string[] = [MIGRATE_TASK_KIND, GROUP_MIGRATE_TASK_KIND, DRAIN_TASK_KIND];

export const drainRequestSchema = z.strictObject({
  to: z.string().min(1).max(128).optional().describe('send every VM to this host (default: per VM, the ready host with the most free memory)'),
  stopped: z.enum(['stay', 'move']).default('stay').describe('stopped and created VMs: stay on the host (default), or move by cold move (their files travel; bases the destination holds are skipped)'),
});
export type DrainRequest = z.input<typeof drainRequestSchema>;

export interface DrainMoved {
  vm: string;
  to: string;
  /** live: a running or paused VM migrated; cold: a stopped one moved with its files (`stopped: "move"`). */
  mode: 'live' | 'cold';
  taskId: string;
  /** The migration's downtime (null for a cold move). */
  downtimeMs: number | null;
  queuedMs: number;
}

export interface DrainNotMoved {
  vm: string;
  /** skipped: not a running guest (stopped, busy); failed: no destination, or its migration failed (it runs on at the source). */
  outcome: 'skipped' | 'failed';
  state: string;
  reason: string;
  code: string | null;
  taskId: string | null;
}

export interface DrainResult {
  host: string;
  moved: DrainMoved[];
  notMoved: DrainNotMoved[];
  totalMs: number;
}

/** A drain this controller refuses before anything moved. HTTP 409. */
export class DrainRefusedError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('DRAIN_REFUSED', message, details, 409);
  }
}

const LIVE = ['running', 'paused'];
const COLD = ['stopped', 'created'];

/** Starts a cold move of a stopped VM to a host (its `vm.move` task) and cancels one; installed by the storage service. */
export interface ColdMoves {
  start(vmId: string, toHostId: string): Promise<TaskRecord>;
  cancel(taskId: string): Promise<TaskRecord>;
}

function codeOf(err: unknown): string {
  return err instanceof OffshootError ? err.code : 'INTERNAL';
}

export class HostDrains {
  private readonly cancellers: TaskCancellers;
  private coldMoves: ColdMoves | undefined;

  constructor(
    private readonly ctx: EngineContext,
    private readonly migrations: Migrations,
  ) {
    this.cancellers = new TaskCancellers(ctx);
  }

  /** How a drain with `stopped: "move"` moves a stopped VM (the storage service's cold move). */
  useColdMoves(moves: ColdMoves): void {
    this.coldMoves = moves;
  }

  /** Sets the host draining and starts the task that migrates its VMs off; answers the `host.drain` task. */
  async drain(hostRef: string, input: unknown): Promise<TaskRecord> {
    const request = parseRequest('drain request', drainRequestSchema, input);
    const host = await this.ctx.fleet.resolve(hostRef);
    const forced = request.to ? await this.ctx.fleet.resolve(request.to) : undefined;
    if (forced?.id === host.id) throw new DrainRefusedError(`cannot drain host ${host.name} to itself`, { host: host.name });
    if (forced && forced.state !== 'ready') throw new DrainRefusedError(`host ${forced.name} is ${forced.state}: a drain sends VMs to a ready host`, { host: forced.name, state: forced.state });
    const draining = host.state === 'draining' ? host : await this.ctx.fleet.setAdminState(host.id, 'draining');
    const controller = new AbortController();
    const task = await this.ctx.tasks.start(DRAIN_TASK_KIND, { id: draining.id, name: draining.name }, (taskCtx) => this.run(draining, forced, request.stopped, taskCtx, controller.signal));
    this.cancellers.track(task.id, controller);
    return task;
  }

  private async run(host: HostRecord, forced: HostRecord | undefined, stopped: z.output<typeof drainRequestSchema>['stopped'], task: TaskContext, signal: AbortSignal): Promise<DrainResult> {
    const t0 = performance.now();
    const vms = (await this.ctx.inventory.listVms()).filter((v) => v.hostId === host.id);
    const notMoved: DrainNotMoved[] = [];
    const started: Array<{ vm: VmRecord; to: HostRecord; taskId: string; mode: 'live' | 'cold' }> = [];
    const sent = new Map<string, number>();
    await task.progress(0.01, `draining ${host.name}: ${vms.length} VM(s) on it`);
    for (const vm of vms) {
      if (signal.aborted) break;
      if (stopped === 'move' && COLD.includes(vm.state)) {
        const moving = await this.startColdMove(vm, host, forced);
        if ('mode' in moving) started.push(moving);
        else notMoved.push(moving);
        continue;
      }
      if (!LIVE.includes(vm.state)) {
        notMoved.push({ vm: vm.name, outcome: 'skipped', state: vm.state, reason: this.whyNot(vm, host), code: null, taskId: null });
        continue;
      }
      const to = forced ?? this.destinationFor(vm, host, sent);
      if (!to) {
        notMoved.push({ vm: vm.name, outcome: 'failed', state: vm.state, reason: `no ready host (other than ${host.name}, not draining, able to migrate) has ${vm.spec.memoryMiB} MiB free for it; it runs on at ${host.name}`, code: 'NO_SPACE', taskId: null });
        continue;
      }
      try {
        const child = await this.migrations.migrate(vm, { to: to.id });
        started.push({ vm, to, taskId: child.id, mode: 'live' });
        sent.set(to.id, (sent.get(to.id) ?? 0) + vm.spec.memoryMiB * 2 ** 20);
      } catch (err) {
        notMoved.push({ vm: vm.name, outcome: LIVE.includes(vm.state) && codeOf(err) !== 'ILLEGAL_STATE' && codeOf(err) !== 'VM_BUSY' ? 'failed' : 'skipped', state: vm.state, reason: (err as Error).message, code: codeOf(err), taskId: null });
      }
    }
    const onCancel = () => {
      for (const s of started) {
        if (s.mode === 'live' && this.migrations.cancellable(s.taskId)) void this.migrations.cancel(s.taskId).catch(() => undefined);
        if (s.mode === 'cold') void this.coldMoves?.cancel(s.taskId).catch(() => undefined);
      }
    };
    signal.addEventListener('abort', onCancel, { once: true });
    if (signal.aborted) onCancel();
    const moved: DrainMoved[] = [];
    const report = async () => {
      const tasks = await Promise.all(started.map((s) => this.ctx.tasks.get(s.taskId).catch(() => null)));
      const queued = tasks.filter((t) => t?.state === 'running' && (t.result as { progress?: { phase?: string } } | null)?.progress?.phase === 'queued').length;
      const running = tasks.filter((t) => t?.state === 'running').length - queued;
      const failed = notMoved.filter((n) => n.outcome === 'failed').length;
      await task.progress(0.02 + (0.97 * (moved.length + failed)) / Math.max(1, started.length + failed), `${moved.length} of ${started.length} VM(s) moved off ${host.name}, ${running} migrating, ${queued} queued`, { moved: moved.map((m) => m.vm), migrating: running, queued, notMoved: notMoved.map((n) => n.vm) }).catch(() => undefined);
    };
    await report();
    try {
      await Promise.all(
        started.map(async (s) => {
          const done = await this.ctx.tasks.wait(s.taskId);
          if (done.state === 'succeeded' && s.mode === 'cold') {
            moved.push({ vm: s.vm.name, to: s.to.name, mode: 'cold', taskId: s.taskId, downtimeMs: null, queuedMs: 0 });
          } else if (done.state === 'succeeded') {
            const r = done.result as PolicyMigrateResult;
            moved.push({ vm: s.vm.name, to: s.to.name, mode: 'live', taskId: s.taskId, downtimeMs: r.downtimeMs, queuedMs: r.queuedMs });
          } else {
            const here = (await this.ctx.inventory.getVm(s.vm.id))?.hostId === host.id;
            const where = here ? (s.mode === 'cold' ? `it stays on ${host.name} as it was` : `it runs on at ${host.name}`) : 'see its task';
            notMoved.push({ vm: s.vm.name, outcome: 'failed', state: s.vm.state, reason: `its ${s.mode === 'cold' ? 'cold move' : 'migration'} to ${s.to.name} failed: ${done.error?.message ?? done.message}; ${where}`, code: done.error?.code ?? null, taskId: s.taskId });
          }
          await report();
        }),
      );
    } finally {
      signal.removeEventListener('abort', onCancel);
    }
    if (signal.aborted) throw signal.reason;
    const order = new Map(vms.map((v, i) => [v.name, i]));
    moved.sort((a, b) => (order.get(a.vm) ?? 0) - (order.get(b.vm) ?? 0));
    notMoved.sort((a, b) => (order.get(a.vm) ?? 0) - (order.get(b.vm) ?? 0));
    return { host: host.name, moved, notMoved, totalMs: Math.round(performance.now() - t0) };
  }

  /** Starts the cold move of a stopped VM (`stopped: "move"`): its task, or why it stays. */
  private async startColdMove(vm: VmRecord, host: HostRecord, forced: HostRecord | undefined): Promise<{ vm: VmRecord; to: HostRecord; taskId: string; mode: 'cold' } | DrainNotMoved> {
    const to = forced ?? this.destinationFor(vm, host, new Map(), 0);
    const stays = (reason: string, code: string | null): DrainNotMoved => ({ vm: vm.name, outcome: 'failed', state: vm.state, reason: `${reason}; it stays on ${host.name}`, code, taskId: null });
    if (!this.coldMoves) return stays('this controller cannot move stopped VMs (no storage service)', 'DRAIN_REFUSED');
    if (!to) return stays(`no ready host other than ${host.name} (not draining) to move it to`, 'NO_SPACE');
    try {
      return { vm, to, taskId: (await this.coldMoves.start(vm.id, to.id)).id, mode: 'cold' };
    } catch (err) {
      // Started, moved or busy meanwhile (another operation has it): skipped, as for a live VM; anything else failed.
      const skipped = ['VM_BUSY', 'ILLEGAL_STATE', 'MOVE_PLAN_STALE'].includes(codeOf(err));
      return { ...stays(`its cold move to ${to.name} was refused: ${(err as Error).message}`, codeOf(err)), outcome: skipped ? 'skipped' : 'failed' };
    }
  }

  /** Why a VM that is not a running guest stays (its disks named when they live on the host itself). */
  private whyNot(vm: VmRecord, host: HostRecord): string {
    if (!['stopped', 'created', 'failed'].includes(vm.state)) return `it is ${vm.state} (busy with another operation): a drain moves running VMs only; it stays on ${host.name}`;
    const local = vm.spec.disks.filter((d) => !d.readOnly && d.file.startsWith('home:')).map((d) => `${d.id}: ${d.file}`);
    if (local.length > 0) return `it is ${vm.state} and its disks are local to ${host.name} (${local.join(', ')}): a drain live-migrates running VMs only unless asked --stopped move; it stays on ${host.name} with its disks`;
    return `it is ${vm.state}: a drain live-migrates running VMs only unless asked --stopped move; it stays recorded on ${host.name}`;
  }

  /** The ready host (not this one, able to migrate) with the most free memory after what this drain sent there. */
  private destinationFor(vm: VmRecord, host: HostRecord, sent: Map<string, number>, need = vm.spec.memoryMiB * 2 ** 20): HostRecord | undefined {
    const free = (h: HostRecord) => (h.facts?.memory.freeBytes ?? 0) - (sent.get(h.id) ?? 0);
    return this.ctx.fleet
      .hosts()
      .filter((h) => h.id !== host.id && h.state === 'ready' && h.capabilities.includes('migration') && free(h) >= need)
      .sort((a, b) => free(b) - free(a))[0];
  }

  cancellable(taskId: string): boolean {
    return this.cancellers.has(taskId);
  }

  running(): boolean {
    return this.cancellers.size > 0;
  }

  cancelRequested(taskIds: string[]): void {
    this.cancellers.requested(taskIds, 'the drain', 'the VMs not moved yet run on at the host');
  }

  /** Cancels a drain: the member migrations not yet switched over are cancelled; resolves with the finished task. */
  async cancel(taskId: string): Promise<TaskRecord> {
    return this.cancellers.cancel(taskId, 'the drain', 'the VMs not moved yet run on at the host');
  }
}
