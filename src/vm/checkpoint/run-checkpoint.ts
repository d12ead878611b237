// A live checkpoint, phase by phase. It reuses the fork's freeze with no
// children: while the VM runs, its disks are split (the frozen base is what
// the checkpoint refers to) and its RAM file is linked as a template; the
// switch-over is the only stun; then the VM runs on (derived from the
// template) while the frozen RAM and device state are written into the
// checkpoint file in the background. With `stop`, the VM powers off after.
// Cancelling (the signal) before or during the write rolls back exactly as a
// failure does: the VM keeps running, the partial file and the checkpoint
// record go, and the frozen base and template are released. The host agent
// chooses and checks the file's place before the freeze (<home>/checkpoints,
// or --out inside an allowed root; never an existing file) and never replaces
// or removes a file that is not this checkpoint's.
import type { AgentClient, PreparedFork, VmDisk, VmSpec } from '../../protocol/index.ts';
import { guestMemoryBytes, newOperationId, runOperation } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { CheckpointRecord, VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import type { ForkJournal } from '../fork/index.ts';
import { journalPrepared, makeOwnedIfDerived, prepareAndPin, settleUnswitched, unpinPrepared } from '../fork/index.ts';
import { newTaskId } from '../ids.ts';

/** What a checkpoint needs: the engine's shared parts and the protocol client of the VM's host. */
export type CheckpointDeps = EngineContext & { agent: AgentClient };

export interface CheckpointResult {
  checkpoint: CheckpointRecord;
  stunMs: number;
  writeMs: number;
  fileBytes: number;
  storedPages: number;
  gbPerSecond: number;
  /**
   * Where the operation's time went (ms), phase by phase: the freeze prepared (journal, disks split,
   * template pinned), the switch-over (the stun, seen from here), the record and journal around it, the
   * agent's write, the record completed and the freeze finished, the garbage collection.
   */
  phasesMs: { prepare: number; switch: number; record: number; write: number; finish: number; collect: number };
}

export async function runCheckpoint(deps: CheckpointDeps, vm: VmRecord, request: { name: string; file: string; path: string; stop: boolean }, ctx: TaskContext, forkId: string, signal?: AbortSignal): Promise<CheckpointResult> {
  const checkpointId = newTaskId();
  const { file, path } = request;
  const writeOperationId = newOperationId();
  const journal: ForkJournal = { forkId, sourceId: vm.id, hostId: vm.hostId, previousState: vm.state === 'paused' ? 'paused' : 'running', phase: 'preparing', childIds: [], checkpointId, writeOperationId };
  let switched = false;
  let record: CheckpointRecord | undefined;
  let prepared: PreparedFork | undefined;
  const phasesMs = { prepare: 0, switch: 0, record: 0, write: 0, finish: 0, collect: 0 };
  let mark = performance.now();
  const phase = (name: keyof typeof phasesMs) => {
    const now = performance.now();
    phasesMs[name] = now - mark;
    mark = now;
  };
  try {
    signal?.throwIfAborted();
    await ctx.journal(journal);
    await makeOwnedIfDerived(deps, vm, 'checkpointing', ctx, journal, 'it maps a template', 'checkpoint');
    await ctx.progress(0.05, 'preparing the freeze');
    prepared = await prepareAndPin(deps, ctx, { forkId, source: { vmId: vm.id, name: vm.name, spec: vm.spec }, children: [], maxDepth: 1_000_000 });
    await journalPrepared(ctx, journal, prepared);
    await deps.faults?.('checkpoint.prepared');
    signal?.throwIfAborted();
    phase('prepare');
    const sw = await deps.agent.switchFork({ forkId });
    switched = true;
    phase('switch');
    const split = prepared.disks;
    const frozenDisks: VmDisk[] = vm.spec.disks.map((d) => {
      const moved = split.frozen.find((f) => f.from === d.file);
      return moved ? { ...d, file: moved.to, owned: false, readOnly: false } : d;
    });
    const runningSpec: VmSpec = { ...vm.spec, disks: prepared.disks.source };
    await deps.states.settle(vm.id, ['checkpointing'], sw.wasRunning ? 'running' : 'paused', null, { runtime: sw.runtime, spec: runningSpec });
    await ctx.journal(Object.assign(journal, { phase: 'switched' }));

    const now = new Date().toISOString();
    record = { id: checkpointId, name: request.name, vmId: vm.id, vmName: vm.name, hostId: vm.hostId, file, path, state: 'writing', memoryBytes: guestMemoryBytes(vm.spec), fileBytes: null, spec: { ...vm.spec, disks: frozenDisks }, createdAt: now };
    await deps.inventory.insertCheckpoint(record);
    await deps.faults?.('checkpoint.writing');
    await ctx.progress(0.1, `${vm.name} resumed after a ${sw.stunMs.toFixed(0)} ms stun; writing ${path}`);
    phase('record');
    const t0 = performance.now();
    let lastReport = 0;
    signal?.throwIfAborted();
    const metadata = { schema: 2 as const, checkpointId, vm: { id: vm.id, name: vm.name }, spec: record.spec, createdAt: now, hostId: vm.hostId };
    const written = await runOperation(deps.agent, 'writeCheckpoint', { operationId: writeOperationId, forkId, checkpointId, file, memoryBytes: record.memoryBytes, metadata }, {
      signal,
      onProgress: (event) => {
        const now2 = performance.now();
        if (now2 - lastReport > 500) {
          lastReport = now2;
          ctx.progress(0.1 + 0.85 * event.progress, event.message).catch(() => undefined);
        }
      },
    });
    const writeMs = performance.now() - t0;
    phase('write');
    record = await deps.inventory.updateCheckpoint(record.id, { state: 'complete', fileBytes: written.fileBytes });
    await deps.agent.finishFork({ forkId });
    await unpinPrepared(deps, ctx, prepared);
    phase('finish');
    if (request.stop) {
      await ctx.progress(0.97, `powering ${vm.name} off`);
      const claimed = await deps.states.settle(vm.id, ['running', 'paused'], 'stopping', null);
      if (claimed.moved) {
        const { forced } = await runOperation(deps.agent, 'stopVm', { vmId: vm.id, timeoutMs: 30_000 }).catch(() => ({ forced: true }));
        await deps.states.settle(vm.id, ['stopping'], 'stopped', forced ? 'suspended to a checkpoint (killed after the power-down timed out)' : 'suspended to a checkpoint', { runtime: null });
      }
    }
    mark = performance.now();
    await deps.collectGarbage(vm.hostId).catch(() => undefined);
    phase('collect');
    return { checkpoint: record, stunMs: sw.stunMs, writeMs, fileBytes: written.fileBytes, storedPages: written.storedPages, gbPerSecond: record.memoryBytes / 1e9 / (writeMs / 1000), phasesMs };
  } catch (caught) {
    // A cancel surfaces as whatever the interrupted step threw (an abort); report it as the cancel.
    const err = signal?.aborted ? signal.reason : caught;
    // Another controller took the task over (this one was cut off): it rolls the checkpoint back from the journal.
    if (ctx.signal.aborted) throw err;
    deps.logger.warn({ vm: vm.name, err: (err as Error).message, cancelled: signal?.aborted ?? false }, 'checkpoint failed; rolling back');
    await deps.agent.abortFork({ forkId }).catch(() => undefined);
    if (record) {
      await deps.inventory.deleteCheckpoint(record.id).catch(() => undefined);
      await deps.agent.removeCheckpoint({ file, checkpointId: record.id, createdAt: record.createdAt }).catch(() => undefined);
    }
    if (!switched) await settleUnswitched(deps, vm.id, 'checkpointing', err, 'checkpoint');
    await unpinPrepared(deps, ctx, prepared).catch(() => undefined);
    await deps.collectGarbage(vm.hostId).catch(() => undefined);
    throw err;
  }
}
