// Live checkpoint and lazy and eager restore, checked inside the guest: 64
// MiB of random data in a tmpfs and on disk and a counter are checkpointed
// while the VM runs on; the source then changes its data; a restore sees the
// data of the checkpoint moment and a counter that continues from there, with
// a new identity. A lazy restore (the default) runs the VM while its memory
// streams in from the file, page faults served first; its task ends when the
// file is no longer needed and the VM owns its RAM file. A flipped byte (early
// or late in the memory), a truncated file or a wrong version fails the
// restore with the part named, leaving no VM, file or process behind.
import { existsSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { CheckpointResult, TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, makeTestHome, memoryFiles, ramFileOf } from '../harness.ts';
import { GUEST_DATA_SETUP, guestShell } from '../guest-data.ts';


describe('checkpoint and restore', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let sums: string;
  let counterAtCheckpoint: number;
  let checkpoint: CheckpointResult;

  const { sh, md5s, counter } = guestShell(() => daemon);
  const wait = async (p: Promise<{ task?: TaskRecord }>) => daemon.engine.tasks.wait((await p).task?.id as string);
  const vmDirs = () => readdirSync(join(t.home, 'vms'));

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    expect((await wait(daemon.engine.create({ name: 'src', memory: '256M', start: true }))).state).toBe('succeeded');
    await sh('src', GUEST_DATA_SETUP);
    sums = await md5s('src');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('saves a live checkpoint; the VM runs on', async () => {
    counterAtCheckpoint = await counter('src');
    const task = await wait(daemon.engine.checkpoint('src', { name: 'ck1' }));
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    checkpoint = task.result as CheckpointResult;
    expect(checkpoint.checkpoint.state).toBe('complete');
    expect(existsSync(checkpoint.checkpoint.path)).toBe(true);
    expect(statSync(checkpoint.checkpoint.path).size).toBe(checkpoint.fileBytes);
    // 256 MiB guest, mostly zero: the file holds about the non-zero pages (64 MiB random + the guest's own).
    expect(checkpoint.fileBytes).toBeLessThan(200 * 1024 * 1024);
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    const c = await counter('src');
    await new Promise((r) => setTimeout(r, 400));
    expect(await counter('src')).toBeGreaterThan(c);
    // The source changes its data after the checkpoint.
    await sh('src', 'echo changed > /mnt/ram/blob && echo changed > /data/blob && sync');
  });

  it('restores lazily (the default): the VM runs first, its memory streams in, then the VM owns its RAM file', async () => {
    const started = await daemon.engine.restore({ checkpoint: 'ck1' });
    // The VM runs while the task still streams its memory.
    let runningWhileStreaming = false;
    for (;;) {
      const [vm, task] = await Promise.all([daemon.engine.resolve(started.vm.id), daemon.engine.tasks.get(started.task?.id as string)]);
      if (task.state !== 'running') break;
      if (vm.state === 'running') runningWhileStreaming = true;
      await new Promise((r) => setTimeout(r, 5));
    }
    const task = await daemon.engine.tasks.wait(started.task?.id as string);
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    expect(runningWhileStreaming).toBe(true);
    const { vm, mode, stream } = task.result as { vm: VmRecord; mode: string; stream: { requests: number; faultBlocks: number; pagesSent: number } };
    expect(vm.name).toBe('src-r1');
    expect(mode).toBe('lazy');
    // Pages were asked for by the destination (faults served on demand) and the non-zero memory was streamed.
    expect(stream.requests).toBeGreaterThan(0);
    expect(stream.faultBlocks).toBeGreaterThan(0);
    expect(stream.pagesSent).toBeGreaterThan((64 * 1024 * 1024) / 4096);
    expect(await md5s('src-r1')).toBe(sums);
    expect(await counter('src-r1')).toBeGreaterThanOrEqual(counterAtCheckpoint);
    expect(await sh('src-r1', 'hostname')).toBe('src-r1');
    expect(await sh('src', 'cat /data/blob')).toBe('changed');
    // Once the stream is complete the RAM file is the VM's own, as after an eager restore, and holds its memory.
    const record = await daemon.engine.resolve('src-r1');
    expect(record.runtime?.memory.mode).toBe('owned');
    const ram = ramFileOf(t.memoryDir, record);
    expect(Number(execFileSync('du', ['-k', ram], { encoding: 'utf8' }).split('\t')[0]) * 1024).toBeGreaterThan(64 * 1024 * 1024);
    expect(t.qemus().some((q) => q.vmId === record.id)).toBe(true);
    // The migration is over: nothing in QEMU still waits for pages.
    const c = await counter('src-r1');
    await new Promise((r) => setTimeout(r, 400));
    expect(await counter('src-r1')).toBeGreaterThan(c);
  });

  it('restores eagerly from the file path too, with another identity', async () => {
    const again = await wait(daemon.engine.restore({ checkpoint: checkpoint.checkpoint.path, name: 'second', mode: 'eager' }));
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
    expect((again.result as { mode: string }).mode).toBe('eager');
    expect(await md5s('second')).toBe(sums);
    const macs = await Promise.all(['src-r1', 'second'].map((v) => sh(v, 'cat /sys/class/net/eth0/address')));
    expect(new Set(macs).size).toBe(2);
  });

  it('refuses a corrupted, truncated or wrong-version file and leaves nothing behind', async () => {
    const file = checkpoint.checkpoint.path;
    const original = readFileSync(file);
    const before = { vms: (await daemon.engine.list()).map((v) => v.name), dirs: vmDirs().length, ram: memoryFiles(t).length, qemus: t.qemus().length };
    // The last stored block ends where the table of contents starts (header bytes 40..47).
    const tocOffset = Number(original.readBigUInt64LE(40));
    const cases: Array<[string, (b: Buffer) => Buffer | 'truncate', string, ('lazy' | 'eager')?]> = [
      ['flipped byte in a memory block, eager', (b) => (b.writeUInt8((b[4096] as number) ^ 0xff, 4096), b), 'CHECKPOINT_CORRUPT', 'eager'],
      ['flipped byte in the first memory block', (b) => (b.writeUInt8((b[4096] as number) ^ 0xff, 4096), b), 'CHECKPOINT_CORRUPT'],
      // Lazily, this block may only be read after the VM runs: the VM is then killed and removed all the same.
      ['flipped byte in the last memory block', (b) => (b.writeUInt8((b[tocOffset - 100] as number) ^ 0xff, tocOffset - 100), b), 'CHECKPOINT_CORRUPT'],
      ['truncated', () => 'truncate', 'CHECKPOINT_CORRUPT'],
      ['wrong version', (b) => (b.writeUInt32LE(9, 8), b.writeBigUInt64LE(xxh64(b.subarray(0, 56)), 56), b), 'CHECKPOINT_VERSION'],
    ];
    for (const [what, damage, code, mode] of cases) {
      const changed = damage(Buffer.from(original));
      if (changed === 'truncate') truncateSync(file, original.length - 1000);
      else writeFileSync(file, changed);
      const task = await wait(daemon.engine.restore({ checkpoint: 'ck1', name: 'broken', mode }));
      expect(task.state, what).toBe('failed');
      expect(task.error?.code, what).toBe(code);
      expect((await daemon.engine.list()).map((v) => v.name), what).toEqual(before.vms);
      expect(vmDirs().length, what).toBe(before.dirs);
      expect(memoryFiles(t).length, what).toBe(before.ram);
      expect(t.qemus().length, what).toBe(before.qemus);
    }
    writeFileSync(file, original);
  });

  it('suspends with --stop, and a checkpoint is deleted with its file', async () => {
    const task = await wait(daemon.engine.checkpoint('second', { name: 'ck2', stop: true }));
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    expect((await daemon.engine.resolve('second')).state).toBe('stopped');
    const restored = await wait(daemon.engine.restore({ checkpoint: 'ck2', name: 'third' }));
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    expect(await md5s('third')).toBe(sums);
    const path = (await daemon.engine.getCheckpoint('ck2')).path;
    await daemon.engine.deleteCheckpoint('ck2');
    expect(existsSync(path)).toBe(false);
    await expect(daemon.engine.restore({ checkpoint: 'ck2' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
