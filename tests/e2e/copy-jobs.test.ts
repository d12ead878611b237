// Copy jobs through the CLI, with a real daemon process: a disk move is a
// resumable copy job. Killing the daemon (SIGKILL) mid-copy and starting a new
// one resumes the job from its recorded chunks (its worker, orphaned, stops
// by itself); pause and resume hand the job to a new worker process that goes
// on where the first stopped; cancel removes what was copied. The moved disk
// keeps its content id and `disk verify` proves the content equal.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CopyJobRecord, DiskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { eventually, hostPathOf, makeTestHome, startDetachedDaemon, waitForProcessExit } from '../harness.ts';

describe('copy jobs', () => {
  let t: TestHome;
  let daemon: { pid: number };
  const cli = async (...args: string[]) => {
    const r = await t.cli([...args, '--json']);
    if (r.code !== 0) throw new Error(`offshoot ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as unknown;
  };
  const job = async (id: string) => (await cli('job', 'show', id)) as CopyJobRecord;
  const settle = (id: string, states: string[]) => eventually(async () => states.includes((await job(id)).state), 120_000, `job ${id} to be ${states.join('/')}`);
  const workers = (): string[] => {
    try {
      // The worker runs as src/storage/copy-worker.ts under tsx or as its bundle, copy-worker-<hash>.mjs.
      return execFileSync('pgrep', ['-f', `copy-worker.* --target ${t.home}/`]).toString().split('\n').filter(Boolean);
    } catch {
      return []; // pgrep exits 1 when nothing matches
    }
  };

  beforeAll(async () => {
    t = makeTestHome();
    // Small chunks and a bandwidth limit, so the copy can be caught in the middle.
    t.env.OFFSHOOT_COPY_CHUNK_MIB = '1';
    t.env.OFFSHOOT_COPY_MAX_MIBPS = '4';
    daemon = await startDetachedDaemon(t);
    await cli('datastore', 'add', 'ds1', join(t.home, 'ds1'));
    await cli('datastore', 'add', 'ds2', join(t.home, 'ds2'));
    const raw = join(t.home, 'data.raw');
    // Private like every file of the home (the harness checks that none is open to other users).
    execFileSync('sh', ['-c', `umask 077; dd if=/dev/urandom of=${raw} bs=1M count=40 2>/dev/null && truncate -s 256M ${raw}`]);
    await cli('disk', 'import', 'ds1', 'big', raw);
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('resumes a disk move after the daemon was killed, from its recorded chunks', async () => {
    const before = (await cli('disk', 'show', 'ds1/big')) as DiskRecord;
    const started = (await cli('disk', 'move', 'ds1/big', 'ds2', '--no-wait')) as CopyJobRecord;
    let doneAtKill = 0;
    await eventually(async () => {
      const p = (await job(started.id)).progress;
      doneAtKill = p.chunksDone;
      return p.chunksDone >= 8;
    }, 60_000, 'the copy to be under way');
    expect(workers()).toHaveLength(1);
    process.kill(daemon.pid, 'SIGKILL');
    await waitForProcessExit(daemon.pid);
    // The orphaned worker notices that its parent is gone and stops after its chunk in flight.
    await eventually(() => workers().length === 0, 30_000, 'the orphaned copy worker to stop');

    daemon = await startDetachedDaemon(t);
    await settle(started.id, ['succeeded', 'failed']);
    const finished = await job(started.id);
    expect(finished.state, JSON.stringify(finished.error)).toBe('succeeded');
    // Not from zero: the new worker copied at most the chunks not yet recorded, plus the one in flight.
    expect(finished.progress.chunksCopied).toBeLessThanOrEqual(finished.progress.chunksTotal - doneAtKill + 1);
    expect(finished.progress.chunksCopied).toBeLessThan(finished.progress.chunksTotal);

    const moved = (await cli('disk', 'show', 'ds2/big')) as DiskRecord;
    expect(moved.contentId).toBe(before.contentId);
    expect(existsSync(hostPathOf(t.home, before.file))).toBe(false);
    expect((await t.cli(['disk', 'show', 'ds1/big'])).code).not.toBe(0);
    const verified = (await cli('disk', 'verify', 'ds2/big')) as { contentHash: string };
    expect(verified.contentHash).toMatch(/^xxh64:/);
  });

  it('pauses a job and resumes it in a new worker that goes on where the first stopped', async () => {
    const started = (await cli('disk', 'move', 'ds2/big', 'ds1', '--no-wait')) as CopyJobRecord;
    await eventually(async () => (await job(started.id)).progress.chunksDone >= 5, 60_000, 'the copy to be under way');
    const paused = (await cli('job', 'pause', started.id)) as CopyJobRecord;
    expect(paused.state).toBe('paused');
    expect(workers()).toEqual([]);
    const firstWorker = paused.progress.chunksCopied;
    expect(firstWorker).toBeGreaterThan(0);
    await cli('job', 'resume', started.id);
    await settle(started.id, ['succeeded', 'failed']);
    const finished = await job(started.id);
    expect(finished.state, JSON.stringify(finished.error)).toBe('succeeded');
    expect(finished.progress.workers).toBe(2);
    // Each chunk was copied once by one of the two workers (give or take the one in flight).
    expect(finished.progress.chunksCopied).toBeLessThanOrEqual(finished.progress.chunksTotal + 1);
    expect(((await cli('disk', 'list', '--datastore', 'ds1')) as DiskRecord[]).map((d) => d.name)).toEqual(['big']);
  });

  it('cancels a job and removes what it copied', async () => {
    const source = (await cli('disk', 'show', 'ds1/big')) as DiskRecord;
    const started = (await cli('disk', 'move', 'ds1/big', 'ds2', '--no-wait')) as CopyJobRecord;
    await eventually(async () => (await job(started.id)).progress.chunksDone >= 3, 60_000, 'the copy to be under way');
    const cancelled = (await cli('job', 'cancel', started.id)) as CopyJobRecord;
    expect(cancelled.state).toBe('cancelled');
    const target = cancelled.files[0]?.target as string;
    expect(existsSync(target)).toBe(false);
    expect(existsSync(`${target}.copy.json`)).toBe(false);
    expect(existsSync(hostPathOf(t.home, source.file))).toBe(true);
    expect(((await cli('disk', 'list', '--datastore', 'ds2')) as DiskRecord[]).length).toBe(0);
    await expect(cli('job', 'resume', started.id)).rejects.toThrow(/ILLEGAL_STATE/);
  });
});
