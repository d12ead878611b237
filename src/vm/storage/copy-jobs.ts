// Copy jobs: every copy of disk files (full clone, pool refill, disk move,
// disk seed, a template's placement on another host) is a persisted job that
// runs its files one after another as copy operations of the agent on the
// job's host (a worker process each there). Progress is recorded by the
// worker beside each target (which chunks are done), and summarised here in
// the inventory.
// A job runs as a task (kind `copy-job`): one controller of the fleet at a
// time, with the task's lease; the agent operation copying the current file
// is recorded in the job, so a controller taking the task over (its
// controller died) reattaches to the same operation and the job goes on,
// exactly once. pause = stop the worker after its chunk in flight; resume = a
// new task goes on from the progress file; reassign = the hand-over between
// hosts (handover.ts decides when and to which host): the worker stops after
// its chunk in flight and one on the new host goes on from the same progress
// file; cancel = stop and remove what was copied. A file whose source is on
// another host is read from that host's file server (copy-file-op.ts). Pause,
// cancel and a hand-over reach a job running on another controller through
// its task's cancel request. A controller that shuts down hands its
// jobs over (their tasks stay running, unleased) and the next controller to
// look goes on with them. What a finished job means (a clone's disks, a pool
// slot) is up to the handler registered for its purpose. A job's sources are
// pinned against garbage collection (holder `copy-job:<id>`) until it
// succeeds or is cancelled.
import { randomBytes } from 'node:crypto';
import { NotFoundError, OffshootError, sleep, toOffshootError } from '../../common/index.ts';
import { newOperationId } from '../../protocol/index.ts';
import type { TaskRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import { HAND_OVER } from '../tasks.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { runCopyFile } from './copy-file-op.ts';
import { CopyJobStateError } from './errors.ts';
import type { CopyFile, CopyJobHistoryEntry, CopyJobProgress, CopyJobRecord, CopyPurpose } from './records.ts';
import { isCopyJobDone } from './records.ts';

export interface CopyJobHandler {
  /** Turns the copied files into what the job was for (register disks, create the clone...). */
  succeeded(job: CopyJobRecord): Promise<void>;
  /** Called after a cancel removed the copied files (and after a failure that will not be resumed). */
  abandoned(job: CopyJobRecord): Promise<void>;
}

/** The task kind of a copy job's run. */
export const COPY_JOB_TASK = 'copy-job';

const PROGRESS_WRITE_MS = 500;

/** How an agent answers for a copy it no longer runs: it restarted meanwhile, or forgot it. */
const LOST_OPERATION = ['TASK_INTERRUPTED', 'OPERATION_NOT_FOUND'];

/** Why a job's worker was stopped: the job is then paused, cancelled, left running for the next controller, or handed over. */
type Why = 'pause' | 'cancel' | 'close' | 'handover';

interface Run {
  abort: AbortController;
  done: Promise<CopyJobRecord>;
  why?: Why;
  taskId: string;
}

function pinHolder(jobId: string): string {
  return `copy-job:${jobId}`;
}

function label(job: CopyJobRecord): string {
  const p = job.purpose;
  switch (p.kind) {
    case 'clone':
      return `clone ${p.cloneName}`;
    case 'pool':
      return `pool slot ${p.slot}`;
    case 'move':
      return `move of disk ${p.diskId}`;
    case 'seed':
      return `seed of disk ${p.diskId}`;
    case 'place':
      return `placement of template ${p.template}`;
  }
}

export class CopyJobs {
  private readonly active = new Map<string, Run>();
  private readonly handlers = new Map<CopyPurpose['kind'], CopyJobHandler>();
  private closing = false;

  constructor(private readonly deps: StorageDeps) {
    deps.engine.registerRecovery(COPY_JOB_TASK, (task) => this.takeOver(task));
    deps.engine.watchCancels({ cancellable: () => this.active.size > 0, cancelRequested: (ids) => void this.requested(ids) });
  }

  handle(kind: CopyPurpose['kind'], handler: CopyJobHandler): void {
    this.handlers.set(kind, handler);
  }

  async get(id: string): Promise<CopyJobRecord> {
    const job = await this.deps.storageInventory.getCopyJob(id);
    if (!job) throw new NotFoundError('copy job', id);
    return job;
  }

  list(): Promise<CopyJobRecord[]> {
    return this.deps.storageInventory.listCopyJobs();
  }

  async submit(purpose: CopyPurpose, datastore: string, hostId: string, files: CopyFile[]): Promise<CopyJobRecord> {
    const now = new Date().toISOString();
    const job: CopyJobRecord = {
      id: `job-${randomBytes(5).toString('hex')}`,
      purpose,
      state: 'queued',
      datastore,
      hostId,
      history: [],
      files,
      progress: { fileIndex: 0, bytesDone: 0, bytesTotal: 0, chunksDone: 0, chunksTotal: 0, chunksCopied: 0, workers: 0 },
      error: null,
      createdAt: now,
      updatedAt: now,
      taskId: null,
      operationId: null,
      request: null,
    };
    // The sources (frozen bases) must outlive the copy: keep garbage collection off them, on every controller.
    await this.deps.engine.coordinator.store.pins.add(pinHolder(job.id), files.map((f) => f.source), null);
    await this.deps.storageInventory.insertCopyJob(job);
    this.publish(job);
    await this.launch(job.id);
    return job;
  }

  /** Resolves when the job has finished (succeeded, failed, cancelled) or been paused, on whichever controller runs it. */
  async wait(id: string): Promise<CopyJobRecord> {
    const run = this.active.get(id);
    if (run) return run.done;
    for (;;) {
      const job = await this.get(id);
      if (job.state !== 'running' && job.state !== 'queued') return job;
      const local = this.active.get(id);
      if (local) return local.done;
      await sleep(200);
    }
  }

  async pause(id: string): Promise<CopyJobRecord> {
    const job = await this.get(id);
    if (job.state !== 'running') throw new CopyJobStateError(id, job.state, 'pause');
    const run = this.active.get(id);
    if (!run) return this.askOwner(job, 'pause');
    run.why = 'pause';
    run.abort.abort();
    return run.done;
  }

  async resume(id: string): Promise<CopyJobRecord> {
    const job = await this.get(id);
    if (job.state !== 'paused' && job.state !== 'failed') throw new CopyJobStateError(id, job.state, 'resume');
    await this.launch(id, true);
    return this.get(id);
  }

  async cancel(id: string): Promise<CopyJobRecord> {
    let job = await this.get(id);
    // A failed job can be cancelled too: that discards what it copied.
    if (job.state === 'succeeded' || job.state === 'cancelled') throw new CopyJobStateError(id, job.state, 'cancel');
    const run = this.active.get(id);
    if (run) {
      run.why = 'cancel';
      run.abort.abort();
      job = await run.done;
    } else if (job.state === 'running') {
      job = await this.askOwner(job, 'cancel');
    }
    for (const file of job.files) await agentOn(this.deps, job.hostId).discardCopy({ target: file.target });
    const cancelled = await this.update(id, { state: 'cancelled', operationId: null, request: null });
    await this.deps.engine.coordinator.store.pins.remove(pinHolder(id));
    await this.handlers.get(job.purpose.kind)?.abandoned(cancelled).catch((err: unknown) => this.deps.logger.error({ err, jobId: id }, 'cannot clean up after a cancelled copy job'));
    return cancelled;
  }

  /** A job another controller runs: ask it (through the job and its task's cancel request), and wait until it stopped. */
  private async askOwner(job: CopyJobRecord, request: 'pause' | 'cancel'): Promise<CopyJobRecord> {
    await this.update(job.id, { request });
    if (job.taskId) await this.deps.engine.coordinator.store.leases.requestCancel(job.taskId);
    return this.wait(job.id);
  }

  /** Waits until a job's task has been recorded as ended (its runner writes the end after the work returned). */
  private async taskEnded(taskId: string): Promise<void> {
    for (let i = 0; i < 600; i++) {
      if ((await this.deps.inventory.getTask(taskId))?.state !== 'running') return;
      await sleep(50);
    }
  }

  /** Cancel requests for jobs this controller runs: stop each as its job says (pause or cancel). */
  private async requested(taskIds: string[]): Promise<void> {
    for (const [id, run] of this.active) {
      if (!taskIds.includes(run.taskId) || run.why) continue;
      const job = await this.get(id).catch(() => undefined);
      run.why = job?.request === 'cancel' ? 'cancel' : 'pause';
      run.abort.abort();
    }
  }

  /**
   * The hand-over's mechanics: stops the job's worker after its chunk in flight (if one runs, here or on another
   * controller), records the new host and a hand-over line in the history, and starts a worker there unless the job
   * is paused; it goes on from the progress file. Which host, and whether it may, is handover.ts's to decide.
   */
  async reassign(id: string, hostId: string, reason: string): Promise<CopyJobRecord> {
    const run = this.active.get(id);
    let wasRunning = false;
    if (run) {
      run.why = 'handover';
      run.abort.abort();
      await run.done.catch(() => undefined);
      await this.taskEnded(run.taskId);
    } else {
      const running = await this.get(id);
      // Another controller runs it: ask it to stop (it pauses the job), then go on from here on the new host.
      if (running.state === 'running' && running.taskId && (await this.deps.inventory.getTask(running.taskId))?.state === 'running') {
        wasRunning = (await this.askOwner(running, 'pause')).state === 'paused';
        await this.taskEnded(running.taskId);
      }
    }
    const job = await this.get(id);
    if (isCopyJobDone(job.state) && job.state !== 'failed') throw new CopyJobStateError(id, job.state, 'hand over');
    const line: CopyJobHistoryEntry = { hostId, at: new Date().toISOString(), chunksCopied: 0, handedOverFrom: job.hostId, reason, fileIndex: job.progress.fileIndex, bytesDoneBefore: job.progress.bytesDone };
    const requeue = job.state === 'failed' || wasRunning;
    const moved = await this.update(id, { hostId, history: [...job.history, line], operationId: null, ...(requeue ? { state: 'queued' as const, error: null } : {}) });
    if (moved.state !== 'paused') await this.launch(id, true);
    return this.get(id);
  }

  /**
   * After a controller start: jobs left running or queued that no running task carries (stored before jobs were
   * tasks, or never launched) start now. Jobs whose task runs on are taken over with their task.
   */
  async recover(): Promise<string[]> {
    const resumed: string[] = [];
    for (const job of await this.list()) {
      if (job.state !== 'running' && job.state !== 'queued') continue;
      if (await this.launch(job.id)) resumed.push(job.id);
    }
    return resumed;
  }

  /** Stops every worker after its chunk in flight; the jobs stay running, handed over to the next controller. */
  async close(): Promise<void> {
    this.closing = true;
    for (const run of this.active.values()) {
      run.why = 'close';
      run.abort.abort();
    }
    await Promise.allSettled([...this.active.values()].map((r) => r.done));
  }

  /** A copy-job task whose controller died: go on with the job, reattaching to the copy in flight. */
  private async takeOver(task: TaskRecord): Promise<string> {
    const job = await this.deps.storageInventory.getCopyJob(task.targetId);
    if (!job) return 'the copy job is gone';
    if (job.state !== 'running' && job.state !== 'queued') return `the copy job is ${job.state}`;
    if (this.closing || this.active.has(job.id)) return 'the copy job runs here already';
    this.deps.engine.tasks.resume(task, (ctx) => this.work(job.id, ctx));
    return 'resumed';
  }

  /**
   * Starts a task that runs the job, unless a running task carries it already (on this controller or another).
   * Under the job's claim, so two controllers never both start it. Returns whether it started one.
   */
  private async launch(id: string, again = false): Promise<boolean> {
    if (this.active.has(id) || this.closing) return false;
    const { coordinator, tasks } = this.deps.engine;
    try {
      return await coordinator.withClaim(`copy-job:${id}`, 'launch', { waitMs: 0 }, async () => {
        const job = await this.get(id);
        if (isCopyJobDone(job.state) && !(again && job.state === 'failed')) return false;
        if (job.taskId && (await this.deps.inventory.getTask(job.taskId))?.state === 'running') return false;
        const task = await tasks.start(COPY_JOB_TASK, { id: job.id, name: label(job) }, (ctx) => this.work(id, ctx));
        // Recorded before the claim goes, so another controller's launch sees the job carried.
        await this.update(id, { taskId: task.id });
        return true;
      });
    } catch (err) {
      if (err instanceof OffshootError && err.code === 'BUSY') return false;
      throw err;
    }
  }

  /** A copy-job task's work: the run; a job that failed fails its task; one handed over leaves its task running. */
  private async work(id: string, ctx: TaskContext): Promise<unknown> {
    const abort = new AbortController();
    const run: Run = { abort, done: Promise.resolve(undefined as unknown as CopyJobRecord), taskId: ctx.taskId };
    run.done = this.run(id, ctx, abort.signal, () => run.why);
    this.active.set(id, run);
    try {
      const job = await run.done;
      if (run.why === 'close') return HAND_OVER;
      if (run.why === 'handover') return { job: id, state: job.state, handedOver: true };
      if (job.state === 'failed') throw new OffshootError(job.error?.code ?? 'TASK_FAILED', job.error?.message ?? `copy job ${id} failed`, { ...(job.error?.details ?? {}), jobId: id }, 500);
      return { job: id, state: job.state };
    } finally {
      this.active.delete(id);
    }
  }

  private async run(id: string, ctx: TaskContext, signal: AbortSignal, why: () => Why | undefined): Promise<CopyJobRecord> {
    // Writes stop once another controller took the task over (this one was cut off): it records the job from then on.
    const update = (patch: Partial<CopyJobRecord>) => {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      return this.update(id, patch);
    };
    let job = await update({ state: 'running', error: null, taskId: ctx.taskId, request: null });
    try {
      for (let i = job.progress.fileIndex; i < job.files.length; i++) {
        const file = job.files[i] as CopyFile;
        let progress: CopyJobProgress = { ...job.progress, fileIndex: i, workers: job.progress.workers + 1 };
        // A copy in flight when the job's last controller stopped is followed again, not started twice.
        const reattached = job.operationId !== null;
        let operationId = job.operationId ?? newOperationId();
        job = await update({ progress, operationId });
        await this.deps.faults?.('copy.file');
        let lastWrite = 0;
        const copy = (opId: string) =>
          runCopyFile(this.deps, job, file, {
            operationId: opId,
            signal,
            onProgress: (e) => {
              const p = (e.data ?? {}) as { bytesDone?: number; bytesTotal?: number; chunksDone?: number; chunksTotal?: number };
              progress = { ...progress, bytesDone: p.bytesDone ?? progress.bytesDone, bytesTotal: p.bytesTotal ?? progress.bytesTotal, chunksDone: p.chunksDone ?? progress.chunksDone, chunksTotal: p.chunksTotal ?? progress.chunksTotal };
              if (Date.now() - lastWrite < PROGRESS_WRITE_MS) return;
              lastWrite = Date.now();
              void Promise.resolve()
                .then(() => update({ progress }))
                .catch(() => undefined);
              void ctx.progress((i + e.progress) / job.files.length, `${label(job)}: file ${i + 1} of ${job.files.length}`).catch(() => undefined);
            },
          });
        let result: Awaited<ReturnType<typeof copy>>;
        try {
          result = await copy(operationId);
        } catch (err) {
          // The copy followed again ended with its agent (an in-process host restarts with its controller): a new
          // worker goes on from the target's progress file.
          if (!reattached || signal.aborted || !(err instanceof OffshootError) || !LOST_OPERATION.includes(err.code)) throw err;
          this.deps.logger.info({ jobId: id, operationId, code: err.code }, 'the copy in flight ended with its agent; a new worker goes on from its progress');
          operationId = newOperationId();
          job = await update({ operationId });
          result = await copy(operationId);
        }
        progress = { ...progress, chunksCopied: progress.chunksCopied + result.chunksCopied };
        job = await update({ history: [...job.history, { hostId: job.hostId, at: new Date().toISOString(), chunksCopied: result.chunksCopied, bytesCopied: result.bytesCopied, fileIndex: i }] });
        this.deps.logger.info({ jobId: id, file: file.target, state: result.state, chunksCopied: result.chunksCopied, chunksSkipped: result.chunksSkipped, bytes: result.bytesCopied, workerMs: Math.round(result.elapsedMs) }, 'copy worker ended');
        if (result.state === 'stopped') {
          const reason = why();
          // Paused (a cancel removes the files next), or left running: for the next controller, or the host it is handed to.
          job = await update({ progress, operationId: null, state: reason === 'close' || reason === 'handover' ? 'running' : 'paused' });
          return job;
        }
        job = await update({ progress: { ...progress, fileIndex: i + 1 }, operationId: null });
      }
      await this.handlers.get(job.purpose.kind)?.succeeded(job);
      job = await update({ state: 'succeeded' });
      await this.deps.engine.coordinator.store.pins.remove(pinHolder(id)).catch((err: unknown) => this.deps.logger.warn({ err, jobId: id }, 'cannot drop the pins of a finished copy job'));
      return job;
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      const error = toOffshootError(err);
      // Handed over while its host did not answer: the job goes on elsewhere; this worker's end is not the job's.
      if (why() === 'handover') {
        this.deps.logger.info({ jobId: id, code: error.code, err: error.message }, 'copy worker left behind by a hand-over');
        return await this.get(id);
      }
      this.deps.logger.warn({ jobId: id, code: error.code, err: error.message }, 'copy job failed');
      // A resume starts the copy afresh from its progress file (the failed operation cannot be followed again).
      return await this.update(id, { state: 'failed', error: error.toJSON(), operationId: null });
    }
  }

  private async update(id: string, patch: Partial<CopyJobRecord>): Promise<CopyJobRecord> {
    const job = await this.deps.storageInventory.updateCopyJob(id, patch);
    this.publish(job);
    return job;
  }

  private publish(job: CopyJobRecord): void {
    this.deps.engine.events.publish({ type: 'copy-job', job, at: job.updatedAt });
  }
}
