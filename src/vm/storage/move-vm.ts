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
// `--datastore DS` names a datastore of the destination (refused with
// INVALID_INPUT before anything moves when the destination does not see it):
// only the copies of the bases held there are used, in the plan and by the
// migration; a disk whose chain the destination holds elsewhere (or not at
// all) moves whole. `--verify` reaches the migration too: a copy whose bytes
// differ from the source's is not used. The layers a move sends still land in
// the VM's own folder at the destination, not in DS.
// `task cancel` of a move: a live one is the migration's cancel (before its
// switch-over); a cold one aborts its `vm.move` task before the re-home (here
// or, through the task's row, on the controller that runs it).
import { z } from 'zod';
import { IllegalStateError, InvalidInputError, OffshootError } from '../../common/index.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { COLD_MOVE_TASK_KIND, checkColdMove, moveCancelled, prepareColdDestination, recoverColdMove, runColdMove } from './cold-move.ts';
import type { ColdMoveJournal } from './cold-move.ts';
import type { DiskContentPlan } from './content-plan.ts';
import type { StorageDeps } from './deps.ts';
import { MovePlanStaleError } from './errors.ts';
import type { DatastoreRecord } from './records.ts';

export const MOVE_MODES = ['live', 'cold'] as const;
export type MoveMode = (typeof MOVE_MODES)[number];

