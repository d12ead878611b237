// Copy jobs: every copy of disk files (full clone, pool refill, disk move) is
// a persisted job that runs its files one after another as copy operations of
// the agent on the job's host (a worker process each there). Progress is recorded by the worker beside each
// target (which chunks are done), and summarised here in the inventory.
// pause = stop the worker after its chunk in flight; resume = a new worker
// goes on from the progress file; reassign = the hand-over (handover.ts
// decides when and to which host): the worker stops after its chunk in flight
// and one on the new host goes on from the same progress file; cancel = stop
// and remove what was copied. A file whose source is on another host is read
// from that host's file server (copy-file-op.ts). After a daemon restart, jobs that were running resume by
// themselves. What a finished job means (a clone's disks, a pool slot) is up
// to the handler registered for its purpose.
import { randomBytes } from 'node:crypto';
import { NotFoundError, toOffshootError } from '../../common/index.ts';
import { runCopyFile } from './copy-file-op.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { CopyJobStateError } from './errors.ts';
import type { CopyFile, CopyJobHistoryEntry, CopyJobProgress, CopyJobRecord, CopyPurpose } from './records.ts';
import { isCopyJobDone } from './records.ts';

export interface CopyJobHandler {
  /** Turns the copied files into what the job was for (register disks, create the clone...). */
  succeeded(job: CopyJobRecord): Promise<void>;
  /** Called after a cancel removed the copied files (and after a failure that will not be resumed). */
  abandoned(job: CopyJobRecord): Promise<void>;
}

const PROGRESS_WRITE_MS = 500;

/** Why a job's worker was stopped: the job is then paused, cancelled, left running for the next daemon, or handed over. */
type StopReason = 'pause' | 'cancel' | 'close' | 'handover';

export class CopyJobs {
  private readonly active = new Map<string, { abort: AbortController; done: Promise<CopyJobRecord>; why?: StopReason }>();
  private readonly handlers = new Map<CopyPurpose['kind'], CopyJobHandler>();
  private closing = false;

