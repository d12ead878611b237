// Copy jobs handed between hosts (US11595464B2: a network file copy moved
// between hosts). `job move ID --to HOST`: the worker on the first host stops
// after its chunk in flight, records it, and a worker on the new host goes on
// from the same progress file (so at most the chunk in flight is copied
// twice); the job's history shows both hosts and the hand-over between them.
// The same happens by itself when a host is drained (its running and paused
// jobs) or becomes unreachable (its jobs whose worker was lost with it).
//
// A hand-over is checked before anything stops: the new host must be ready and
// see every file the rest of the job touches: each target's datastore, and
// each source's, unless the source is read from another host's file server
// (CopyFile.sourceHostId), which any host can reach. A source or target in a
// host's own home cannot be seen from another host: such a job stays (a
// template placement's job always does: it copies into its host's own folder).
//
// Two workers never write one target: the copy lock (storage/copy-lock.ts)
// is held by the worker that writes, renewed, and judged across hosts by its
// lease; a worker of a host whose agent died stops by itself (its parent is
// gone) after its chunk in flight, and the new worker waits for its lock.
import { OffshootError } from '../../common/index.ts';
import type { Locator } from '../../protocol/index.ts';
import type { HostRecord, HostState } from '../hosts/index.ts';
import { PLACEABLE } from '../hosts/index.ts';
import { parseRequest } from '../requests.ts';
import type { Catalog } from './catalog.ts';
import type { CopyJobs } from './copy-jobs.ts';
import type { StorageDeps } from './deps.ts';
import type { CopyJobRecord } from './records.ts';
import { isCopyJobDone } from './records.ts';
import { moveJobRequestSchema } from './requests.ts';

/** A copy job cannot be handed to that host. HTTP 409. */
export class HandoverRefusedError extends OffshootError {
  constructor(jobId: string, host: string, reason: string, details: Record<string, unknown> = {}) {
    super('HANDOVER_REFUSED', `copy job ${jobId} cannot be handed to host ${host}: ${reason}; the job goes on where it is`, { jobId, host, reason, ...details }, 409);
  }
}

/** What each host copied of a job, from its history (hosts in the order they worked on it). */
export interface HostShare {
  hostId: string;
  host: string;
  bytesCopied: number;
  chunksCopied: number;
}

/** The answer of `job move`: the job (as it is now, or at its end with wait) and what each host copied. */
export interface HandoverResult {
  job: CopyJobRecord;
  hosts: HostShare[];
}

/**
 * Bytes and chunks each host copied, from the job's history. A worker that died with its host wrote no line of
 * its own: its share is what the job had done when it was handed over (the hand-over line's bytesDoneBefore)
 * less what earlier lines account for.
 */
export function sharesOf(job: CopyJobRecord, hostName: (id: string) => string): HostShare[] {
  const shares = new Map<string, HostShare>();
  const share = (hostId: string) => {
    let s = shares.get(hostId);
    if (!s) shares.set(hostId, (s = { hostId, host: hostName(hostId), bytesCopied: 0, chunksCopied: 0 }));
    return s;
  };
  // Bytes of each file the lines so far account for.
  const accounted = new Map<number, number>();
  const add = (file: number, bytes: number) => accounted.set(file, (accounted.get(file) ?? 0) + bytes);
  for (const line of job.history) {
    const file = line.fileIndex ?? 0;
    if (line.handedOverFrom !== undefined) {
      const unrecorded = (line.bytesDoneBefore ?? 0) - (accounted.get(file) ?? 0);
      if (unrecorded > 0) {
        share(line.handedOverFrom).bytesCopied += unrecorded;
        add(file, unrecorded);
      }
      share(line.hostId);
      continue;
    }
    const s = share(line.hostId);
    s.bytesCopied += line.bytesCopied ?? 0;
    s.chunksCopied += line.chunksCopied;
    add(file, line.bytesCopied ?? 0);
  }
  return [...shares.values()];
}

/** Codes with which a job failed because its host went away (those jobs are handed over when the host is lost). */
const LOST_HOST_CODES = ['HOST_UNREACHABLE', 'TASK_INTERRUPTED', 'OPERATION_NOT_FOUND'];

export class JobHandover {
  constructor(
    private readonly deps: StorageDeps,
    private readonly catalog: Catalog,
    private readonly jobs: CopyJobs,
  ) {}

  /** `job move ID --to HOST`, with what each host copied (at the end of the job with `wait`). */
  async moveAndReport(id: string, input: unknown, wait: boolean): Promise<HandoverResult> {
    const moved = await this.move(id, input);
    const job = wait ? await this.jobs.wait(moved.id) : moved;
    return { job, hosts: sharesOf(job, (h) => this.deps.engine.hostName(h)) };
  }

