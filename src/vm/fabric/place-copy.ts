// The copy phase of a template placement (place.ts): the template's files and
// its memory travel to the destination as copy jobs of purpose `place`
// (storage/copy-jobs.ts), run by the destination's copy worker, each file read
// through a one-file server on the source host (copy-file-op.ts): chunked,
// verified, resumable from its progress file, listed by `job list/show`,
// paused and resumed there, taken over with its task when its controller
// dies. Two jobs, so the slow part of each overlaps the other: the files job
// (copied bases and boot files) starts at once; meanwhile the source exports
// its host template into a checkpoint file (named by a checkpoint id of its
// own), and a memory job carries that file. followJobs turns the jobs'
// progress into the placement task's and stops at the first job that fails or
// is cancelled; the placement's cancel cancels its jobs. dropPlaceJobs is the
// undo: every unfinished job of the placement cancelled (its copies, progress
// files and locks removed; its row ends `cancelled`), the copies of its
// finished ones discarded, the exported file removed from the source.
import { OffshootError, sleep } from '../../common/index.ts';
import type { AgentClient, Locator } from '../../protocol/index.ts';
import { locatorName } from '../../protocol/index.ts';
import type { CopyFile, CopyJobRecord, CopyJobs, PlacedMemory } from '../storage/index.ts';
import { isCopyJobDone } from '../storage/index.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import type { CarryPlan } from './place-plan.ts';

export type PlaceJobPurpose = Extract<CopyJobRecord['purpose'], { kind: 'place' }>;

export function jobsOf(deps: FabricDeps): CopyJobs {
  if (!deps.jobs) throw new OffshootError('INTERNAL', 'this controller has no copy jobs to carry a template', {}, 500);
  return deps.jobs;
}

/** Submits a copy job of `files` (each read from `sourceHostId`) on `hostId`, for the placement `purpose`. */
export function submitPlaceJob(deps: FabricDeps, purpose: PlaceJobPurpose, hostId: string, sourceHostId: string, files: Array<{ from: Locator; to: Locator }>): Promise<CopyJobRecord> {
  const copies: CopyFile[] = files.map((f) => ({ source: f.from, target: f.to, sourceHostId }));
  // No datastore: the copies land in the host's own folder (bases and the template's folder).
  return jobsOf(deps).submit(purpose, '', hostId, copies);
}

/** Removes an exported checkpoint file (only a file that names its checkpoint id), stopping its writer first if it may still run. */
export async function dropExport(deps: FabricDeps, memory: PlacedMemory & { operationId?: string }, stopWriter: boolean): Promise<void> {
  const agent: AgentClient = agentOn(deps, memory.hostId);
  if (stopWriter && memory.operationId) {
    await agent.cancelOperation({ operationId: memory.operationId }).catch(() => undefined);
    await agent.getOperation({ operationId: memory.operationId, afterSeq: 0, waitMs: 30_000, until: 'end' }).catch(() => undefined);
  }
  await agent.removeCheckpoint({ file: memory.file, checkpointId: memory.checkpointId, createdAt: memory.createdAt });
}

/** Bytes of a job's files, as the plan counts them (its progress is weighted by them). */
function weights(job: CopyJobRecord, plan: CarryPlan): number[] {
  return job.files.map((f) => plan.copies.find((c) => c.to === f.target)?.bytes ?? plan.memoryBytes);
}

/** What of a job is done, in the plan's bytes. */
function doneBytes(job: CopyJobRecord, plan: CarryPlan): number {
  const w = weights(job, plan);
  if (job.state === 'succeeded') return w.reduce((n, x) => n + x, 0);
  const i = job.progress.fileIndex;
  const current = i < w.length && job.progress.bytesTotal > 0 ? (w[i] ?? 0) * Math.min(1, job.progress.bytesDone / job.progress.bytesTotal) : 0;
  return w.slice(0, i).reduce((n, x) => n + x, 0) + current;
}

function jobFailure(job: CopyJobRecord): OffshootError {
  if (job.state === 'cancelled') return new OffshootError('TASK_CANCELLED', `copy job ${job.id} was cancelled`, { jobId: job.id }, 409);
  return new OffshootError(job.error?.code ?? 'TASK_FAILED', job.error?.message ?? `copy job ${job.id} failed`, { ...(job.error?.details ?? {}), jobId: job.id }, 502);
}