  constructor(private readonly deps: StorageDeps) {}

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
    };
    await this.deps.storageInventory.insertCopyJob(job);
    this.publish(job);
    this.launch(job.id);
    return job;
  }

  /** Resolves when the job has finished (succeeded, failed, cancelled) or been paused. */
  async wait(id: string): Promise<CopyJobRecord> {
    const run = this.active.get(id);
    if (run) return run.done;
    return this.get(id);
  }

  async pause(id: string): Promise<CopyJobRecord> {
    const job = await this.get(id);
    const run = this.active.get(id);
    if (!run || job.state !== 'running') throw new CopyJobStateError(id, job.state, 'pause');
    run.why = 'pause';
    run.abort.abort();
    return run.done;
  }

  async resume(id: string): Promise<CopyJobRecord> {
    const job = await this.get(id);
    if (job.state !== 'paused' && job.state !== 'failed') throw new CopyJobStateError(id, job.state, 'resume');
    this.launch(id);
    return this.get(id);
  }

  async cancel(id: string): Promise<CopyJobRecord> {
    const job = await this.get(id);
    // A failed job can be cancelled too: that discards what it copied.
    if (job.state === 'succeeded' || job.state === 'cancelled') throw new CopyJobStateError(id, job.state, 'cancel');
    const run = this.active.get(id);
    if (run) {
      run.why = 'cancel';
      run.abort.abort();
      await run.done;
    }
    for (const file of job.files) await agentOn(this.deps, job.hostId).discardCopy({ target: file.target });
    const cancelled = await this.update(id, { state: 'cancelled' });
    await this.handlers.get(job.purpose.kind)?.abandoned(cancelled).catch((err: unknown) => this.deps.logger.error({ err, jobId: id }, 'cannot clean up after a cancelled copy job'));
    return cancelled;
  }

  /**
   * The hand-over's mechanics: stops the job's worker after its chunk in flight (if one runs), records the
   * new host and a hand-over line in the history, and starts a worker there unless the job is paused; it goes
   * on from the progress file. Which host, and whether it may, is handover.ts's to decide.
   */
  async reassign(id: string, hostId: string, reason: string): Promise<CopyJobRecord> {
    const run = this.active.get(id);
    if (run) {
      run.why = 'handover';
      run.abort.abort();
      await run.done.catch(() => undefined);
    }
    const job = await this.get(id);
    if (isCopyJobDone(job.state) && job.state !== 'failed') throw new CopyJobStateError(id, job.state, 'hand over');
    const line: CopyJobHistoryEntry = { hostId, at: new Date().toISOString(), chunksCopied: 0, handedOverFrom: job.hostId, reason, fileIndex: job.progress.fileIndex, bytesDoneBefore: job.progress.bytesDone };
    const moved = await this.update(id, { hostId, history: [...job.history, line], ...(job.state === 'failed' ? { state: 'queued' as const, error: null } : {}) });
    if (moved.state !== 'paused') this.launch(id);
    return this.get(id);
  }

  /** Restarts jobs a previous daemon left running or queued; they go on from their progress files. */
  async recover(): Promise<string[]> {
    const resumed: string[] = [];
    for (const job of await this.list()) {
      if (job.state === 'running' || job.state === 'queued') {
        this.launch(job.id);
        resumed.push(job.id);
      }
    }
    return resumed;
  }

  /** Stops every worker after its chunk in flight; the jobs stay 'running' for the next daemon. */
  async close(): Promise<void> {
    this.closing = true;
    for (const run of this.active.values()) {
      run.why = 'close';
      run.abort.abort();
    }
    await Promise.allSettled([...this.active.values()].map((r) => r.done));
  }

  private launch(id: string): void {
    if (this.active.has(id) || this.closing) return;
    const abort = new AbortController();
    const entry: { abort: AbortController; done: Promise<CopyJobRecord>; why?: StopReason } = { abort, done: Promise.resolve(undefined as unknown as CopyJobRecord) };
    entry.done = this.run(id, abort.signal, () => entry.why).finally(() => this.active.delete(id));
    // Nobody may await a job started in the background: log a failure to record its end instead of leaving it unhandled.
    entry.done.catch((err: unknown) => this.deps.logger.error({ err, jobId: id }, 'copy job bookkeeping failed'));
    this.active.set(id, entry);
  }

  private async run(id: string, signal: AbortSignal, why: () => StopReason | undefined): Promise<CopyJobRecord> {
    let job = await this.update(id, { state: 'running', error: null });
    // The sources (frozen bases) must outlive the copy: keep garbage collection off them.
    const pins = job.files.map((f) => f.source);
    for (const p of pins) this.deps.engine.pins.add(p);
    try {
      for (let i = job.progress.fileIndex; i < job.files.length; i++) {
        const file = job.files[i] as CopyFile;
        let progress: CopyJobProgress = { ...job.progress, fileIndex: i, workers: job.progress.workers + 1 };
        job = await this.update(id, { progress });
        await this.deps.faults?.('copy.file');
        let lastWrite = 0;
        const result = await runCopyFile(
          this.deps,
          job,
          file,
          {
            signal,
            onProgress: (e) => {
              const p = (e.data ?? {}) as { bytesDone?: number; bytesTotal?: number; chunksDone?: number; chunksTotal?: number };
              progress = { ...progress, bytesDone: p.bytesDone ?? progress.bytesDone, bytesTotal: p.bytesTotal ?? progress.bytesTotal, chunksDone: p.chunksDone ?? progress.chunksDone, chunksTotal: p.chunksTotal ?? progress.chunksTotal };
              if (Date.now() - lastWrite < PROGRESS_WRITE_MS) return;
              lastWrite = Date.now();
              void this.update(id, { progress }).catch(() => undefined);
            },
          },
        );
        progress = { ...progress, chunksCopied: progress.chunksCopied + result.chunksCopied };
        job = await this.update(id, { history: [...job.history, { hostId: job.hostId, at: new Date().toISOString(), chunksCopied: result.chunksCopied, bytesCopied: result.bytesCopied, fileIndex: i }] });
        this.deps.logger.info({ jobId: id, file: file.target, state: result.state, chunksCopied: result.chunksCopied, chunksSkipped: result.chunksSkipped, bytes: result.bytesCopied, workerMs: Math.round(result.elapsedMs) }, 'copy worker ended');
        if (result.state === 'stopped') {
          const reason = why();
          // Paused (a cancel removes the files next), or left running: for the next daemon, or the host it is handed to.
          job = await this.update(id, { progress, state: reason === 'pause' ? 'paused' : reason === 'cancel' ? 'paused' : 'running' });
          return job;
        }
        job = await this.update(id, { progress: { ...progress, fileIndex: i + 1 } });
      }
      await this.handlers.get(job.purpose.kind)?.succeeded(job);
      return await this.update(id, { state: 'succeeded' });
    } catch (err) {
      const error = toOffshootError(err);
      // Handed over while its host did not answer: the job goes on elsewhere; this worker's end is not the job's.
      if (why() === 'handover') {
        this.deps.logger.info({ jobId: id, code: error.code, err: error.message }, 'copy worker left behind by a hand-over');
        return await this.get(id);
      }
      this.deps.logger.warn({ jobId: id, code: error.code, err: error.message }, 'copy job failed');
      return await this.update(id, { state: 'failed', error: error.toJSON() });
    } finally {
      // Pools keep their sources pinned for as long as they exist.
      const pooled = new Set((await this.deps.storageInventory.listPools()).flatMap((pool) => pool.sourceFiles.flatMap((s) => s.chain.map((c) => c.file))));
      for (const p of pins) if (!pooled.has(p)) this.deps.engine.pins.delete(p);
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
