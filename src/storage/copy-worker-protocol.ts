// How to run the copy worker and read what it prints: the script's path, the
// command line to spawn it with (node and the bundled worker of
// copy-worker-bundle.ts, or node + tsx as bin/offshoot does), its exit
// codes, and a typed parser of its JSON lines (progress, then one result or
// error). The daemon spawns one worker per copy job; a remote host runs the
// same worker.
import { join } from 'node:path';
// A namespace import (not `{ z }`) lets the copy worker's bundle leave out the parts of zod it does not use.
import * as z from 'zod';
import { OffshootError } from '../common/index.ts';
import { COPY_STATES } from './copy-engine.ts';

/** Absolute path of the worker script. */
export const COPY_WORKER_SCRIPT = join(import.meta.dirname, 'copy-worker.ts');
const TSX_LOADER = join(import.meta.dirname, '..', '..', 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');

/** The environment variable that carries a remote source's token to the worker. */
export const COPY_SOURCE_TOKEN_ENV = 'OFFSHOOT_COPY_SOURCE_TOKEN';

/** Exit codes of the worker. */
export const COPY_WORKER_EXIT = { done: 0, error: 1, usage: 2, stopped: 3 } as const;

export interface CopyWorkerArgs {
  source: string;
  /** Read the source from another host's file server at this URL (its token goes in COPY_SOURCE_TOKEN_ENV). */
  sourceUrl?: string;
  target: string;
  chunkMiB?: number;
  bufferMiB?: number;
  buffers?: number;
  /** Bandwidth limit in MiB/s. */
  maxMiBPerSecond?: number;
  /** Stop (as on SIGTERM) when the spawning process is gone. */
  stopWithParent?: boolean;
}

/** The command and arguments that run the worker for `args`: the bundled worker at `bundle` when given (see copy-worker-bundle.ts), else the script under tsx. */
export function copyWorkerCommand(args: CopyWorkerArgs, bundle?: string): { command: string; args: string[] } {
  const script = bundle ? [bundle] : ['--import', TSX_LOADER, '--no-warnings=ExperimentalWarning', COPY_WORKER_SCRIPT];
  const argv = [...script, '--source', args.source, '--target', args.target];
  if (args.sourceUrl !== undefined) argv.push('--source-url', args.sourceUrl);
  if (args.chunkMiB !== undefined) argv.push('--chunk-mib', String(args.chunkMiB));
  if (args.bufferMiB !== undefined) argv.push('--buffer-mib', String(args.bufferMiB));
  if (args.buffers !== undefined) argv.push('--buffers', String(args.buffers));
  if (args.maxMiBPerSecond !== undefined) argv.push('--max-mib-per-sec', String(args.maxMiBPerSecond));
  if (args.stopWithParent) argv.push('--stop-with-parent');
  return { command: process.execPath, args: argv };
}

const progressSchema = z.object({
  bytesDone: z.number(),
  bytesTotal: z.number(),
  chunksDone: z.number(),
  chunksTotal: z.number(),
  bytesPerSecond: z.number(),
});

const messageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('progress'), progress: progressSchema }),
  z.object({
    type: z.literal('result'),
    result: z.object({
      state: z.enum(COPY_STATES),
      source: z.string(),
      target: z.string(),
      size: z.number(),
      chunkBytes: z.number(),
      chunksCopied: z.number(),
      chunksSkipped: z.number(),
      bytesCopied: z.number(),
      elapsedMs: z.number(),
      progress: progressSchema,
      contentHash: z.string().optional(),
    }),
  }),
  z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()) }) }),
]);

export type CopyWorkerMessage = z.infer<typeof messageSchema>;

/** A worker printed a line that is not one of its messages. */
export class CopyWorkerProtocolError extends OffshootError {
  constructor(line: string, reason: string) {
    super('COPY_WORKER_PROTOCOL', `copy worker printed an unexpected line (${reason}): ${line.slice(0, 200)}`, { line: line.slice(0, 1000), reason }, 500);
  }
}

/** Parses one line of the worker's standard output. */
export function parseCopyWorkerLine(line: string): CopyWorkerMessage {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    throw new CopyWorkerProtocolError(line, 'not JSON');
  }
  const parsed = messageSchema.safeParse(json);
  if (!parsed.success) throw new CopyWorkerProtocolError(line, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return parsed.data;
}
