// The copy engine on real images made with qemu-img and qemu-io: byte-exact
// sparse copies, resume after SIGKILL of the worker, hand-over between two
// workers, a changed source, a corrupted target chunk, a busy target, cancel.
import { spawn, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkImage } from '../qemu/index.ts';
import { CopyBusyError, CopySourceChangedError, CopyTargetExistsError, CopyVerifyFailedError } from './copy-errors.ts';
import { cancelCopy, copyFile, fileChunkHashes, fileContentHash } from './copy-engine.ts';
import type { CopyResult } from './copy-engine.ts';
import { lockPath } from './copy-lock.ts';
import { progressPath, readProgress } from './copy-progress.ts';
import { COPY_WORKER_EXIT, copyWorkerCommand, parseCopyWorkerLine } from './copy-worker-protocol.ts';
import type { CopyWorkerArgs, CopyWorkerMessage } from './copy-worker-protocol.ts';
import { copyWorkerBundle, copyWorkerBundleError } from './copy-worker-bundle.ts';

const MiB = 1024 * 1024;
const CHUNK = MiB;

/** Writes `bytes` random bytes at `offset` of a file. */
function writeRandom(path: string, offset: number, bytes: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, randomBytes(bytes), 0, bytes, offset);
  } finally {
    closeSync(fd);
  }
}

/**
 * A qcow2 image whose file has holes: metadata preallocated, random data
 * converted in from a sparse raw file, plus a pattern written by qemu-io.
 */
function makeQcow2(dir: string, name: string): string {
  const raw = join(dir, `${name}.raw`);
  const img = join(dir, name);
  truncateSync(openAndClose(raw), 40 * MiB);
  writeRandom(raw, 1 * MiB, 6 * MiB);
  writeRandom(raw, 21 * MiB + 12345, 3 * MiB);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', img, '40M']);
  execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'qcow2', raw, img]);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 33M 2M', img], { stdio: 'ignore' });
  rmSync(raw);
  return img;
}

function openAndClose(path: string): string {
  closeSync(openSync(path, 'w'));
  return path;
}

const allocated = (path: string) => statSync(path).blocks * 512;

interface WorkerRun {
  messages: CopyWorkerMessage[];
  exit: Promise<number | null>;
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the first message matching `match`. */
  waitFor(match: (m: CopyWorkerMessage) => boolean): Promise<CopyWorkerMessage>;
}

function runWorker(args: CopyWorkerArgs, bundle?: string): WorkerRun {
  const { command, args: argv } = copyWorkerCommand(args, bundle);
  const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: CopyWorkerMessage[] = [];
  const waiters: Array<{ match: (m: CopyWorkerMessage) => boolean; resolve: (m: CopyWorkerMessage) => void }> = [];
  let rest = '';
  child.stdout.on('data', (b: Buffer) => {
    const lines = (rest + b.toString('utf8')).split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      const m = parseCopyWorkerLine(line);
      messages.push(m);
      for (const w of [...waiters]) {
        if (!w.match(m)) continue;
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  });
  const exit = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    messages,
    exit,
    kill: (signal) => child.kill(signal),
    waitFor: (match) => {
      const found = messages.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.push({ match, resolve });
        void exit.then(() => reject(new Error(`worker exited first; lines: ${JSON.stringify(messages)}`)));
      });
    },
  };
}

const resultOf = (run: WorkerRun): CopyResult => {
  const last = run.messages[run.messages.length - 1];
  if (last?.type !== 'result') throw new Error(`no result: ${JSON.stringify(last)}`);
  return last.result;
};

/** Mid-copy: some data copied, not all. */
const midCopy = (m: CopyWorkerMessage) => m.type === 'progress' && m.progress.bytesDone > 0 && m.progress.chunksDone >= 8 && m.progress.chunksDone < m.progress.chunksTotal - 8;

async function expectRejects<T extends Error>(p: Promise<unknown>, type: new (...args: never[]) => T): Promise<T> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(type);
    return err as T;
  }
  throw new Error(`expected ${type.name}`);
}

