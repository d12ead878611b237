// Defects 1 and 2 of the hardening issue, reproduced: a VM forked with
// maxDiskDepth 1 (so the fork flattens disks after the VM runs again), then
// checkpointed, cloned and flattened as soon as it runs. While the fork (or a
// flatten, or an instant clone's stream) still changes a VM's disks, those
// operations are refused with VM_BUSY instead of writing back an older spec;
// once it is done they work. Afterwards every VM record's chain is exactly
// the chain its qcow2 files name (qemu-img), every file of it exists, the
// fork children's chains stay within the depth limit, and nothing rejected
// unheard (vitest fails the run on an unhandled rejection).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { imageInfo } from '../../src/qemu/index.ts';
import type { TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, hostPathOf, makeTestHome } from '../harness.ts';
import { homeProblems, snapshotHome } from '../invariants.ts';

describe('spec changes never race', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const wait = async (task: TaskRecord | undefined | null) => daemon.engine.tasks.wait(task?.id as string);

  /** Tries `op` until it is not refused as busy; returns its task (or result), or the error it ends with. */
  async function asSoonAsIdle<T>(op: () => Promise<T>, refusals: string[]): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await op();
      } catch (err) {
        const code = (err as { code?: string }).code ?? '';
        if ((code !== 'VM_BUSY' && code !== 'ILLEGAL_STATE') || i > 2000) throw err;
        refusals.push(code);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** The record's chain (top, then backing) equals what the qcow2 headers say, and every file exists. */
  async function assertChainsTrue(vm: VmRecord): Promise<void> {
    for (const disk of vm.spec.disks.filter((d) => !d.readOnly)) {
      const info = await imageInfo(hostPathOf(t.home, disk.file), { backingChain: true });
      const actual = (info.backingChain ?? []).map((b) => b.filename);
      expect(actual, `${vm.name} ${disk.id}`).toEqual(disk.backing.map((b) => hostPathOf(t.home, b)));
    }
  }

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    expect((await wait((await daemon.engine.create({ name: 'src', memory: '128M', start: true })).task)).state).toBe('succeeded');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('refuses to rewrite the disks of a VM a fork is still flattening, and keeps every chain true', async () => {
    expect((await wait((await daemon.engine.fork('src', { count: 1, maxDiskDepth: 1 })).task)).state).toBe('succeeded');
    const refusals: string[] = [];
    for (let round = 0; round < 2; round++) {
      const fork = await daemon.engine.fork('src', { count: 1, maxDiskDepth: 1, prefix: `r${round}-` });
      // As soon as src runs again (and while the fork still flattens), a checkpoint, a clone and a flatten.
      const checkpoint = await asSoonAsIdle(() => daemon.engine.checkpoint('src', { name: `ck${round}` }), refusals);
      const clone = await asSoonAsIdle(() => daemon.storage.clone('src', { name: `cl${round}`, mode: 'linked' }), refusals);
      const flatten = await asSoonAsIdle(() => daemon.storage.flatten('src', {}), refusals);
      for (const task of [fork.task, checkpoint.task, flatten]) {
        const done = await wait(task);
        expect(done.state, `${done.kind}: ${JSON.stringify(done.error)}`).toBe('succeeded');
      }
      expect(clone.vm?.name).toBe(`cl${round}`);
    }
    // A fork of a fork with the same limit, and its children checkpointed as soon as they may be.
    const child = await wait((await daemon.engine.fork('r0-1', { count: 1, maxDiskDepth: 1, prefix: 'g' })).task);
    expect(child.state, JSON.stringify(child.error)).toBe('succeeded');
    const ck = await asSoonAsIdle(() => daemon.engine.checkpoint('g1', { name: 'ck-g1' }), refusals);
    expect((await wait(ck.task)).state).toBe('succeeded');

    const vms = await daemon.engine.list();
    for (const vm of vms) await assertChainsTrue(vm);
    // Fork children that nothing else froze stay within the limit (their root image plus at most one base).
    for (const name of ['src-c1', 'r0-1', 'r1-1']) {
      const vm = vms.find((v) => v.name === name) as VmRecord;
      for (const d of vm.spec.disks.filter((x) => !x.readOnly)) expect(d.backing.length, `${name} ${d.id}`).toBeLessThanOrEqual(1);
    }
    expect(homeProblems(await snapshotHome(t.client()), { home: t.home, memoryDir: t.memoryDir })).toEqual([]);
    // The operations that came too early were told why.
    expect(refusals).toContain('VM_BUSY');
  });
});