/**
 * Follows the placement's jobs until all succeeded: the task's progress from theirs (`report(fraction 0..1,
 * message)`); throws the error of the first that failed or was cancelled, and stops when `stop` aborts (the caller
 * cancels the jobs then, or leaves them to the task's next owner).
 */
export async function followJobs(deps: FabricDeps, ids: string[], plan: CarryPlan, hostName: string, stop: AbortSignal, report: (fraction: number, message: string, detail: Record<string, unknown>) => void): Promise<CopyJobRecord[]> {
  const jobs = jobsOf(deps);
  const total = plan.copies.reduce((n, c) => n + c.bytes, 0) + plan.memoryBytes;
  let wake: () => void = () => undefined;
  const unsubscribe = deps.engine.events.subscribe((event) => {
    if (event.type === 'copy-job' && ids.includes(event.job.id)) wake();
  });
  const stopped = () => wake();
  stop.addEventListener('abort', stopped);
  try {
    for (;;) {
      if (stop.aborted) throw stop.reason;
      const list = await Promise.all(ids.map((id) => jobs.get(id)));
      const ended = list.find((j) => j.state === 'failed' || j.state === 'cancelled');
      if (ended) throw jobFailure(ended);
      if (list.every((j) => j.state === 'succeeded')) return list;
      const paused = list.find((j) => j.state === 'paused');
      const current = list.find((j) => j.state === 'running' || j.state === 'queued');
      const file = current?.files[Math.min(current.progress.fileIndex, current.files.length - 1)];
      const message = paused ? `copy job ${paused.id} is paused (job resume ${paused.id} goes on)` : `copying ${file ? locatorName(file.target) : 'the template files'} to host ${hostName} (copy job ${current?.id ?? ids.join(', ')})`;
      report(list.reduce((n, j) => n + doneBytes(j, plan), 0) / Math.max(1, total), message, { copyJobs: ids });
      await Promise.race([new Promise<void>((r) => (wake = r)), sleep(1_000)]);
    }
  } finally {
    unsubscribe();
    stop.removeEventListener('abort', stopped);
  }
}

/** Bytes each file of the plan moved (from the jobs' histories), and those of the memory file. */
export function movedBytes(jobs: CopyJobRecord[], plan: CarryPlan): { copied: Array<{ from: string; to: string; bytes: number }>; memoryFileBytes: number } {
  const moved = new Map<string, number>();
  for (const job of jobs) for (const line of job.history) if (line.fileIndex !== undefined && !line.handedOverFrom) moved.set(job.files[line.fileIndex]?.target ?? '', (moved.get(job.files[line.fileIndex]?.target ?? '') ?? 0) + (line.bytesCopied ?? 0));
  const memory = jobs.flatMap((j) => j.files).find((f) => !plan.copies.some((c) => c.to === f.target));
  return { copied: plan.copies.map((c) => ({ from: c.from, to: c.to, bytes: moved.get(c.to) ?? 0 })), memoryFileBytes: memory ? (moved.get(memory.target) ?? 0) : 0 };
}

/**
 * The undo of a placement's copies on `hostId`: its jobs (purpose `place`, this template, made by task `taskId`;
 * without a task id only the unfinished ones) cancelled, or their copies discarded once finished, and the exported
 * memory files they name removed from their source. Best effort: what is left is logged (garbage collection takes
 * bases nobody pins).
 */
export async function dropPlaceJobs(deps: FabricDeps, templateId: string, hostId: string, taskId: string | null): Promise<void> {
  if (!deps.jobs) return;
  const jobs = deps.jobs;
  const mine = (await jobs.list()).filter((j) => j.purpose.kind === 'place' && j.purpose.templateId === templateId && j.hostId === hostId && (taskId ? j.purpose.taskId === taskId : !isCopyJobDone(j.state)));
  const agent = agentOn(deps, hostId);
  for (const job of mine) {
    try {
      if (job.state === 'succeeded') for (const f of job.files) await agent.discardCopy({ target: f.target });
      else if (job.state !== 'cancelled') await jobs.cancel(job.id);
    } catch (err) {
      deps.logger.warn({ err, jobId: job.id }, 'cannot undo a copy job of a placement; garbage collection takes its bases');
    }
    const memory = (job.purpose as PlaceJobPurpose).memory;
    if (memory) await dropExport(deps, memory, false).catch((err: unknown) => deps.logger.warn({ err, file: memory.file }, 'cannot remove the exported template file; it goes with the template'));
  }
}
