// `vm move NAME --to HOST [--live|--cold]` (issue 13, cross-site moves by
// content id): one command that moves a VM to another host, sending only
// what the destination lacks. It first asks the move plan (content-plan.ts,
// the service's movePlan: which read-only bases the destination holds by
// content id, with --verify by hash), then:
// - live (the default for a running or paused VM): the live migration
//   (`vm migrate`, which itself skips the bases the destination holds); the
//   answer carries the plan beside the migration's task.
// - cold (the default for a stopped VM): refused with ILLEGAL_STATE unless the
//   VM is stopped or created; a `vm.move` task sends each disk's top and the
//   bases the destination lacks, and re-homes the VM in one inventory step
//   (cold-move.ts, which says what it does not do yet).
import { z } from 'zod';
import { IllegalStateError } from '../../common/index.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { COLD_MOVE_TASK_KIND, checkColdMove, prepareColdDestination, runColdMove } from './cold-move.ts';
import type { DiskContentPlan } from './content-plan.ts';
import type { StorageDeps } from './deps.ts';

export const MOVE_MODES = ['live', 'cold'] as const;
export type MoveMode = (typeof MOVE_MODES)[number];

export const moveVmRequestSchema = z
  .object({
    to: z.string().min(1).max(128).describe('the destination host'),
    datastore: z.string().min(1).max(63).optional().describe("cold: the destination's datastore for the layers sent (default: its own)"),
    mode: z.enum(MOVE_MODES).optional().describe('live (default for a running VM) or cold (default for a stopped one)'),
    verify: z.boolean().default(false).describe('hash each base the destination holds by id and compare it with the source'),
  })
  .strict();
export type MoveVmRequest = z.input<typeof moveVmRequestSchema>;

/** What a move answers: the plan (what it skips and sends) and the task that moves the VM. */
export interface MoveVmStarted {
  vm: string;
  mode: MoveMode;
  from: string;
  to: string;
  /** Per disk: the layers the destination holds (skipped) and those sent. */
  disks: DiskContentPlan[];
  skipped: Array<{ disk: string; layers: number; bytes: number }>;
  sent: Array<{ disk: string; layers: number; bytes: number }>;
  skippedBytes: number;
  sendBytes: number;
  task: TaskRecord;
}

type MovePlanOf = (vmRef: string, input: unknown) => Promise<{ vm: string; from: string; to: string; disks: DiskContentPlan[]; skippedBytes: number; sendBytes: number }>;

/** The mode a move takes: the one asked, else live for a running or paused VM and cold otherwise. */
export function moveModeFor(vm: Pick<VmRecord, 'state'>, asked: MoveMode | undefined): MoveMode {
  return asked ?? (vm.state === 'running' || vm.state === 'paused' ? 'live' : 'cold');
}

export class VmMover {
  constructor(
    private readonly deps: StorageDeps,
    private readonly movePlan: MovePlanOf,
  ) {}

  async move(vmRef: string, input: unknown): Promise<MoveVmStarted> {
    const request = parseRequest('move request', moveVmRequestSchema, input);
    const vm = await this.deps.engine.resolve(vmRef);
    const mode = moveModeFor(vm, request.mode);
    if (mode === 'cold' && vm.state !== 'stopped' && vm.state !== 'created') throw new IllegalStateError(`VM "${vm.name}"`, vm.state, ['stopped', 'created'], 'cold-move');
    if (mode === 'live' && vm.state !== 'running' && vm.state !== 'paused') throw new IllegalStateError(`VM "${vm.name}"`, vm.state, ['running', 'paused'], 'live-move');
    if (mode === 'cold') {
      checkColdMove(vm);
      await prepareColdDestination(this.deps, vm, await this.deps.engine.fleet.resolve(request.to));
    }
    const plan = await this.movePlan(vm.id, { to: request.to, verify: request.verify });
    const task = mode === 'cold' ? await this.startCold(vm.id, request.to, plan.disks) : (await this.deps.engine.migrate(vm.id, { to: request.to })).task;
    if (!task) throw new Error('a migration answered without a task');
    return {
      vm: vm.name,
      mode,
      from: plan.from,
      to: plan.to,
      disks: plan.disks,
      skipped: plan.disks.filter((d) => d.heldLayers > 0).map((d) => ({ disk: d.diskId, layers: d.heldLayers, bytes: d.skippedBytes })),
      sent: plan.disks.filter((d) => d.send.length > 0).map((d) => ({ disk: d.diskId, layers: d.send.length, bytes: d.sendBytes })),
      skippedBytes: plan.skippedBytes,
      sendBytes: plan.sendBytes,
      task,
    };
  }

  /** The `vm.move` task of a cold move; the VM is busy (no start, fork or clone) until it ends. */
  private async startCold(vmId: string, to: string, plan: DiskContentPlan[]): Promise<TaskRecord> {
    const dest = await this.deps.engine.fleet.resolve(to);
    const vm = await this.deps.engine.states.claimBusy(vmId, `moving to host ${dest.name}`, 'cold-move', (current) => {
      if (current.state !== 'stopped' && current.state !== 'created') throw new IllegalStateError(`VM "${current.name}"`, current.state, ['stopped', 'created'], 'cold-move');
      checkColdMove(current);
    });
    try {
      return await this.deps.engine.tasks.start(COLD_MOVE_TASK_KIND, vm, (ctx) => runColdMove(this.deps, vm, dest, plan, ctx).finally(() => this.deps.engine.states.release(vm.id)));
    } catch (err) {
      await this.deps.engine.states.release(vm.id);
      throw err;
    }
  }
}
