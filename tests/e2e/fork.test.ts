// Instant fork, checked inside the guests: a VM with 64 MiB of random data in
// a tmpfs (RAM) and on its disk, and a running counter, is forked into 4.
// Every VM sees the same md5s and a counter that continues from the fork
// point; writes after the fork stay private to the writer (RAM and disk);
// a fork of a fork works; disk chains pass `qemu-img check` and stay bounded
// (disk state inheritance); templates and bases go when their last user does.
// Injected faults roll back: the source keeps running, children vanish.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { checkImage, imageInfo } from '../../src/qemu/index.ts';
import type { ForkResult, TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, hostPathOf, makeTestHome } from '../harness.ts';
import { GUEST_DATA_SETUP, guestShell } from '../guest-data.ts';


describe('instant fork', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const faults = new Map<string, () => void>();

  const { sh, md5s, counter } = guestShell(() => daemon);
  const fork = async (ref: string, body: Record<string, unknown>): Promise<TaskRecord> => {
    const { task } = await daemon.engine.fork(ref, body);
    return daemon.engine.tasks.wait(task?.id as string);
  };
  const basesDir = () => join(t.home, 'bases');
  const templates = () => (existsSync(join(t.memoryDir, 'templates')) ? readdirSync(join(t.memoryDir, 'templates')) : []);

  let sums: string;
  let result: ForkResult;

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({
      home: t.home,
      memoryDir: t.memoryDir,
      faults: (point) => faults.get(point)?.(),
    });
    const { task } = await daemon.engine.create({ name: 'src', memory: '256M', start: true });
    expect((await daemon.engine.tasks.wait(task?.id as string)).state).toBe('succeeded');
    await sh('src', GUEST_DATA_SETUP);
    sums = await md5s('src');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('forks a running VM into 4 that continue where it was', async () => {
    const before = await counter('src');
    const task = await fork('src', { count: 4 });
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    result = task.result as ForkResult;
    expect(result.children.map((c) => c.name)).toEqual(['src-c1', 'src-c2', 'src-c3', 'src-c4']);
    expect(result.children.every((c) => c.customize.ok)).toBe(true);
    expect(result.timings.stunMs).toBeGreaterThan(0);
    for (const vm of ['src', ...result.children.map((c) => c.name)]) {
      expect(await md5s(vm), vm).toBe(sums);
      const c = await counter(vm);
      expect(c, vm).toBeGreaterThanOrEqual(before);
    }
    const vms = await daemon.engine.list();
    expect(vms.map((v) => [v.name, v.state])).toEqual([['src', 'running'], ['src-c1', 'running'], ['src-c2', 'running'], ['src-c3', 'running'], ['src-c4', 'running']]);
    expect(t.qemus()).toHaveLength(5);
  });

  it('gives each child its own identity', async () => {
    const ids = new Set<string>();
    for (const child of result.children) {
      expect(await sh(child.name, 'hostname')).toBe(child.name);
      const mac = await sh(child.name, 'cat /sys/class/net/eth0/address');
      expect(mac).toBe(child.mac);
      ids.add(await sh(child.name, 'cat /etc/machine-id'));
      const record = await daemon.engine.resolve(child.name);
      expect(record.id).toBe(child.id);
    }
    expect(ids.size).toBe(4);
  });

  it('keeps writes private to the writer, in RAM and on disk', async () => {
    await sh('src-c1', 'echo c1 > /mnt/ram/mark && echo c1 > /data/mark && sync');
    await sh('src', 'echo src > /mnt/ram/after && echo src > /data/after && sync');
    for (const vm of ['src', 'src-c2', 'src-c3']) expect(await sh(vm, 'ls /mnt/ram/mark /data/mark 2>/dev/null || echo none')).toBe('none');
    for (const vm of ['src-c1', 'src-c4']) expect(await sh(vm, 'ls /mnt/ram/after /data/after 2>/dev/null || echo none')).toBe('none');
    expect(await sh('src-c1', 'cat /mnt/ram/mark /data/mark')).toBe('c1\nc1');
    expect(await md5s('src-c2')).toBe(sums);
  });

  it('shares memory: children map the template and report shared pages', async () => {
    const stats = await daemon.engine.memory('src-c2');
    expect(stats.mode).toBe('derived');
    expect(stats.sharedKiB).toBeGreaterThan(32 * 1024);
    expect(templates()).toHaveLength(1);
  });

  it('keeps every disk chain valid and bounded when forks are forked', async () => {
    // Fork a child, then its child, and so on: the chain must stay within maxDiskDepth.
    let parent = 'src-c2';
    for (let generation = 1; generation <= 3; generation++) {
      const task = await fork(parent, { count: 1, prefix: `g${generation}-`, maxDiskDepth: 2 });
      expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
      const child = (task.result as ForkResult).children[0]?.name as string;
      expect(await md5s(child)).toBe(sums);
      parent = child;
    }
    for (const vm of await daemon.engine.list()) {
      for (const disk of vm.spec.disks) {
        expect((await checkImage(hostPathOf(t.home, disk.file), { forceShare: true })).ok, disk.file).toBe(true);
        const chain = await imageInfo(hostPathOf(t.home, disk.file), { backingChain: true });
        expect(disk.backing.length, `${vm.name}: ${JSON.stringify(chain)}`).toBeLessThanOrEqual(2);
      }
    }
    const deepest = await daemon.engine.resolve(parent);
    expect(deepest.spec.disks[0]?.backing.length).toBeLessThanOrEqual(2);
  });

  it('rolls back when a child fails to start: source runs on, no child is left', async () => {
    const vmsBefore = (await daemon.engine.list()).map((v) => v.name);
    const qemusBefore = t.qemus().length;
    faults.set('fork.start-child:2', () => {
      throw new Error('injected: child 2 does not start');
    });
    const task = await fork('src', { count: 3, prefix: 'bad-' });
    faults.clear();
    expect(task.state).toBe('failed');
    expect(task.error).toMatchObject({ code: 'FORK_FAILED', details: { step: 'start children' } });
    expect((await daemon.engine.list()).map((v) => v.name)).toEqual(vmsBefore);
    expect(t.qemus()).toHaveLength(qemusBefore);
    expect(existsSync(join(t.home, 'vms')) && readdirSync(join(t.home, 'vms')).length).toBe(vmsBefore.length);
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    expect(await sh('src', 'cat /mnt/ram/after')).toBe('src');
  });

  it('rolls back when the fork fails after preparing: the source runs on unchanged', async () => {
    const before = (await daemon.engine.resolve('src')).spec.disks;
    faults.set('fork.prepared', () => {
      throw new Error('injected: failure after prepare');
    });
    const task = await fork('src', { count: 2, prefix: 'bad-' });
    faults.clear();
    expect(task.error).toMatchObject({ code: 'FORK_FAILED', details: { step: 'prepare' } });
    expect((await daemon.engine.resolve('src')).spec.disks).toEqual(before);
    for (const disk of before) expect(existsSync(hostPathOf(t.home, disk.file))).toBe(true);
    const src = await daemon.engine.resolve('src');
    expect(src.state).toBe('running');
    expect(await sh('src', 'cat /mnt/ram/after /data/after')).toBe('src\nsrc');
    const c = await counter('src');
    await new Promise((r) => setTimeout(r, 500));
    expect(await counter('src')).toBeGreaterThan(c);
  });

  it('fails the fork when a child cannot be customized, and removes the children', async () => {
    const vmsBefore = (await daemon.engine.list()).map((v) => v.name);
    const task = await fork('src', { count: 2, prefix: 'slow-', customize: 'sleep 30', customizeTimeoutMs: 500 });
    expect(task.error).toMatchObject({ code: 'FORK_FAILED', details: { step: 'customize' } });
    expect((await daemon.engine.list()).map((v) => v.name)).toEqual(vmsBefore);
    expect((await daemon.engine.resolve('src')).state).toBe('running');
  });

  it('refuses to fork a stopped VM and names a wrong prefix', async () => {
    await expect(daemon.engine.fork('src', { count: 0 })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(daemon.engine.fork('src', { prefix: '../x' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await daemon.engine.kill('g3-1');
    await expect(daemon.engine.fork('g3-1', {})).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
  });

  it('removes templates and bases when their last user is deleted', async () => {
    for (const vm of await daemon.engine.list()) {
      if (vm.state !== 'stopped' && vm.state !== 'failed') await daemon.engine.kill(vm.id);
      await daemon.engine.delete(vm.id);
    }
    expect(templates()).toEqual([]);
    expect(existsSync(basesDir()) ? readdirSync(basesDir()) : []).toEqual([]);
    expect(t.qemus()).toEqual([]);
    const left: VmRecord[] = await daemon.engine.list();
    expect(left).toEqual([]);
  });
});
