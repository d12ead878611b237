// Fork orchestration, phase by phase (DESIGN.md "The memory model"):
//   plan      names, ids, MACs of the children; the source is claimed (forking)
//   freeze    stop the vCPUs, save device state, RAM file -> template   [stun starts]
//   disks     source disks -> read-only bases, a delta per VM
//   resume    the source restarts derived from the template and runs  [stun ends]
//   children  each child starts derived from the template and runs
//   customize hostname, MAC, machine-id, entropy, the user's script
//   flatten   disk state inheritance: block-stream where chains got too deep
// On failure the source is resumed (from the template if its QEMU had ended),
// children are killed and removed with their files, and the error names the step.
import { randomBytes } from 'node:crypto';
import { AlreadyExistsError, InvalidInputError, isValidName } from '../../common/index.ts';
import type { Logger } from '../../common/index.ts';
import type { CustomizeResult, ForkDisksRequest, ForkDisksResult, FrozenVm, HostAgent, VmSpec } from '../../agent/index.ts';
import { newMac } from '../../agent/index.ts';
import type { EventBus } from '../events.ts';
import { newVmId } from '../ids.ts';
import type { Inventory, VmRecord } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import type { TaskContext } from '../tasks.ts';
import { ForkFailedError } from './fork-errors.ts';
import type { ForkStep } from './fork-errors.ts';
import type { ParsedForkRequest } from './fork-request.ts';

export interface ForkDeps {
  inventory: Inventory;
  agent: HostAgent;
  states: StateKeeper;
  events: EventBus;
  logger: Logger;
  /** Templates and bases in use by an operation in flight; garbage collection leaves them alone. */
  pins: Set<string>;
  collectGarbage(): Promise<void>;
  /** Fault injection for tests: called at named points; throwing there fails the fork at that step. */
  faults?: (point: string) => Promise<void> | void;
}

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
  timings: { stunMs: number; freezeMs: number; makeOwnedMs: number | null; firstChildMs: number; allChildrenMs: number; customizedMs: number; totalMs: number };
  disks: { flattened: number; bases: string[] };
}

/** What a crash recovery needs to roll a fork back; persisted in the task as the fork advances. */
export interface ForkJournal {
  forkId: string;
  sourceId: string;
  previousState: 'running' | 'paused';
  phase: 'freezing' | 'frozen' | 'disks' | 'source-resumed';
  childIds: string[];
  frozen?: FrozenVm;
  disksRequest?: ForkDisksRequest;
  disks?: ForkDisksResult;
}

interface ChildPlan {
  id: string;
  name: string;
  spec: VmSpec;
  mac: string | null;
}

function withHostname(cmdline: string, name: string): string {
  return /offshoot\.hostname=\S+/.test(cmdline) ? cmdline.replace(/offshoot\.hostname=\S+/, `offshoot.hostname=${name}`) : `${cmdline} offshoot.hostname=${name}`;
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
    const mac = source.spec.nics[0] ? newMac() : null;
    const spec: VmSpec = {
      ...source.spec,
      boot: source.spec.boot.kind === 'kernel' ? { ...source.spec.boot, cmdline: withHostname(source.spec.boot.cmdline, name) } : source.spec.boot,
      nics: source.spec.nics.map((n, j) => ({ ...n, mac: j === 0 && mac ? mac : newMac() })),
    };
    plans.push({ id: newVmId(), name, spec, mac });
    taken.add(name);
  }
  return plans;
}

/** Brings the source back after a failed fork: resumes its QEMU, or restarts it from the template. */
async function restoreSource(deps: ForkDeps, source: VmRecord, frozen: FrozenVm | undefined, spec: VmSpec): Promise<void> {
  try {
    if (!frozen) {
      await deps.states.settle(source.id, ['forking'], source.state, null);
      return;
    }
    const runtime = await deps.agent.startFromTemplate(source.id, source.name, spec, frozen);
    if (frozen.wasRunning) await deps.agent.resumeVm(source.id);
    await deps.states.settle(source.id, ['forking'], frozen.wasRunning ? 'running' : 'paused', null, { runtime, spec });
  } catch (err) {
    deps.logger.error({ err, vm: source.name }, 'cannot resume the source after a failed fork');
    await deps.states.settle(source.id, ['forking'], 'failed', `fork failed and the source could not be resumed: ${(err as Error).message}`, { runtime: null });
  }
}

