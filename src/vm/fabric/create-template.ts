// Making a parent template of a running VM, on its host: the same freeze a
// fork or a checkpoint makes (fork/freeze-steps.ts), with no children. While
// the VM runs its disks are split into read-only bases and its RAM file is
// linked as a memory template; the switch-over (the only stun) saves the
// device state, and the VM runs on, derived from that memory (a normal VM
// again). The host then keeps the fork's frozen RAM and device state as a
// host template (keepForkTemplate), which outlives the VM: children are
// spawned from it, not from the VM. A derived VM (a fork child, a claimed
// child) is first made owned (a local live migration), as for a fork of a
// fork. The task's journal is a fork journal: a controller that dies midway
// rolls the freeze back (or forward) as it does for a fork.
import { OffshootError } from '../../common/index.ts';
import type { PreparedFork, VmSpec } from '../../protocol/index.ts';
import { journalPrepared, makeOwnedIfDerived, prepareAndPin, settleUnswitched, unpinPrepared } from '../fork/index.ts';
import type { ForkJournal } from '../fork/index.ts';
import type { VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import type { TemplatePlacement, TemplateRecord } from './records.ts';

/** Every file a spec names (disks and their chains, kernel and initrd), top of each chain first. */
export function specFiles(spec: VmSpec): string[] {
  const files = spec.disks.flatMap((d) => [d.file, ...d.backing]);
  if (spec.boot.kind === 'kernel') files.push(spec.boot.kernel, ...(spec.boot.initrd ? [spec.boot.initrd] : []));
  return [...new Set(files)];
}

/** The settings a new placement's pool starts with: no children until `template scale`. */
export const EMPTY_POOL = { ready: 0, warm: false, maxMemoryBytes: null } as const;

/**
 * Freezes `source` (claimed `forking` by the caller, who releases it) into the template's host template on
 * its host; returns the origin placement. The source runs on either way; on failure nothing of the
 * template is left.
 */
export async function freezeTemplate(deps: FabricDeps, template: TemplateRecord, source: VmRecord, previous: 'running' | 'paused', ctx: TaskContext, forkId: string): Promise<TemplatePlacement> {
  const agent = agentOn(deps, source.hostId);
  const freeze = { agent, states: deps.engine.states, gcPins: deps.engine.coordinator.store.pins, faults: deps.faults, holdGarbage: <T>(fn: () => Promise<T>) => deps.engine.holdGarbage(fn) };
  const journal: ForkJournal = { forkId, sourceId: source.id, hostId: source.hostId, previousState: previous, phase: 'preparing', childIds: [] };
  let prepared: PreparedFork | undefined;
  let switched = false;
  try {
    await ctx.journal(journal);
    await makeOwnedIfDerived(freeze, source, 'forking', ctx, journal, 'to make a template of it', 'fork');
    const owned = (await deps.inventory.getVm(source.id)) ?? source;
    await ctx.progress(0.1, `freezing ${source.name} while it runs`);
    prepared = await prepareAndPin(freeze, ctx, { forkId, source: { vmId: source.id, name: source.name, spec: owned.spec }, children: [], maxDepth: 64 });
    await journalPrepared(ctx, journal, prepared);
    await deps.faults?.('template.prepared');
    const sw = await agent.switchFork({ forkId });
    switched = true;
    await deps.engine.states.settle(source.id, ['forking'], sw.wasRunning ? 'running' : 'paused', null, { runtime: sw.runtime, spec: { ...owned.spec, disks: prepared.disks.source } });
    await ctx.journal(Object.assign(journal, { phase: 'switched' }));
    await ctx.progress(0.5, `${source.name} runs on after a ${sw.stunMs.toFixed(0)} ms stun; keeping its frozen memory and devices`);
    const frozen = prepared;
    const spec: VmSpec = { ...owned.spec, disks: owned.spec.disks.map((d) => ({ ...d, file: frozen.disks.frozen.find((f) => f.from === d.file)?.to ?? d.file, owned: false })) };
    const kept = await agent.keepForkTemplate({ forkId, templateId: template.id, spec });
    await deps.faults?.('template.kept');
    await agent.finishFork({ forkId }).catch((err: unknown) => deps.logger.warn({ err }, 'template freeze clean-up failed'));
    return { hostId: source.hostId, state: 'ready', stateReason: null, spec, memoryTemplateId: kept.memoryTemplateId, files: specFiles(spec), pool: { ...EMPTY_POOL }, poolNote: null, placedAt: new Date().toISOString() };
  } catch (err) {
    await agent.abortFork({ forkId }).catch((e: unknown) => deps.logger.error({ err: e }, 'cannot abort the template freeze on the host'));
    if (!switched) await settleUnswitched(freeze, source.id, 'forking', err, 'template freeze');
    await agent.removeTemplate({ templateId: template.id }).catch(() => undefined);
    throw err instanceof OffshootError ? err : new OffshootError('INTERNAL', `making template ${template.name} failed: ${(err as Error).message}`, { template: template.name }, 500, { cause: err });
  } finally {
    await unpinPrepared(freeze, ctx, prepared).catch((err: unknown) => deps.logger.warn({ err }, 'cannot unpin what a template freeze made; it is released when its task ends'));
  }
}
