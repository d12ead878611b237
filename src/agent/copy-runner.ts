// Runs one file copy of a copy job in a worker process (src/storage's copy
// worker): spawns it, turns its JSON lines into progress callbacks, and stops
// it on request (SIGTERM: it records the chunk in flight and exits 'stopped',
// so another worker — after a daemon restart, or on another host — finishes
// from its progress file). A worker whose daemon died notices that its parent
// is gone and stops the same way, so a restarted daemon never races it. A
// copy from another host reads that host's one-file server (the URL on the
// command line, its token in the worker's environment only). The worker runs
// from its bundle (src/storage/copy-worker-bundle.ts) when that could be built.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { OffshootError, sleep } from '../common/index.ts';
import { COPY_SOURCE_TOKEN_ENV, COPY_WORKER_EXIT, copyWorkerBundle, copyWorkerCommand, parseCopyWorkerLine } from '../storage/index.ts';
import type { CopyWorkerMessage, RemoteFile } from '../storage/index.ts';

export interface CopyRunProgress {
  bytesDone: number;
  bytesTotal: number;
  chunksDone: number;
  chunksTotal: number;
  bytesPerSecond: number;
}

export interface CopyRunResult {
  state: 'done' | 'stopped';
  contentHash: string | null;
  chunksCopied: number;
  chunksSkipped: number;
  bytesCopied: number;
  elapsedMs: number;
  pid: number;
}

type ResultMessage = Extract<CopyWorkerMessage, { type: 'result' }>;

/** Copies one file in a worker process; resolves with 'stopped' if `signal` aborts it first. */
export interface CopyRunFile {
  source: string;
  /** Read the source from another host's file server instead of the local path `source`. */
  remote?: RemoteFile;
  target: string;
  chunkMiB?: number;
  /** Bandwidth limit of the worker. */
  maxMiBPerSecond?: number;
}

export async function runCopyWorker(file: CopyRunFile, onProgress: (p: CopyRunProgress) => void, signal?: AbortSignal): Promise<CopyRunResult> {
  // A worker of a previous daemon (or of the host a job was handed over from) may still be recording its
  // last chunk: retry while it holds the lock, for up to two minutes.
  const deadline = Date.now() + BUSY_RETRY_MS;
  const bundle = await copyWorkerBundle();
  while (true) {
    try {
      return await runOnce(file, onProgress, signal, bundle);
    } catch (err) {
      if (!(err instanceof OffshootError) || err.code !== 'COPY_BUSY' || Date.now() > deadline || signal?.aborted) throw err;
      await sleep(500);
    }
  }
}

const BUSY_RETRY_MS = 120_000;

function runOnce(file: CopyRunFile, onProgress: (p: CopyRunProgress) => void, signal: AbortSignal | undefined, bundle: string | undefined): Promise<CopyRunResult> {
  const { command, args } = copyWorkerCommand({ source: file.source, ...(file.remote ? { sourceUrl: file.remote.url } : {}), target: file.target, chunkMiB: file.chunkMiB, maxMiBPerSecond: file.maxMiBPerSecond, stopWithParent: true }, bundle);
  const env = file.remote ? { ...process.env, [COPY_SOURCE_TOKEN_ENV]: file.remote.token } : process.env;
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let result: ResultMessage['result'] | undefined;
  let failure: OffshootError | undefined;
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    try {
      const message = parseCopyWorkerLine(line);
      if (message.type === 'progress') onProgress(message.progress);
      else if (message.type === 'result') result = message.result;
      else failure = new OffshootError(message.error.code, message.error.message, message.error.details, 500);
    } catch (err) {
      failure = err as OffshootError;
    }
  });
  const stop = () => child.kill('SIGTERM');
  signal?.addEventListener('abort', stop, { once: true });
  return new Promise<CopyRunResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      signal?.removeEventListener('abort', stop);
      // Stopped before it could install its signal handler: nothing was recorded in flight.
      if (!result && code === null && signal?.aborted) {
        resolve({ state: 'stopped', contentHash: null, chunksCopied: 0, chunksSkipped: 0, bytesCopied: 0, elapsedMs: 0, pid: child.pid ?? 0 });
        return;
      }
      if (result && (code === COPY_WORKER_EXIT.done || code === COPY_WORKER_EXIT.stopped)) {
        resolve({ state: result.state, contentHash: result.contentHash ?? null, chunksCopied: result.chunksCopied, chunksSkipped: result.chunksSkipped, bytesCopied: result.bytesCopied, elapsedMs: result.elapsedMs, pid: child.pid ?? 0 });
        return;
      }
      reject(failure ?? new OffshootError('COPY_WORKER_FAILED', `copy worker exited with code ${code}: ${stderr.trim().slice(-500)}`, { code, source: file.source, target: file.target }, 500));
    });
  });
}