export const moveVmRequestSchema = z
  .object({
    to: z.string().min(1).max(128).describe('the destination host'),
    datastore: z.string().min(1).max(63).optional().describe("a datastore of the destination: only its copies of the bases (found by content id) are used; a disk whose bases are held elsewhere there moves whole (default: any the destination holds)"),
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
  /** The cold moves this controller runs, by task id: their cancel. */
  private readonly running = new Map<string, { cancel: AbortController; vm: string }>();

  constructor(
    private readonly deps: StorageDeps,
    private readonly movePlan: MovePlanOf,
    /** A datastore by name or id (NOT_FOUND otherwise): the catalog's lookup. */
    private readonly datastoreNamed: (name: string) => Promise<DatastoreRecord>,
  ) {
    // `task cancel` of a cold move: here, or through the task's row on the controller that runs it. (A live move's task is a migration's.)
    deps.engine.registerCanceller(COLD_MOVE_TASK_KIND, async (task) => {
      if (!this.cancelHere(task.id)) await deps.engine.coordinator.store.leases.requestCancel(task.id);
      return deps.engine.tasks.wait(task.id);
    });
    deps.engine.watchCancels({ cancellable: () => this.running.size > 0, cancelRequested: (ids) => ids.forEach((id) => this.cancelHere(id)) });
    deps.engine.registerRecovery(COLD_MOVE_TASK_KIND, (_task, journal) => recoverColdMove(deps, journal as ColdMoveJournal | undefined));
  }

  private cancelHere(taskId: string): boolean {
    const move = this.running.get(taskId);
    move?.cancel.abort(moveCancelled(move.vm));
    return move !== undefined;
  }

  async move(vmRef: string, input: unknown): Promise<MoveVmStarted> {
    const request = parseRequest('move request', moveVmRequestSchema, input);
    const vm = await this.deps.engine.resolve(vmRef);
    const mode = moveModeFor(vm, request.mode);
    if (mode === 'cold' && vm.state !== 'stopped' && vm.state !== 'created') throw new IllegalStateError(`VM "${vm.name}"`, vm.state, ['stopped', 'created'], 'cold-move');
    if (mode === 'live' && vm.state !== 'running' && vm.state !== 'paused') throw new IllegalStateError(`VM "${vm.name}"`, vm.state, ['running', 'paused'], 'live-move');
    const dest = await this.deps.engine.fleet.resolve(request.to);
    const ds = request.datastore ? await this.destinationDatastore(request.datastore, dest) : null;
    if (mode === 'cold') {
      checkColdMove(vm);
      await prepareColdDestination(this.deps, vm, dest);
    }
    const asked = await this.movePlan(vm.id, { to: request.to, verify: request.verify });
    const plan = ds ? withinDatastore(asked, ds.id) : asked;
    await this.deps.faults?.('move.planned');
    // A live move is the migration, which finds the same bases (in the datastore asked, hashed when asked).
    const bases = { verify: request.verify, ...(ds ? { datastoreId: ds.id } : {}) };
    const task = mode === 'cold' ? await this.startCold(vm, request.to, plan.disks) : (await this.deps.engine.migrate(vm.id, { to: request.to, bases })).task;
    if (!task) throw new OffshootError('INTERNAL', `the migration of VM "${vm.name}" answered without a task`, { vm: vm.name }, 500);
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

  /** The datastore named, which the destination host must see (INVALID_INPUT, before anything moves, if it does not). */
  private async destinationDatastore(name: string, dest: { id: string; name: string }): Promise<DatastoreRecord> {
    const ds = await this.datastoreNamed(name);
    if (!ds.hosts.some((h) => h.hostId === dest.id)) {
      const on = ds.hosts.map((h) => this.deps.engine.hostName(h.hostId)).join(', ') || 'no host';
      throw new InvalidInputError(`datastore ${ds.name} is not on host ${dest.name} (it is on ${on}): a move uses a datastore of its destination`, { datastore: ds.name, host: dest.name });
    }
    return ds;
  }

  /** The `vm.move` task of a cold move; the VM is busy (no start, fork or clone) until it ends. */
  private async startCold(planned: VmRecord, to: string, plan: DiskContentPlan[]): Promise<TaskRecord> {
    const dest = await this.deps.engine.fleet.resolve(to);
    const vm = await this.deps.engine.states.claimBusy(planned.id, `moving to host ${dest.name}`, 'cold-move', (current) => {
      if (current.state !== 'stopped' && current.state !== 'created') throw new IllegalStateError(`VM "${current.name}"`, current.state, ['stopped', 'created'], 'cold-move');
      // The plan holds only for the VM it was made of: not one another move re-homed meanwhile, nor one whose disks changed.
      if (current.hostId !== planned.hostId) throw new MovePlanStaleError(current.name, `it is now on host ${this.deps.engine.hostName(current.hostId)}`);
      if (JSON.stringify(current.spec.disks) !== JSON.stringify(planned.spec.disks)) throw new MovePlanStaleError(current.name, 'its disks changed');
      checkColdMove(current);
    });
    const cancel = new AbortController();
    try {
      return await this.deps.engine.tasks.start(COLD_MOVE_TASK_KIND, vm, (ctx) => {
        this.running.set(ctx.taskId, { cancel, vm: vm.name });
        return runColdMove(this.deps, vm, dest, plan, ctx, cancel.signal).finally(() => {
          this.running.delete(ctx.taskId);
          return this.deps.engine.states.release(vm.id);
        });
      });
    } catch (err) {
      await this.deps.engine.states.release(vm.id);
      throw err;
    }
  }
}

/** The plan with only the destination's copies in one datastore held: a disk whose chain is held elsewhere sends it all. */
export function withinDatastore<P extends { disks: DiskContentPlan[]; skippedBytes: number; sendBytes: number }>(plan: P, datastoreId: string): P {
  const disks = plan.disks.map((d) => {
    if (d.heldLayers === 0 || d.destBacking.every((b) => b.file.startsWith(`ds.${datastoreId}:`))) return d;
    return { ...d, heldLayers: 0, destBacking: [], skipAll: false, send: d.layers, skippedBytes: 0, sendBytes: d.layers.reduce((n, l) => n + l.dataBytes, 0) };
  });
  return { ...plan, disks, skippedBytes: disks.reduce((n, d) => n + d.skippedBytes, 0), sendBytes: disks.reduce((n, d) => n + d.sendBytes, 0) };
}