describe('copy engine', () => {
  let dir: string;
  let source: string;
  let target: string;
  beforeEach(() => {
    dir = mkdtempSync('/var/tmp/offshoot-copy-');
    source = makeQcow2(dir, 'base.qcow2');
    target = join(dir, 'copy.qcow2');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('copies byte-exact and sparse, verifies, and leaves only the target with the source mode', async () => {
    chmodSync(source, 0o444);
    expect(allocated(source)).toBeLessThan(statSync(source).size / 2); // the fixture has holes
    const seen: number[] = [];
    const result = await copyFile({ source, target, chunkBytes: CHUNK, bufferBytes: 256 * 1024, onProgress: (p) => seen.push(p.chunksDone) });
    expect(result.state).toBe('done');
    expect(result.chunksCopied).toBe(Math.ceil(statSync(source).size / CHUNK));
    expect(result.progress.bytesDone).toBe(result.progress.bytesTotal);
    expect(seen[seen.length - 1]).toBe(result.chunksCopied);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
    expect(allocated(target)).toBeLessThan(statSync(target).size / 2);
    expect(allocated(target)).toBeLessThanOrEqual(allocated(source) + 64 * 1024);
    expect(execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', source, target]).toString()).toContain('identical');
    const check = await checkImage(target);
    expect(check.ok && check.supported && check.corruptions === 0).toBe(true);
    expect(statSync(target).mode & 0o7777).toBe(0o444);
    expect(existsSync(progressPath(target))).toBe(false);
    expect(existsSync(lockPath(target))).toBe(false);
    // Same definition as fileContentHash, from the source, the target, and a fully allocated copy.
    expect(result.contentHash).toBe(await fileContentHash(source, { chunkBytes: CHUNK }));
    expect(result.contentHash).toBe(await fileContentHash(target, { chunkBytes: CHUNK }));
    const dense = join(dir, 'dense');
    execFileSync('cp', ['--sparse=never', source, dense]);
    expect(allocated(dense)).toBeGreaterThan(allocated(source));
    expect(await fileContentHash(dense, { chunkBytes: CHUNK })).toBe(result.contentHash);
    writeRandom(dense, 30 * MiB, 1);
    expect(await fileContentHash(dense, { chunkBytes: CHUNK })).not.toBe(result.contentHash);
    // A finished target is not a copy in progress.
    await expectRejects(copyFile({ source, target, chunkBytes: CHUNK }), CopyTargetExistsError);
  });

  it('runs from its bundle as copy jobs start it, with the same result as the script under tsx', async () => {
    const bundle = await copyWorkerBundle();
    expect(bundle, String(copyWorkerBundleError())).toMatch(/copy-worker-[0-9a-f]{16}\.mjs$/);
    expect(await copyWorkerBundle()).toBe(bundle); // built once per process
    const run = runWorker({ source, target, chunkMiB: 1 }, bundle);
    expect(await run.exit).toBe(COPY_WORKER_EXIT.done);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
    expect(resultOf(run).contentHash).toBe(await fileContentHash(source, { chunkBytes: CHUNK }));
  });

  it('copies a sparse raw file whose size is not a multiple of the chunk size', async () => {
    const raw = join(dir, 'disk.raw');
    truncateSync(openAndClose(raw), 5 * MiB + 4096 * 3);
    writeRandom(raw, 5 * MiB + 100, 4096);
    writeRandom(raw, 0, 4096);
    const out = join(dir, 'out.raw');
    const result = await copyFile({ source: raw, target: out, chunkBytes: CHUNK, bufferBytes: 64 * 1024, buffers: 3 });
    expect(result.state).toBe('done');
    expect(result.progress.bytesTotal).toBeLessThan(64 * 1024);
    expect(readFileSync(out).equals(readFileSync(raw))).toBe(true);
    expect(allocated(out)).toBeLessThanOrEqual(64 * 1024);
  });

  it('resumes after SIGKILL of the worker, re-copying at most the chunk in flight', async () => {
    const w1 = runWorker({ source, target, chunkMiB: 1, bufferMiB: 0.25, maxMiBPerSecond: 6 });
    const seen = await w1.waitFor(midCopy);
    w1.kill('SIGKILL');
    expect(await w1.exit).toBeNull();
    expect(existsSync(lockPath(target))).toBe(true); // left by the dead worker
    const recorded = await readProgress(target);
    if (!recorded || seen.type !== 'progress') throw new Error('no progress file');
    const recordedChunks = Object.keys(recorded.done).map(Number);
    expect(recordedChunks.length).toBeGreaterThanOrEqual(seen.progress.chunksDone);
    // Chunks with data that the dead worker wrote but did not record: at most one.
    const src = await fileChunkHashes(source, { chunkBytes: CHUNK });
    const tgt = await fileChunkHashes(target, { chunkBytes: CHUNK });
    const inFlight = src.filter((h, i) => !recorded.done[String(i)] && h === tgt[i] && readChunkHasData(source, i));
    expect(inFlight.length).toBeLessThanOrEqual(1);

    const w2 = runWorker({ source, target, chunkMiB: 1 });
    expect(await w2.exit).toBe(COPY_WORKER_EXIT.done);
    const r2 = resultOf(w2);
    expect(r2.state).toBe('done');
    expect(r2.chunksSkipped).toBe(recordedChunks.length);
    expect(r2.chunksCopied).toBe(src.length - recordedChunks.length);
    expect(r2.contentHash).toBe(await fileContentHash(source, { chunkBytes: CHUNK }));
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
    expect(existsSync(lockPath(target))).toBe(false);
  });

  it('hands a copy over: worker 1 stops on SIGTERM, worker 2 finishes, each chunk copied once', async () => {
    const w1 = runWorker({ source, target, chunkMiB: 1, bufferMiB: 0.25, maxMiBPerSecond: 6 });
    await w1.waitFor(midCopy);
    w1.kill('SIGTERM');
    expect(await w1.exit).toBe(COPY_WORKER_EXIT.stopped);
    const r1 = resultOf(w1);
    expect(r1.state).toBe('stopped');
    expect(r1.chunksCopied).toBeGreaterThan(0);
    expect(r1.chunksCopied).toBeLessThan(r1.progress.chunksTotal);
    expect(existsSync(lockPath(target))).toBe(false);
    expect(Object.keys((await readProgress(target))?.done ?? {}).length).toBe(r1.chunksCopied);

    const w2 = runWorker({ source, target, chunkMiB: 4 }, await copyWorkerBundle()); // the recorded chunk size wins; a bundled worker goes on from a tsx one
    expect(await w2.exit).toBe(COPY_WORKER_EXIT.done);
    const r2 = resultOf(w2);
    expect(r2.chunkBytes).toBe(CHUNK);
    expect(r2.chunksSkipped).toBe(r1.chunksCopied);
    expect(r1.chunksCopied + r2.chunksCopied).toBe(r1.progress.chunksTotal);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
  });

  it('refuses to resume against a changed source and keeps the progress', async () => {
    const controller = new AbortController();
    const stopped = await copyFile({ source, target, chunkBytes: CHUNK, signal: controller.signal, onProgress: (p) => p.chunksDone >= 3 && controller.abort() });
    expect(stopped.state).toBe('stopped');
    expect(stopped.chunksCopied).toBeGreaterThanOrEqual(3);
    expect(Object.keys((await readProgress(target))?.done ?? {}).length).toBe(stopped.chunksCopied);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', source], { stdio: 'ignore' });
    const err = await expectRejects(copyFile({ source, target, chunkBytes: CHUNK }), CopySourceChangedError);
    expect(err.code).toBe('COPY_SOURCE_CHANGED');
    expect(existsSync(progressPath(target))).toBe(true);
    expect(existsSync(lockPath(target))).toBe(false);
  });

  it('fails verification on a corrupted target chunk, naming it, and a resume repairs it', async () => {
    const controller = new AbortController();
    await copyFile({ source, target, chunkBytes: CHUNK, signal: controller.signal, onProgress: (p) => p.chunksDone >= 4 && controller.abort() });
    const recorded = await readProgress(target);
    expect(recorded?.done['2']?.bytes).toBeGreaterThan(0); // chunk 2 holds random data
    flipByte(target, 2 * CHUNK + 777);
    const err = await expectRejects(copyFile({ source, target, chunkBytes: CHUNK }), CopyVerifyFailedError);
    expect(err.code).toBe('COPY_VERIFY_FAILED');
    expect(err.chunk).toBe(2);
    expect(err.chunks).toEqual([2]);
    expect(existsSync(progressPath(target))).toBe(true);
    const again = await copyFile({ source, target, chunkBytes: CHUNK });
    expect(again.state).toBe('done');
    expect(again.chunksCopied).toBe(1);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
  });

  it('lets only one worker copy a target at a time', async () => {
    // Slow enough that the first worker still holds the lock while the second starts, however loaded the machine.
    const w1 = runWorker({ source, target, chunkMiB: 1, maxMiBPerSecond: 1 });
    await w1.waitFor((m) => m.type === 'progress' && m.progress.bytesDone > 0);
    const w2 = runWorker({ source, target, chunkMiB: 1 });
    expect(await w2.exit).toBe(COPY_WORKER_EXIT.error);
    const last = w2.messages[w2.messages.length - 1];
    expect(last?.type === 'error' && last.error.code).toBe('COPY_BUSY');
    await expectRejects(copyFile({ source, target }), CopyBusyError);
    await expectRejects(cancelCopy(target), CopyBusyError);
    w1.kill('SIGTERM');
    expect(await w1.exit).toBe(COPY_WORKER_EXIT.stopped);
  });

  it('cancel removes the target, the progress file and the lock, and leaves a finished copy alone', async () => {
    const controller = new AbortController();
    await copyFile({ source, target, chunkBytes: CHUNK, signal: controller.signal, onProgress: (p) => p.chunksDone >= 2 && controller.abort() });
    expect(existsSync(target) && existsSync(progressPath(target))).toBe(true);
    const removed = await cancelCopy(target);
    expect(removed.sort()).toEqual([target, progressPath(target)].sort());
    for (const p of [target, progressPath(target), lockPath(target)]) expect(existsSync(p)).toBe(false);
    const done = await copyFile({ source, target, chunkBytes: CHUNK });
    expect(done.state).toBe('done');
    expect(await cancelCopy(target)).toEqual([]);
    expect(existsSync(target)).toBe(true);
  });
});

function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    b[0] = (b[0] ?? 0) ^ 0xff;
    writeSync(fd, b, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

/** Whether chunk `i` of `path` holds any non-zero byte. */
function readChunkHasData(path: string, i: number): boolean {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(CHUNK);
    const n = readSync(fd, b, 0, CHUNK, i * CHUNK);
    return b.subarray(0, n).some((x) => x !== 0);
  } finally {
    closeSync(fd);
  }
}
