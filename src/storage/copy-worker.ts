// The copy worker process: copies (or resumes) one file with the copy engine
// and prints JSON lines on stdout: {"type":"progress",...} while copying, then
// one {"type":"result",...} or {"type":"error",...}. Exit 0 when done, 3 when
// stopped (SIGTERM/SIGINT: after the chunk in flight is recorded), 1 on error,
// 2 on bad usage. Run it as copyWorkerCommand() in copy-worker-protocol.ts says:
//   node --import tsx src/storage/copy-worker.ts --source S --target T [--chunk-mib N]
// With --source-url URL the source is another host's file server (see
// file-server.ts); its token comes in the environment (COPY_SOURCE_TOKEN_ENV),
// never on the command line where other users could read it.
// With --stop-with-parent it also stops when the process that spawned it is
// gone (its parent pid changes): a daemon that died, even by SIGKILL, never
// leaves it racing the worker the next daemon starts. (Watching a stdin pipe
// instead made an earlier, blocking copy loop three times slower here.)
import { parseArgs } from 'node:util';
import { toOffshootError } from '../common/index.ts';
import { copyFile } from './copy-engine.ts';
import type { CopyProgress } from './copy-engine.ts';
import { COPY_SOURCE_TOKEN_ENV, COPY_WORKER_EXIT } from './copy-worker-protocol.ts';
import type { CopyWorkerMessage } from './copy-worker-protocol.ts';

function emit(message: CopyWorkerMessage): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function positive(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got "${value}"`);
  return n;
}

async function main(): Promise<number> {
  let opts;
  try {
    const { values } = parseArgs({
      options: {
        source: { type: 'string' },
        'source-url': { type: 'string' },
        target: { type: 'string' },
        'chunk-mib': { type: 'string' },
        'buffer-mib': { type: 'string' },
        buffers: { type: 'string' },
        'max-mib-per-sec': { type: 'string' },
        'stop-with-parent': { type: 'boolean' },
      },
      strict: true,
    });
    if (!values.source || !values.target) throw new Error('--source and --target are required');
    const mib = (name: string, v: string | undefined) => {
      const n = positive(name, v);
      return n === undefined ? undefined : Math.round(n * 1024 * 1024);
    };
    const sourceUrl = values['source-url'];
    const token = process.env[COPY_SOURCE_TOKEN_ENV];
    if (sourceUrl !== undefined && !token) throw new Error(`--source-url needs the file server's token in ${COPY_SOURCE_TOKEN_ENV}`);
    opts = {
      source: values.source,
      ...(sourceUrl !== undefined && token ? { remote: { url: sourceUrl, token } } : {}),
      target: values.target,
      chunkBytes: mib('chunk-mib', values['chunk-mib']),
      bufferBytes: mib('buffer-mib', values['buffer-mib']),
      buffers: positive('buffers', values.buffers),
      maxBytesPerSecond: mib('max-mib-per-sec', values['max-mib-per-sec']),
      stopWithParent: values['stop-with-parent'] === true,
    };
  } catch (err) {
    emit({ type: 'error', error: { code: 'INVALID_INPUT', message: (err as Error).message, details: {} } });
    return COPY_WORKER_EXIT.usage;
  }
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (opts.stopWithParent) {
    const parent = process.ppid;
    setInterval(() => process.ppid !== parent && stop(), 500).unref();
  }
  let last = 0;
  const onProgress = (progress: CopyProgress) => {
    const now = performance.now();
    if (now - last < 100 && progress.chunksDone < progress.chunksTotal) return;
    last = now;
    emit({ type: 'progress', progress });
  };
  try {
    const { stopWithParent: _watch, ...copyOptions } = opts;
    const result = await copyFile({ ...copyOptions, signal: controller.signal, onProgress });
    emit({ type: 'result', result });
    return result.state === 'done' ? COPY_WORKER_EXIT.done : COPY_WORKER_EXIT.stopped;
  } catch (err) {
    const e = toOffshootError(err);
    emit({ type: 'error', error: { code: e.code, message: e.message, details: e.details } });
    return COPY_WORKER_EXIT.error;
  }
}

process.exitCode = await main();
