// One file of a copy job, on the job's host: `copyFile` when that host sees
// the source itself, or, when the source is on another host
// (CopyFile.sourceHostId), that host serves the file (openFileServer, on the
// address that reaches the job's host) and the job's host reads it
// (`fetchFile`); the server is closed when the copy ends, however it ends.
// Either way the copy is the engine's: chunked, resumable from the progress
// file beside the target, verified, so a job handed to another host goes on
// where it stopped.
//
// After a hand-over, the worker the job left may have finished the file
// before it noticed (its host was cut off from the controller, not dead): the
// new worker then finds a complete target without a progress file
// (COPY_TARGET_EXISTS). That target is accepted only if it hashes equal to
// its source; anything else fails the job.
import { OffshootError } from '../../common/index.ts';
import type { AgentClient, CallResult, FollowOptions } from '../../protocol/index.ts';
import { runOperation } from '../../protocol/index.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import type { CopyFile, CopyJobRecord } from './records.ts';

export type CopyFileResult = CallResult<'copyFile'>;

/** The address of a host as another host would reach it: its agent URL's host; for the controller's own host, the other's (it binds what routes there). */
export function peerAddress(deps: Pick<StorageDeps, 'engine'>, readerHostId: string, serverHostId: string): string {
  const hostOf = (id: string) => {
    const url = deps.engine.fleet.hosts().find((h) => h.id === id)?.url ?? '';
    try {
      return url.startsWith('http') ? new URL(url).hostname.replace(/^\[(.*)\]$/, '$1') : null;
    } catch {
      return null;
    }
  };
  return hostOf(readerHostId) ?? hostOf(serverHostId) ?? '127.0.0.1';
}

/** How to run one file: follow options, and the agent operation's id (a controller taking a job over follows the same). */
export interface CopyFileOptions extends FollowOptions {
  operationId?: string;
}

export async function runCopyFile(deps: StorageDeps, job: CopyJobRecord, file: CopyFile, options: CopyFileOptions): Promise<CopyFileResult> {
  const agent = agentOn(deps, job.hostId);
  const remote = file.sourceHostId !== undefined && file.sourceHostId !== job.hostId;
  const { operationId, ...follow } = options;
  const id = operationId ? { operationId } : {};
  const run = () => (remote ? fetchRemote(deps, agent, job, file, follow, id) : runOperation(agent, 'copyFile', { ...id, source: file.source, target: file.target, ...deps.copy }, follow));
  try {
    return await run();
  } catch (err) {
    const handedOver = job.history.some((h) => h.handedOverFrom !== undefined);
    if (!(err instanceof OffshootError && err.code === 'COPY_TARGET_EXISTS' && handedOver)) throw err;
    return acceptFinishedTarget(deps, job, file, err);
  }
}

async function fetchRemote(deps: StorageDeps, agent: AgentClient, job: CopyJobRecord, file: CopyFile, options: FollowOptions, id: { operationId?: string }): Promise<CopyFileResult> {
  const sourceHost = file.sourceHostId as string;
  const source = agentOn(deps, sourceHost);
  const served = await source.openFileServer({ file: file.source, peer: peerAddress(deps, job.hostId, sourceHost) });
  try {
    return await runOperation(agent, 'fetchFile', { ...id, source: { url: served.url, token: served.token }, sourceName: file.source, target: file.target, ...deps.copy }, options);
  } finally {
    await source.closeFileServer({ serverId: served.serverId }).catch((err: unknown) => deps.logger.warn({ err, host: sourceHost }, 'cannot close a file server (it closes by itself when idle)'));
  }
}

async function acceptFinishedTarget(deps: StorageDeps, job: CopyJobRecord, file: CopyFile, cause: OffshootError): Promise<CopyFileResult> {
  const sourceAgent = agentOn(deps, file.sourceHostId ?? job.hostId);
  const [source, target] = await Promise.all([runOperation(sourceAgent, 'hashDisk', { file: file.source }), runOperation(agentOn(deps, job.hostId), 'hashDisk', { file: file.target })]);
  if (source.hash !== target.hash) throw cause;
  deps.logger.info({ jobId: job.id, target: file.target }, 'the worker the job was handed over from had finished this file; its copy hashes equal to the source');
  return { state: 'done', contentHash: null, chunksCopied: 0, chunksSkipped: 0, bytesCopied: 0, elapsedMs: 0 };
}
