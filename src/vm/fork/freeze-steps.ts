// Steps a fork and a checkpoint share around the host's pre-staged freeze:
// making a derived VM's memory its own first, keeping what the freeze made
// away from garbage collection until a record names it, journalling the
// prepared state, and settling the VM after a failure before the switch-over.
import type { AgentClient, CallRequest, PreparedFork } from '../../protocol/index.ts';
import { runOperation } from '../../protocol/index.ts';
import type { GcPins } from '../coordination.ts';
import { TEMPLATE_PIN } from '../gc.ts';
import type { VmRecord } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import type { VmState } from '../state.ts';
import type { TaskContext } from '../tasks.ts';
import { taskPinHolder } from '../tasks.ts';
import type { ForkJournal } from './fork-journal.ts';

export interface FreezeDeps {
  agent: AgentClient;
  states: StateKeeper;
  /** The inventory's GC pins: what the freeze made is pinned under its task (`task:ID`) until a record names it. */
  gcPins: GcPins;
  /** Fault injection for tests (see src/api/test-faults.ts). */
  faults?: (point: string) => Promise<void> | void;
  /** Runs `fn` with garbage collection held off (a freeze makes bases and a template no record names yet). */
  holdGarbage<T>(fn: () => Promise<T>): Promise<T>;
}

/**
 * A derived VM's RAM must be a file of its own before it can be frozen again: the host starts a new QEMU
 * with an owned RAM file, which is journaled before anything moves (so a recovery can tell it from the VM's
 * QEMU), the VM is live-migrated into it, and it takes over; its runtime is recorded at once. Fault points
 * `<op>.make-owned:started` and `<op>.make-owned:migrated` (op: fork or checkpoint).
 */
export async function makeOwnedIfDerived(deps: FreezeDeps, vm: VmRecord, busy: VmState, ctx: TaskContext, journal: ForkJournal, why: string, op: 'fork' | 'checkpoint'): Promise<{ ms: number; bytes: number } | null> {
  if (vm.runtime?.memory.mode !== 'derived') return null;
  await ctx.progress(0.02, `copying ${vm.name}'s memory into a file of its own (${why})`);
  const target = await runOperation(deps.agent, 'startOwnedTarget', { vmId: vm.id, name: vm.name, spec: vm.spec });
  try {
    await ctx.journal(Object.assign(journal, { owned: target }));
    await deps.faults?.(`${op}.make-owned:started`);
    const moved = await runOperation(deps.agent, 'migrateToOwnedTarget', { vmId: vm.id });
    await deps.faults?.(`${op}.make-owned:migrated`);
    const runtime = await deps.agent.switchToOwnedTarget({ vmId: vm.id });
    await deps.states.settle(vm.id, [busy], busy, null, { runtime });
    return moved;
  } catch (err) {
    await deps.agent.abortOwnedTarget({ vmId: vm.id }).catch(() => undefined);
    throw err;
  }
}

/** The template and bases a freeze made; no record names them yet. */
function prepared(p: PreparedFork): string[] {
  return [`${TEMPLATE_PIN}${p.templateId}`, ...p.disks.frozen.map((f) => f.to)];
}

/** Stages the freeze on the host and pins what it made under the task, with garbage collection held off (on every controller) until the pins are in place. */
export async function prepareAndPin(deps: FreezeDeps, ctx: Pick<TaskContext, 'taskId'>, request: Omit<CallRequest<'prepareFork'>, 'operationId'> & { operationId?: string }): Promise<PreparedFork> {
  return deps.holdGarbage(async () => {
    const p = await runOperation(deps.agent, 'prepareFork', request);
    await deps.gcPins.add(taskPinHolder(ctx.taskId), prepared(p), null);
    return p;
  });
}

/** Drops the pins of what the freeze made (records name it now, or it is to be collected). */
export async function unpinPrepared(deps: Pick<FreezeDeps, 'gcPins'>, ctx: Pick<TaskContext, 'taskId'>, p: PreparedFork | undefined): Promise<void> {
  if (p) await deps.gcPins.remove(taskPinHolder(ctx.taskId), prepared(p));
}

export async function journalPrepared(ctx: TaskContext, journal: ForkJournal, p: PreparedFork): Promise<void> {
  await ctx.journal(Object.assign(journal, { phase: 'prepared', templateId: p.templateId, disks: p.disks, incoming: p.incoming }));
}

/** Before the switch-over the VM runs on in its own QEMU, unless that QEMU ended meanwhile. */
export async function settleUnswitched(deps: FreezeDeps, vmId: string, busy: VmState, err: unknown, what: string): Promise<void> {
  const status = (await deps.agent.vmStatus({ vmId }).catch(() => ({ status: null }))).status;
  if (status) await deps.states.settle(vmId, [busy], status, null);
  else await deps.states.settle(vmId, [busy], 'failed', `its QEMU ended during a ${what} (${(err as Error).message})`, { runtime: null });
}