  /** `job move ID --to HOST`: checked first (nothing stops if it is refused), then handed over. */
  async move(id: string, input: unknown): Promise<CopyJobRecord> {
    const { to } = parseRequest('job move', moveJobRequestSchema, input);
    const job = await this.jobs.get(id);
    const host = await this.deps.engine.fleet.resolve(to);
    if (host.id === job.hostId) throw new OffshootError('INVALID_INPUT', `copy job ${id} already runs on host ${host.name}`, { jobId: id, host: host.name }, 400);
    const refusal = await this.refusal(job, host);
    if (refusal) throw new HandoverRefusedError(id, host.name, refusal.reason, refusal.details);
    this.deps.logger.info({ jobId: id, from: this.deps.engine.hostName(job.hostId), to: host.name }, 'handing a copy job over by request');
    return this.jobs.reassign(id, host.id, 'requested');
  }

  /**
   * A host is drained or lost: each of its jobs that still has work goes to another ready host that sees its
   * files (the first that does); a job no other host can take stays, and is logged. Returns the jobs handed over.
   */
  async handOverFrom(host: HostRecord, why: 'drained' | 'lost'): Promise<string[]> {
    const moved: string[] = [];
    for (const job of await this.jobs.list()) {
      if (job.hostId !== host.id || !this.shouldLeave(job, why)) continue;
      const candidates = this.deps.engine.fleet.hosts().filter((h) => h.id !== host.id && PLACEABLE.includes(h.state));
      let target: HostRecord | undefined;
      for (const c of candidates) {
        if (!(await this.refusal(job, c))) {
          target = c;
          break;
        }
      }
      if (!target) {
        this.deps.logger.warn({ jobId: job.id, host: host.name, why }, 'no other host sees the files of this copy job; it stays');
        continue;
      }
      try {
        await this.jobs.reassign(job.id, target.id, why);
        moved.push(job.id);
        this.deps.logger.info({ jobId: job.id, from: host.name, to: target.name, why }, 'copy job handed over');
      } catch (err) {
        this.deps.logger.warn({ err, jobId: job.id, host: host.name }, 'cannot hand a copy job over');
      }
    }
    return moved;
  }

  /** The fleet's news: drained and lost hosts give their jobs away. */
  hostAdminState(host: HostRecord, previous: HostState): void {
    if (host.state === 'draining' && previous !== 'draining') this.inBackground(host, 'drained');
  }

  hostLost(host: HostRecord): void {
    this.inBackground(host, 'lost');
  }

  private inBackground(host: HostRecord, why: 'drained' | 'lost'): void {
    void this.handOverFrom(host, why).catch((err: unknown) => this.deps.logger.error({ err, host: host.name }, 'cannot hand over the copy jobs of a host'));
  }

  private shouldLeave(job: CopyJobRecord, why: 'drained' | 'lost'): boolean {
    if (job.state === 'running' || job.state === 'queued') return true;
    if (why === 'drained') return job.state === 'paused';
    return job.state === 'failed' && LOST_HOST_CODES.includes(job.error?.code ?? '');
  }

  /** Why `host` cannot take the rest of `job`, or null if it can. */
  async refusal(job: CopyJobRecord, host: HostRecord): Promise<{ reason: string; details: Record<string, unknown> } | null> {
    if (isCopyJobDone(job.state) && job.state !== 'failed') return { reason: `the job is ${job.state}`, details: { state: job.state } };
    if (!PLACEABLE.includes(host.state)) return { reason: `the host is ${host.state}`, details: { state: host.state } };
    // A template's placement copies into its host's own folder: only that host can take it.
    if (job.purpose.kind === 'place') return { reason: `it carries template ${job.purpose.template} to host ${this.deps.engine.hostName(job.hostId)}, into that host's own folder`, details: { template: job.purpose.template } };
    for (const file of job.files.slice(job.progress.fileIndex)) {
      // A source on a host other than the job's is read from that host's file server, which any host reaches.
      const served = file.sourceHostId !== undefined && file.sourceHostId !== job.hostId;
      const needs: Array<['source' | 'target', Locator]> = served ? [['target', file.target]] : [['source', file.source], ['target', file.target]];
      for (const [role, locator] of needs) {
        const ds = await this.catalog.datastoreOf(locator);
        if (!ds) return { reason: `its ${role} ${locator} is in a host's own folder, which no other host sees`, details: { file: locator, role } };
        if (!ds.hosts.some((h) => h.hostId === host.id)) return { reason: `it does not see datastore ${ds.name} (the ${role} ${locator})`, details: { file: locator, role, datastore: ds.name } };
      }
    }
    return null;
  }
}
