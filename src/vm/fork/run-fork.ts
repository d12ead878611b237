// Fork orchestration, phase by phase (DESIGN.md "The memory model"):
//   plan      names, ids, MACs of the children; the source is claimed (forking)
//   prepare   while the source runs: its disks split into bases + deltas, its
//             RAM file hard-linked as the template, and a QEMU for the
//             source's replacement and each child started, waiting (-incoming)
//   switch    stop, save device state, load it into the replacement, run  [the stun]
//   children  each child loads the device state and runs
//   customize hostname, MAC, machine-id, entropy, the user's script
//   flatten   disk state inheritance: block-stream where chains got too deep
// On failure before the switch the source never stopped (or is resumed), and
// disks and template are undone; after it, children are killed and removed
// with their files. The error names the step.
import { AlreadyExistsError, InvalidInputError, isValidName } from '../../common/index.ts';
import type { AgentClient, CustomizeResult, PreparedFork, VmSpec } from '../../protocol/index.ts';
import { newOperationId, runOperation } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import { applyIdentity, withNewIdentity } from '../identity.ts';
import { newVmId } from '../ids.ts';
import type { VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import { ForkFailedError } from './fork-errors.ts';
import type { ForkStep } from './fork-errors.ts';
import type { ParsedForkRequest } from './fork-request.ts';
import type { ForkJournal } from './fork-journal.ts';
import { journalPrepared, makeOwnedIfDerived, prepareAndPin, settleUnswitched, unpinPrepared } from './freeze-steps.ts';

/** What a fork needs: the engine's shared parts and the protocol client of the source's host. */
export type ForkDeps = EngineContext & { agent: AgentClient };

export interface ForkChildResult {
  name: string;
  id: string;
  mac: string | null;
  runningMs: number;
  customize: CustomizeResult;
}

export interface ForkResult {
  forkId: string;
  source: { name: string; id: string; pid: number };
  children: ForkChildResult[];
  /** ms from the fork's start, except stunMs (vCPUs stopped to running again). */
  timings: { stunMs: number; preparedMs: number; switchedMs: number; makeOwnedMs: number | null; firstChildMs: number; allChildrenMs: number; customizedMs: number; totalMs: number };
  deviceStateBytes: number;
  disks: { flattened: number; flattenErrors: string[]; bases: string[] };
}

export type { ForkJournal } from './fork-journal.ts';

/** Children loading their device state at once: loading is mostly waiting on QMP round trips. */
const CHILD_START_CONCURRENCY = 4;

interface ChildPlan {
  id: string;
  name: string;
  spec: VmSpec;
  mac: string | null;
}

async function planChildren(deps: ForkDeps, source: VmRecord, request: ParsedForkRequest): Promise<ChildPlan[]> {
  const prefix = request.prefix ?? `${source.name}-c`;
  const taken = new Set((await deps.inventory.listVms()).map((v) => v.name));
  const plans: ChildPlan[] = [];
  for (let i = 1; plans.length < request.count; i++) {
    const name = `${prefix}${i}`;
    if (!isValidName(name)) throw new InvalidInputError(`child name "${name}" is not a valid VM name; choose a shorter prefix`, { name });
    if (request.prefix && taken.has(name)) throw new AlreadyExistsError('VM', name);
    if (taken.has(name)) continue;
    const spec = withNewIdentity(source.spec, name);
    plans.push({ id: newVmId(), name, spec, mac: spec.nics[0]?.mac ?? null });
    taken.add(name);
  }
  return plans;
}

async function removeChild(deps: ForkDeps, child: ChildPlan): Promise<void> {
  await deps.agent.killVm({ vmId: child.id }).catch(() => undefined);
  await deps.agent.deleteVmFiles({ vmId: child.id }).catch(() => undefined);
  const record = await deps.inventory.getVm(child.id);
  if (record) {
    await deps.inventory.deleteVm(child.id);
    deps.events.publish({ type: 'vm.deleted', vmId: child.id, name: child.name, at: new Date().toISOString() });
  }
}

export async function runFork(deps: ForkDeps, sourceRef: VmRecord, request: ParsedForkRequest, ctx: TaskContext, forkId: string): Promise<ForkResult> {
  const t0 = performance.now();
  let step: ForkStep = 'plan';
  const source = sourceRef;
  const children = await planChildren(deps, source, request).catch(async (err) => {
    await deps.states.settle(source.id, ['forking'], source.state, null);
    throw new ForkFailedError(source.name, 'plan', err);
  });
  const journal: ForkJournal = { forkId, sourceId: source.id, hostId: source.hostId, previousState: source.state === 'paused' ? 'paused' : 'running', phase: 'preparing', childIds: children.map((c) => c.id) };
  let prepared: PreparedFork | undefined;
  let switched = false;
  const busyChildren: string[] = [];
  let madeOwned: { ms: number; bytes: number } | null = null;
  try {
    step = 'prepare';
    await ctx.journal(journal);
    madeOwned = await makeOwnedIfDerived(deps, source, 'forking', ctx, journal, 'fork of a fork', 'fork');
    await ctx.progress(0.05, `preparing ${children.length} children while ${source.name} runs`);
    const prepareOperationId = newOperationId();
    await ctx.journal(Object.assign(journal, { prepareOperationId }));
    const owned = madeOwned ? await deps.inventory.getVm(source.id) : source;
    prepared = await prepareAndPin(deps, ctx, { operationId: prepareOperationId, forkId, source: { vmId: source.id, name: source.name, spec: owned?.spec ?? source.spec }, children: children.map((c) => ({ vmId: c.id, name: c.name, spec: c.spec })), maxDepth: request.maxDiskDepth });
    await journalPrepared(ctx, journal, prepared);
    await deps.faults?.('fork.prepared');
    const preparedMs = performance.now() - t0;

    step = 'switch';
    const sw = await deps.agent.switchFork({ forkId });
    switched = true;
    const sourceSpec: VmSpec = { ...source.spec, disks: prepared.disks.source };
    await deps.states.settle(source.id, ['forking'], sw.wasRunning ? 'running' : 'paused', null, { runtime: sw.runtime, spec: sourceSpec });
    await ctx.journal(Object.assign(journal, { phase: 'switched' }));
    const switchedAt = performance.now() - t0;
    await ctx.progress(0.4, `source resumed after a ${sw.stunMs.toFixed(0)} ms stun; starting ${children.length} children`);

    step = 'start children';
    const now = new Date().toISOString();
    for (const child of children) {
      child.spec = { ...child.spec, disks: prepared.disks.children[child.id] ?? [] };
      const record: VmRecord = { id: child.id, name: child.name, state: 'starting', stateReason: `forked from ${source.name}`, hostId: source.hostId, spec: child.spec, runtime: null, createdAt: now, updatedAt: now };
      await deps.inventory.insertVm(record);
      // Its disks may still be flattened: nothing else may rewrite its spec until the fork ends.
      await deps.states.claimBusy(child.id, `being forked from ${source.name}`, 'use');
      busyChildren.push(child.id);
      deps.events.publish({ type: 'vm.created', vm: record, at: now });
    }
    const runningAt = new Map<string, number>();
    const startChild = async (child: ChildPlan, i: number) => {
      await deps.faults?.(`fork.start-child:${i + 1}`);
      const runtime = await deps.agent.completeForkChild({ forkId, childId: child.id });
      runningAt.set(child.id, performance.now() - t0);
      const { moved, vm } = await deps.states.settle(child.id, ['starting'], sw.wasRunning ? 'running' : 'paused', `forked from ${source.name}`, { runtime });
      if (!moved) throw new Error(`child ${child.name} became ${vm.state} while it was starting`);
    };
    // A few at a time; on a failure no new child starts, and the rollback waits for those in flight.
    const queue = children.map((child, i) => ({ child, i }));
    const outcomes = await Promise.allSettled(
      Array.from({ length: Math.min(CHILD_START_CONCURRENCY, queue.length) }, async () => {
        try {
          for (let next = queue.shift(); next; next = queue.shift()) await startChild(next.child, next.i);
        } catch (err) {
          queue.length = 0;
          throw err;
        }
      }),
    );
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) throw failure.reason;
    const childTimes = [...runningAt.values()];
    await ctx.progress(0.6, `${children.length} children running; customizing`);

    step = 'customize';
    const customized = await Promise.all(
      children.map((child) =>
        sw.wasRunning
          ? applyIdentity(deps.agent, deps.states, child, { script: request.customize, timeoutMs: request.customizeTimeoutMs })
          : Promise.resolve<CustomizeResult>({ ok: true, error: 'skipped: the source was paused, so the children are paused', script: null, ms: 0 }),
      ),
    );
    const failed = children.filter((_, i) => !customized[i]?.ok);
    if (failed.length > 0) {
      const reasons = Object.fromEntries(failed.map((c) => [c.name, customized[children.indexOf(c)]?.error]));
      throw new ForkFailedError(source.name, 'customize', new Error(`${failed.length} of ${children.length} children could not be customized: ${failed.map((c) => `${c.name}: ${reasons[c.name]}`).join('; ')}`), { children: reasons });
    }
    const customizedMs = performance.now() - t0;

    // From here the fork has succeeded: flattening and clean-up are best effort and never undo it.
    step = 'flatten disks';
    await deps.faults?.('fork.flatten');
    if (prepared.disks.streams.length > 0) await ctx.progress(0.85, `flattening ${prepared.disks.streams.length} disk chains (disk state inheritance)`);
    const flattenErrors: string[] = [];
    for (const stream of prepared.disks.streams) {
      try {
        await runOperation(deps.agent, 'streamDisk', { vmId: stream.vmId, diskId: stream.diskId, base: stream.base });
        // Under the VM's lock, on its current spec: the disk now points at the base's parent.
        await deps.states.updateSpec(stream.vmId, (spec) => ({ ...spec, disks: spec.disks.map((d) => (d.id === stream.diskId && d.backing[1] === stream.base ? { ...d, backing: d.backing.slice(1) } : d)) }));
      } catch (err) {
        deps.logger.warn({ vmId: stream.vmId, disk: stream.diskId, err: (err as Error).message }, 'flattening a forked disk failed; its chain stays one deeper');
        flattenErrors.push(`${stream.vmId}/${stream.diskId}: ${(err as Error).message}`);
      }
    }

    for (const id of busyChildren) await deps.states.release(id);
    await deps.agent.finishFork({ forkId }).catch((err: unknown) => deps.logger.warn({ err }, 'fork clean-up failed'));
    await unpinPrepared(deps, ctx, prepared);
    await deps.collectGarbage(source.hostId).catch((err: unknown) => deps.logger.warn({ err }, 'garbage collection after a fork failed'));
    return {
      forkId,
      source: { name: source.name, id: source.id, pid: sw.runtime.pid },
      children: children.map((c, i) => ({ name: c.name, id: c.id, mac: c.mac, runningMs: runningAt.get(c.id) ?? NaN, customize: customized[i] as CustomizeResult })),
      timings: {
        stunMs: sw.stunMs,
        preparedMs,
        switchedMs: switchedAt,
        makeOwnedMs: madeOwned?.ms ?? null,
        firstChildMs: Math.min(...childTimes),
        allChildrenMs: Math.max(...childTimes),
        customizedMs,
        totalMs: performance.now() - t0,
      },
      deviceStateBytes: sw.deviceStateBytes,
      disks: { flattened: prepared.disks.streams.length - flattenErrors.length, flattenErrors, bases: prepared.disks.frozen.map((f) => f.to) },
    };
  } catch (err) {
    // Another controller took the task over (this one was cut off): it rolls the fork back from the journal.
    if (ctx.signal.aborted) throw err;
    deps.logger.warn({ vm: source.name, step, err: (err as Error).message }, 'fork failed; rolling back');
    for (const id of busyChildren) await deps.states.release(id);
    for (const child of children) await removeChild(deps, child);
    await deps.agent.abortFork({ forkId }).catch((e: unknown) => deps.logger.error({ err: e }, 'cannot abort the fork on the host'));
    if (!switched) await settleUnswitched(deps, source.id, 'forking', err, 'fork');
    await unpinPrepared(deps, ctx, prepared).catch(() => undefined);
    await deps.collectGarbage(source.hostId).catch(() => undefined);
    throw err instanceof ForkFailedError ? err : new ForkFailedError(source.name, step, err);
  }
}
