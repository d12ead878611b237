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
import type { Logger } from '../../common/index.ts';
import type { HostAgent, PreparedFork, VmDisk, VmSpec } from '../../agent/index.ts';
import type { Inventory, CheckpointRecord, VmRecord } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import type { TaskContext } from '../tasks.ts';
import type { ForkJournal } from '../fork/index.ts';
import { journalPrepared, makeOwnedIfDerived, prepareAndPin, settleUnswitched, unpinPrepared } from '../fork/index.ts';
import { newTaskId } from '../ids.ts';

export interface CheckpointDeps {
  inventory: Inventory;
  agent: HostAgent;
  states: StateKeeper;
  logger: Logger;
  pins: Set<string>;
  collectGarbage(): Promise<void>;
  holdGarbage<T>(fn: () => Promise<T>): Promise<T>;
  /** Fault injection for tests. */
  faults?: (point: string) => Promise<void> | void;
}

export interface CheckpointResult {
  checkpoint: CheckpointRecord;
  stunMs: number;
  writeMs: number;
  fileBytes: number;
  storedPages: number;
  gbPerSecond: number;
}

export async function runCheckpoint(deps: CheckpointDeps, vm: VmRecord, request: { name: string; path: string; stop: boolean }, ctx: TaskContext, forkId: string, signal?: AbortSignal): Promise<CheckpointResult> {
  const checkpointId = newTaskId();
  const path = request.path;
  const journal: ForkJournal = { forkId, sourceId: vm.id, previousState: vm.state === 'paused' ? 'paused' : 'running', phase: 'preparing', childIds: [] };
  let switched = false;
  let record: CheckpointRecord | undefined;
  let prepared: PreparedFork | undefined;
  const cancelWrite = () => void deps.agent.cancelCheckpointWrite(forkId).catch(() => undefined);
  try {
    signal?.throwIfAborted();
    await ctx.journal(journal);
    await makeOwnedIfDerived(deps, vm, 'checkpointing', ctx, 'it maps a template', journal, 'checkpoint');
    await ctx.progress(0.05, 'preparing the freeze');
    prepared = await prepareAndPin(deps, { forkId, source: { vmId: vm.id, name: vm.name, spec: vm.spec }, children: [], maxDepth: Number.MAX_SAFE_INTEGER });
    await journalPrepared(ctx, journal, prepared);
    await deps.faults?.('checkpoint.prepared');
    signal?.throwIfAborted();
    const sw = await deps.agent.switchFork(forkId);
    switched = true;
    const split = prepared.disks;
    const frozenDisks: VmDisk[] = vm.spec.disks.map((d) => {
      const moved = split.frozen.find((f) => f.from === d.path);
      return moved ? { ...d, path: moved.to, owned: false, readOnly: false } : d;
    });
    const runningSpec: VmSpec = { ...vm.spec, disks: prepared.disks.source };
    await deps.states.settle(vm.id, ['checkpointing'], sw.wasRunning ? 'running' : 'paused', null, { runtime: sw.runtime, spec: runningSpec });
    await ctx.journal(Object.assign(journal, { phase: 'switched' }));

    const now = new Date().toISOString();
    record = { id: checkpointId, name: request.name, vmId: vm.id, vmName: vm.name, path, state: 'writing', memoryBytes: vm.spec.memoryMiB * 1024 * 1024, fileBytes: null, spec: { ...vm.spec, disks: frozenDisks }, createdAt: now };
    await deps.inventory.insertCheckpoint(record);
    await deps.faults?.('checkpoint.writing');
    await ctx.progress(0.1, `${vm.name} resumed after a ${sw.stunMs.toFixed(0)} ms stun; writing ${path}`);
    const t0 = performance.now();
    let lastReport = 0;
    signal?.throwIfAborted();
    signal?.addEventListener('abort', cancelWrite, { once: true });
    const written = await deps.agent.writeCheckpoint(forkId, checkpointId, path, record.memoryBytes, { vm: { id: vm.id, name: vm.name }, spec: record.spec, createdAt: now, qemu: 'x-ignore-shared device state' }, (p) => {
      const now2 = performance.now();
      if (now2 - lastReport > 500) {
        lastReport = now2;
        ctx.progress(0.1 + 0.85 * (p.blocksDone / p.blockCount), `written ${p.blocksDone} of ${p.blockCount} MiB`).catch(() => undefined);
      }
    });
    signal?.removeEventListener('abort', cancelWrite);
    const writeMs = performance.now() - t0;
    record = await deps.inventory.updateCheckpoint(record.id, { state: 'complete', fileBytes: written.fileBytes });
    await deps.agent.finishFork(forkId);
    unpinPrepared(deps.pins, prepared);
    if (request.stop) {
      await ctx.progress(0.97, `powering ${vm.name} off`);
      const claimed = await deps.states.settle(vm.id, ['running', 'paused'], 'stopping', null);
      if (claimed.moved) {
        const { forced } = await deps.agent.stopVm(vm.id, 30_000).catch(() => ({ forced: true }));
        await deps.states.settle(vm.id, ['stopping'], 'stopped', forced ? 'suspended to a checkpoint (killed after the power-down timed out)' : 'suspended to a checkpoint', { runtime: null });
      }
    }
    await deps.collectGarbage().catch(() => undefined);
    return { checkpoint: record, stunMs: sw.stunMs, writeMs, fileBytes: written.fileBytes, storedPages: written.storedPages, gbPerSecond: record.memoryBytes / 1e9 / (writeMs / 1000) };
  } catch (caught) {
    signal?.removeEventListener('abort', cancelWrite);
    // A cancel surfaces as whatever the interrupted step threw (an abort); report it as the cancel.
    const err = signal?.aborted ? signal.reason : caught;
    deps.logger.warn({ vm: vm.name, err: (err as Error).message, cancelled: signal?.aborted ?? false }, 'checkpoint failed; rolling back');
    await deps.agent.abortFork(forkId).catch(() => undefined);
    if (record) {
      await deps.inventory.deleteCheckpoint(record.id).catch(() => undefined);
      await deps.agent.removeCheckpointFile({ path, id: record.id, createdAt: record.createdAt }).catch(() => undefined);
    }
    if (!switched) await settleUnswitched(deps, vm.id, 'checkpointing', err, 'checkpoint');
    unpinPrepared(deps.pins, prepared);
    await deps.collectGarbage().catch(() => undefined);
    throw err;
  }
}