async function removeChild(deps: ForkDeps, child: ChildPlan): Promise<void> {
  await deps.agent.killVm(child.id).catch(() => undefined);
  await deps.agent.deleteVmFiles(child.id).catch(() => undefined);
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
  let frozen: FrozenVm | undefined;
  let disks: ForkDisksResult | undefined;
  let disksRequest: ForkDisksRequest | undefined;
  let sourceResumed = false;
  const children = await planChildren(deps, source, request).catch(async (err) => {
    await deps.states.settle(source.id, ['forking'], source.state, null);
    throw new ForkFailedError(source.name, 'plan', err);
  });
  const started: ChildPlan[] = [];
  const journal: ForkJournal = { forkId, sourceId: source.id, previousState: source.state === 'paused' ? 'paused' : 'running', phase: 'freezing', childIds: children.map((c) => c.id) };
  try {
    step = 'freeze';
    await ctx.journal(journal);
    await ctx.progress(0.05, `freezing ${source.name}`);
    frozen = await deps.agent.freezeForFork(source.id, source.name, source.spec, forkId);
    deps.pins.add(frozen.templateId);
    await ctx.journal(Object.assign(journal, { phase: 'frozen', frozen }));
    await deps.faults?.('fork.after-freeze');
    const stunStart = performance.now() - frozen.freezeMs;

    step = 'disks';
    disksRequest = { sourceId: source.id, sourceDisks: source.spec.disks, childIds: children.map((c) => c.id), maxDepth: request.maxDiskDepth };
    disks = await deps.agent.forkDisks(disksRequest);
    for (const f of disks.frozen) deps.pins.add(f.to);
    await ctx.journal(Object.assign(journal, { phase: 'disks', disksRequest, disks }));
    await deps.faults?.('fork.after-disks');

    step = 'resume source';
    const sourceSpec: VmSpec = { ...source.spec, disks: disks.source };
    const runtime = await deps.agent.startFromTemplate(source.id, source.name, sourceSpec, frozen);
    if (frozen.wasRunning) await deps.agent.resumeVm(source.id);
    const stunMs = performance.now() - stunStart;
    await deps.states.settle(source.id, ['forking'], frozen.wasRunning ? 'running' : 'paused', null, { runtime, spec: sourceSpec });
    sourceResumed = true;
    await ctx.journal(Object.assign(journal, { phase: 'source-resumed' }));
    await ctx.progress(0.3, `source resumed after ${stunMs.toFixed(0)} ms; starting ${children.length} children`);

    step = 'start children';
    const now = new Date().toISOString();
    for (const child of children) {
      child.spec = { ...child.spec, disks: disks.children[child.id] ?? [] };
      const record: VmRecord = { id: child.id, name: child.name, state: 'starting', stateReason: `forked from ${source.name}`, spec: child.spec, runtime: null, createdAt: now, updatedAt: now };
      await deps.inventory.insertVm(record);
      deps.events.publish({ type: 'vm.created', vm: record, at: now });
    }
    const runningAt = new Map<string, number>();
    const frozenState = frozen;
    const startChild = async (child: ChildPlan) => {
      started.push(child);
      await deps.faults?.(`fork.start-child:${children.indexOf(child) + 1}`);
      const childRuntime = await deps.agent.startFromTemplate(child.id, child.name, child.spec, frozenState);
      if (frozenState.wasRunning) await deps.agent.resumeVm(child.id);
      runningAt.set(child.id, performance.now() - t0);
      await deps.states.settle(child.id, ['starting'], frozenState.wasRunning ? 'running' : 'paused', `forked from ${source.name}`, { runtime: childRuntime });
    };
    // Two at a time: QEMU start-up is CPU-bound, and this machine class has few cores.
    // On a failure, no new child starts, and the rollback waits for children being started to settle.
    const queue = [...children];
    const workers = Array.from({ length: Math.min(2, queue.length) }, async () => {
      try {
        for (let next = queue.shift(); next; next = queue.shift()) await startChild(next);
      } catch (err) {
        queue.length = 0;
        throw err;
      }
    });
    const outcomes = await Promise.allSettled(workers);
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) throw failure.reason;
    const childTimes = [...runningAt.values()];
    await ctx.progress(0.6, `${children.length} children running; customizing`);

    step = 'customize';
    const customized = await Promise.all(
      children.map((child) =>
        frozenState.wasRunning
          ? deps.agent.customize(child.id, { name: child.name, mac: child.mac, machineId: randomBytes(16).toString('hex'), script: request.customize, timeoutMs: request.customizeTimeoutMs })
          : Promise.resolve<CustomizeResult>({ ok: true, error: 'skipped: the source was paused, so the children are paused', script: null, ms: 0 }),
      ),
    );
    const failed = children.filter((_, i) => !customized[i]?.ok);
    if (failed.length > 0) {
      const reasons = Object.fromEntries(failed.map((c) => [c.name, customized[children.indexOf(c)]?.error]));
      throw new ForkFailedError(source.name, 'customize', new Error(`${failed.length} of ${children.length} children could not be customized: ${failed.map((c) => `${c.name}: ${reasons[c.name]}`).join('; ')}`), { children: reasons });
    }
    const customizedMs = performance.now() - t0;

    step = 'flatten disks';
    if (disks.streams.length > 0) await ctx.progress(0.85, `flattening ${disks.streams.length} disk chains (disk state inheritance)`);
    for (const stream of disks.streams) {
      await deps.agent.streamDisk(stream.vmId, stream.diskId, stream.base);
      const vm = await deps.inventory.getVm(stream.vmId);
      if (vm) {
        const spec = { ...vm.spec, disks: vm.spec.disks.map((d) => (d.id === stream.diskId ? { ...d, backing: d.backing.slice(1) } : d)) };
        await deps.inventory.updateVm(vm.id, { spec });
      }
    }

    await deps.agent.removeOperationFiles(forkId);
    deps.pins.delete(frozen.templateId);
    for (const f of disks.frozen) deps.pins.delete(f.to);
    await deps.collectGarbage();
    return {
      forkId,
      source: { name: source.name, id: source.id, pid: runtime.pid },
      children: children.map((c, i) => ({ name: c.name, id: c.id, mac: c.mac, runningMs: runningAt.get(c.id) ?? NaN, customize: customized[i] as CustomizeResult })),
      timings: {
        stunMs,
        freezeMs: frozen.freezeMs,
        makeOwnedMs: frozen.madeOwned?.ms ?? null,
        firstChildMs: Math.min(...childTimes),
        allChildrenMs: Math.max(...childTimes),
        customizedMs,
        totalMs: performance.now() - t0,
      },
      disks: { flattened: disks.streams.length, bases: disks.frozen.map((f) => f.to) },
    };
  } catch (err) {
    deps.logger.warn({ vm: source.name, step, err: (err as Error).message }, 'fork failed; rolling back');
    for (const child of children) await removeChild(deps, child);
    if (!sourceResumed) {
      if (disks && disksRequest) await deps.agent.undoForkDisks(disksRequest, disks).catch((e: unknown) => deps.logger.error({ err: e }, 'cannot undo fork disks'));
      await restoreSource(deps, source, frozen, source.spec);
    }
    await deps.agent.removeOperationFiles(forkId).catch(() => undefined);
    if (frozen) deps.pins.delete(frozen.templateId);
    for (const f of disks?.frozen ?? []) deps.pins.delete(f.to);
    await deps.collectGarbage().catch(() => undefined);
    throw err instanceof ForkFailedError ? err : new ForkFailedError(source.name, step, err);
  }
}
