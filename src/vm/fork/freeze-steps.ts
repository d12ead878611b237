// Steps a fork and a checkpoint share around the host's pre-staged freeze:
// making a derived VM's memory its own first, keeping what the freeze made
// away from garbage collection until a record names it, journalling the
// prepared state, and settling the VM after a failure before the switch-over.
import type { AgentClient, PreparedFork } from '../../protocol/index.ts';
import { newOperationId, runOperation } from '../../protocol/index.ts';
import { TEMPLATE_PIN } from '../gc.ts';
import type { VmRecord } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import type { VmState } from '../state.ts';
import type { TaskContext } from '../tasks.ts';
import type { ForkJournal } from './fork-journal.ts';

export interface FreezeDeps {
  agent: AgentClient;
  states: StateKeeper;
  pins: Set<string>;
}

/**
 * A derived VM's RAM must be a file of its own before it can be frozen again; the operation is journaled
 * before it starts (a crash recovery then knows a new QEMU may exist) and the new QEMU is recorded at once.
 */
export async function makeOwnedIfDerived(deps: FreezeDeps, vm: VmRecord, busy: VmState, ctx: TaskContext, journal: ForkJournal, why: string): Promise<{ ms: number; bytes: number } | null> {
  if (vm.runtime?.memory.mode !== 'derived') return null;
  await ctx.progress(0.02, `copying ${vm.name}'s memory into a file of its own (${why})`);
  const operationId = newOperationId();
  await ctx.journal(Object.assign(journal, { makeOwnedOperationId: operationId }));
  const owned = await runOperation(deps.agent, 'makeOwned', { operationId, vmId: vm.id, name: vm.name, spec: vm.spec });
  await deps.states.settle(vm.id, [busy], busy, null, { runtime: owned.runtime });
  return { ms: owned.ms, bytes: owned.bytes };
}

/** The template and bases a freeze made; no record names them yet. */
function prepared(p: PreparedFork): string[] {
  return [`${TEMPLATE_PIN}${p.templateId}`, ...p.disks.frozen.map((f) => f.to)];
}

export function pinPrepared(pins: Set<string>, p: PreparedFork): void {
  for (const item of prepared(p)) pins.add(item);
}

export function unpinPrepared(pins: Set<string>, p: PreparedFork | undefined): void {
  if (p) for (const item of prepared(p)) pins.delete(item);
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
