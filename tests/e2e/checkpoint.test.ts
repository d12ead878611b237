// Live checkpoint and eager restore, checked inside the guest: 64 MiB of
// random data in a tmpfs and on disk and a counter are checkpointed while the
// VM runs on; the source then changes its data; a restore sees the data of
// the checkpoint moment and a counter that continues from there, with a new
// identity. A flipped byte, a truncated file or a wrong version fails the
// restore with the part named, leaving no VM, file or process behind.
import { existsSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { CheckpointResult, TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, makeTestHome, memoryFiles } from '../harness.ts';
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

  it('restores the checkpoint moment with a new identity', async () => {
    const task = await wait(daemon.engine.restore({ checkpoint: 'ck1' }));
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    const { vm } = task.result as { vm: VmRecord };
    expect(vm.name).toBe('src-r1');
    expect(await md5s('src-r1')).toBe(sums);
    expect(await counter('src-r1')).toBeGreaterThanOrEqual(counterAtCheckpoint);
    expect(await sh('src-r1', 'hostname')).toBe('src-r1');
    expect(await sh('src', 'cat /data/blob')).toBe('changed');
    const again = await wait(daemon.engine.restore({ checkpoint: checkpoint.checkpoint.path, name: 'second' }));
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
    expect(await md5s('second')).toBe(sums);
    const macs = await Promise.all(['src-r1', 'second'].map((v) => sh(v, 'cat /sys/class/net/eth0/address')));
    expect(new Set(macs).size).toBe(2);
  });

  it('refuses a corrupted, truncated or wrong-version file and leaves nothing behind', async () => {
    const file = checkpoint.checkpoint.path;
    const original = readFileSync(file);
    const before = { vms: (await daemon.engine.list()).map((v) => v.name), dirs: vmDirs().length, ram: memoryFiles(t).length, qemus: t.qemus().length };
    const cases: Array<[string, (b: Buffer) => Buffer | 'truncate', string]> = [
      ['flipped byte in a memory block', (b) => (b.writeUInt8((b[4096] as number) ^ 0xff, 4096), b), 'CHECKPOINT_CORRUPT'],
      ['truncated', () => 'truncate', 'CHECKPOINT_CORRUPT'],
      ['wrong version', (b) => (b.writeUInt32LE(9, 8), b.writeBigUInt64LE(xxh64(b.subarray(0, 56)), 56), b), 'CHECKPOINT_VERSION'],
    ];
    for (const [what, damage, code] of cases) {
      const changed = damage(Buffer.from(original));
      if (changed === 'truncate') truncateSync(file, original.length - 1000);
      else writeFileSync(file, changed);
      const task = await wait(daemon.engine.restore({ checkpoint: 'ck1', name: 'broken' }));
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
    await expect(daemon.engine.restore({ checkpoint: 'ck1', mode: 'lazy' })).rejects.toMatchObject({ code: 'NOT_IMPLEMENTED' });
  });
});
