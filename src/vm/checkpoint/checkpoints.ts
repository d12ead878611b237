// Checkpoints and restore, as the engine serves them: a live checkpoint of a
// VM on its host (run-checkpoint.ts: a short stun, then the file is written
// while the VM runs), a restore of a checkpoint as a new VM with its own
// identity on the host that holds the file and its frozen disks (lazy by
// default: the VM runs before its memory is read, and the task follows the
// host's stream operation until the file is no longer needed), checkpoint
// files given by path (validated by their host), listing and deletion, and
// cancelling a checkpoint while it is written.
import { basename } from 'node:path';
import { AlreadyExistsError, IllegalStateError, NotFoundError, OffshootError, isValidName } from '../../common/index.ts';
import type { VmSpec } from '../../protocol/index.ts';
import { follow, newOperationId, runOperation } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import { applyIdentity, withNewIdentity } from '../identity.ts';
import { newTaskId, newVmId } from '../ids.ts';
import type { CheckpointRecord, TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { checkpointRequestSchema, restoreRequestSchema } from './checkpoint-requests.ts';
import { runCheckpoint } from './run-checkpoint.ts';

/** What a restore task journals: enough for a restarted controller to reattach to the host's stream, or remove the VM. */
export interface RestoreJournal {
  vmId: string;
  hostId: string;
  restoreOperationId: string;
  streamOperationId: string | null;
}

export class Checkpoints {
  /** Tasks that can be cancelled (checkpoints being written), by task id. */
  private readonly cancellers = new Map<string, { abort: AbortController; target: string }>();

  constructor(private readonly ctx: EngineContext) {}

  private async resolveVm(ref: string): Promise<VmRecord> {
    const vm = /^[0-9a-f-]{36}$/i.test(ref) ? await this.ctx.inventory.getVm(ref) : await this.ctx.inventory.findVmByName(ref);
    if (!vm) throw new NotFoundError('VM', ref);
    return vm;
  }

  /** A live checkpoint: a short stun, then the VM runs on while the file is written (see run-checkpoint.ts). */
  async checkpoint(ref: string, input: unknown = {}): Promise<{ vm: VmRecord; task?: TaskRecord }> {
    const request = parseRequest('checkpoint request', checkpointRequestSchema, input);
    const { id, name: vmName, hostId } = await this.resolveVm(ref);
    const name = request.name ?? `${vmName}-${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}`;
    if (await this.ctx.inventory.findCheckpoint(name)) throw new AlreadyExistsError('checkpoint', name);
    const agent = this.ctx.agentOf({ hostId });
    // The host decides where the file goes and refuses an existing file or a place outside its allowed roots.
    const target = await agent.planCheckpointFile({ name, ...(request.out ? { hostPath: request.out } : {}) });
    const { vm, previous } = await this.ctx.states.claimFrom(id, 'checkpoint', 'checkpointing');
    const controller = new AbortController();
    const task = await this.ctx.tasks.start('vm.checkpoint', vm, (taskCtx) => runCheckpoint({ ...this.ctx, agent }, { ...vm, state: previous }, { name, file: target.file, path: target.hostPath, stop: request.stop }, taskCtx, newTaskId(), controller.signal));
    this.cancellers.set(task.id, { abort: controller, target: vm.name });
    this.ctx.tasks.wait(task.id).catch(() => undefined).finally(() => this.cancellers.delete(task.id));
    return { vm: await this.resolveVm(id), task };
  }

  /**
   * Restores a checkpoint as a new VM with its own identity, on the host that holds the checkpoint. Lazy
   * (the default): the VM runs before its memory is read and the task goes on until the rest has streamed
   * in; eager: all memory is loaded before it runs. A restore that fails at any point leaves no VM.
   */
  async restore(input: unknown): Promise<{ vm: VmRecord; task?: TaskRecord }> {
    const request = parseRequest('restore request', restoreRequestSchema, input);
    const checkpoint = await this.findRestorable(request.checkpoint, request.host);
    const taken = new Set((await this.ctx.inventory.listVms()).map((v) => v.name));
    let name = request.name;
    if (name && taken.has(name)) throw new AlreadyExistsError('VM', name);
    for (let i = 1; !name; i++) if (!taken.has(`${checkpoint.vmName}-r${i}`)) name = `${checkpoint.vmName}-r${i}`;
    const vmName = name;
    const id = newVmId();
    const now = new Date().toISOString();
    const spec: VmSpec = withNewIdentity(checkpoint.spec, vmName);
    const record: VmRecord = { id, name: vmName, state: 'starting', stateReason: `restoring checkpoint ${checkpoint.name}`, hostId: checkpoint.hostId, spec, runtime: null, createdAt: now, updatedAt: now };
    const agent = this.ctx.agentOf(record);
    // A file from elsewhere names frozen disks no record protects: keep them from garbage collection while it restores.
    const pinned = checkpoint.id.startsWith('file:') ? checkpoint.spec.disks.map((d) => d.file).filter((p) => !this.ctx.pins.has(p)) : [];
    for (const p of pinned) this.ctx.pins.add(p);
    await this.ctx.inventory.insertVm(record);
    this.ctx.events.publish({ type: 'vm.created', vm: record, at: now });
    const journal: RestoreJournal = { vmId: id, hostId: checkpoint.hostId, restoreOperationId: newOperationId(), streamOperationId: request.mode === 'lazy' ? newOperationId() : null };
    const task = await this.ctx.tasks.start('vm.restore', record, async (taskCtx) => {
      try {
        await taskCtx.journal(journal);
        await taskCtx.progress(0.05, `loading ${checkpoint.path}`);
        await this.ctx.faults?.('restore.starting');
        const t0 = performance.now();
        const restored = await runOperation(agent, 'restoreVm', { operationId: journal.restoreOperationId, vmId: id, name: vmName, checkpoint: checkpoint.file, spec, mode: request.mode, ...(journal.streamOperationId ? { streamOperationId: journal.streamOperationId } : {}) });
        const runningMs = performance.now() - t0;
        const lazy = request.mode === 'lazy';
        const { vm } = await this.ctx.states.settle(id, ['starting'], 'running', `restored from checkpoint ${checkpoint.name}${lazy ? ' (lazily)' : ''}`, { runtime: restored.runtime, spec: restored.spec });
        await this.ctx.faults?.('restore.running');
        await taskCtx.progress(lazy ? 0.3 : 0.8, `${vmName} runs after ${runningMs.toFixed(0)} ms; customizing its identity`);
        const customize = await applyIdentity(agent, this.ctx.states, vm, { timeoutMs: 30_000 });
        if (!lazy || !restored.streamOperationId) return { vm, checkpoint: checkpoint.name, mode: request.mode, runningMs, customize, stream: null };
        // A lazy restore holds its task until the checkpoint is no longer needed (the VM runs meanwhile). If
        // the stream fails, the host has killed the VM and this throws why; the VM is then removed below.
        await taskCtx.progress(0.4, `${vmName} runs; streaming the rest of its memory from the checkpoint`);
        const stream = await this.followStream(restored.streamOperationId, agent, vmName, taskCtx);
        return { vm: await this.resolveVm(id), checkpoint: checkpoint.name, mode: request.mode, runningMs, customize, stream };
      } catch (err) {
        await this.removeRestoredVm(id, vmName);
        throw err;
      }
    });
    this.ctx.tasks.wait(task.id).catch(() => undefined).finally(() => pinned.forEach((p) => this.ctx.pins.delete(p)));
    return { vm: record, task };
  }

  /** Follows a lazy restore's stream operation on its host until the checkpoint is no longer needed. */
  followStream(operationId: string, agent: ReturnType<EngineContext['agentOf']>, vmName: string, taskCtx: { progress(f: number, m: string): Promise<void> }): Promise<unknown> {
    return follow<'restoreStream'>(agent, operationId, {
      onProgress: (event) => void taskCtx.progress(0.4 + 0.6 * event.progress, `${vmName} runs; ${event.message}`).catch(() => undefined),
    });
  }

  /** A restore that failed (or whose controller died) leaves no VM: its QEMU, files and record go. */
  async removeRestoredVm(vmId: string, vmName: string): Promise<void> {
    const vm = await this.ctx.inventory.getVm(vmId);
    if (!vm) return;
    const agent = this.ctx.agentOf(vm);
    await agent.killVm({ vmId }).catch(() => undefined);
    if (vm.runtime) await agent.killStray({ vmId, runtime: vm.runtime }).catch(() => undefined);
    await agent.deleteVmFiles({ vmId }).catch(() => undefined);
    await this.ctx.inventory.deleteVm(vmId);
    this.ctx.events.publish({ type: 'vm.deleted', vmId, name: vmName, at: new Date().toISOString() });
  }

  /**
   * Cancels a checkpoint being written: it rolls back as after a failure and ends failed with TASK_CANCELLED. One
   * running on another controller is asked through its task's row (its controller polls for that every second).
   */
  async cancel(taskId: string): Promise<TaskRecord> {
    const task = await this.ctx.tasks.get(taskId);
    if (this.cancelHere(taskId)) return this.ctx.tasks.wait(taskId);
    if (task.state !== 'running') throw new IllegalStateError(`task ${taskId}`, task.state, ['running'], 'cancel');
    if (task.kind !== 'vm.checkpoint') throw new OffshootError('TASK_NOT_CANCELLABLE', `task ${taskId} (${task.kind}) cannot be cancelled (or has no canceller on this controller)`, { id: taskId, kind: task.kind }, 409);
    await this.ctx.coordinator.store.leases.requestCancel(taskId);
    return this.ctx.tasks.wait(taskId);
  }

  private cancelHere(taskId: string): boolean {
    const running = this.cancellers.get(taskId);
    if (!running) return false;
    running.abort.abort(new OffshootError('TASK_CANCELLED', `vm.checkpoint of ${running.target} cancelled by request`, { id: taskId, kind: 'vm.checkpoint' }, 409));
    return true;
  }

  /** Cancel requests another controller wrote for checkpoints this one writes. */
  cancelRequested(taskIds: string[]): void {
    for (const id of taskIds) this.cancelHere(id);
  }

  /** Whether this controller writes a checkpoint that could be cancelled. */
  cancellable(): boolean {
    return this.cancellers.size > 0;
  }

  list(): Promise<CheckpointRecord[]> {
    return this.ctx.inventory.listCheckpoints();
  }

  /** A checkpoint by name or id, or a checkpoint file by absolute path on a host (validated there; id "file:PATH"). */
  async get(ref: string, hostRef?: string): Promise<CheckpointRecord> {
    const checkpoint = await this.ctx.inventory.findCheckpoint(ref);
    if (checkpoint) return checkpoint;
    if (ref.startsWith('/')) return this.fromFile(ref, hostRef);
    throw new NotFoundError('checkpoint', ref);
  }

  private async findRestorable(ref: string, hostRef?: string): Promise<CheckpointRecord> {
    const checkpoint = await this.get(ref, hostRef);
    if (checkpoint.state !== 'complete') throw new IllegalStateError(`checkpoint "${checkpoint.name}"`, checkpoint.state, ['complete'], 'restore');
    return checkpoint;
  }

  /**
   * A checkpoint file as a record: its host validates it with the strict reader and checks that the frozen
   * disks it names exist and pass the safe-image check (CHECKPOINT_CORRUPT, CHECKPOINT_VERSION,
   * CHECKPOINT_NOT_FOUND or CHECKPOINT_DISK_UNAVAILABLE otherwise).
   */
  private async fromFile(path: string, hostRef?: string): Promise<CheckpointRecord> {
    const host = hostRef ? await this.ctx.fleet.resolve(hostRef) : await this.ctx.fleet.resolve(this.ctx.fleet.localHostId ?? this.ctx.fleet.hosts()[0]?.id ?? 'local');
    const inspected = await this.ctx.fleet.agent(host.id).inspectCheckpoint({ source: { hostPath: path } });
    const { metadata } = inspected;
    const vmName = isValidName(metadata.vm.name) ? metadata.vm.name : 'restored';
    return { id: `file:${path}`, name: basename(path).replace(/\.ckpt$/, ''), vmId: metadata.vm.id, vmName, hostId: host.id, file: inspected.file, path: inspected.hostPath, state: 'complete', memoryBytes: inspected.memoryBytes, fileBytes: inspected.fileBytes, spec: metadata.spec, createdAt: metadata.createdAt };
  }

  async delete(ref: string): Promise<CheckpointRecord> {
    // Only a recorded checkpoint: a file Offshoot did not write is not deleted through it.
    const checkpoint = await this.ctx.inventory.findCheckpoint(ref);
    if (!checkpoint) throw new NotFoundError('checkpoint', ref);
    if (checkpoint.state === 'writing') throw new IllegalStateError(`checkpoint "${checkpoint.name}"`, checkpoint.state, ['complete', 'failed'], 'delete');
    await this.ctx.agentOf(checkpoint).removeCheckpoint({ file: checkpoint.file, checkpointId: checkpoint.id, createdAt: checkpoint.createdAt });
    await this.ctx.inventory.deleteCheckpoint(checkpoint.id);
    await this.ctx.collectGarbage(checkpoint.hostId);
    return checkpoint;
  }
}
