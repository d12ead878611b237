// Checkpoint files given by path and cancelled checkpoint writes, against a
// real guest: a checkpoint file copied elsewhere (as if carried from another
// machine) is shown and restored by its path, with the guest's data of the
// checkpoint moment; a file whose frozen disk is missing, or that is
// truncated, is refused with a clear error and nothing is created. A
// checkpoint cancelled before its write starts, or while the file is being
// written, leaves the VM running with its data, and no checkpoint record,
// file, partial file, template or frozen base that nothing uses.
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { CheckpointResult, TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, eventually, hostPathOf, makeTestHome, memoryFiles } from '../harness.ts';
import { GUEST_DATA_SETUP, guestShell } from '../guest-data.ts';

describe('checkpoint files by path, and cancelling a checkpoint', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let sums: string;
  let carried: string;
  // A gate at the fault point just before the checkpoint file is written.
  let gate: { reached: () => void; release: Promise<void> } | undefined;

  const { sh, md5s, counter } = guestShell(() => daemon);
  const wait = async (p: Promise<{ task?: TaskRecord }>) => daemon.engine.tasks.wait((await p).task?.id as string);
  const vmDirs = () => readdirSync(join(t.home, 'vms'));
  const bases = () => (existsSync(join(t.home, 'bases')) ? readdirSync(join(t.home, 'bases')).map((f) => join(t.home, 'bases', f)) : []);

  /** Every template and frozen base left is one a VM or a checkpoint still uses. */
  const assertNothingUnused = async () => {
    const vms = await daemon.engine.list();
    const checkpoints = await daemon.engine.listCheckpoints();
    const usedBases = new Set([...vms.flatMap((v) => v.spec.disks.flatMap((d) => d.backing)), ...checkpoints.flatMap((c) => c.spec.disks.flatMap((d) => [d.file, ...d.backing]))].map((f) => hostPathOf(t.home, f)));
    for (const b of bases()) expect(usedBases.has(b), `unused base ${b}`).toBe(true);
    const usedTemplates = new Set(vms.map((v) => v.runtime?.memory.templateId).filter(Boolean));
    const templates = memoryFiles(t).filter((f) => f.startsWith('templates/'));
    expect(templates.length).toBeLessThanOrEqual(usedTemplates.size);
  };

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({
      home: t.home,
      memoryDir: t.memoryDir,
      faults: async (point) => {
        if (point !== 'checkpoint.writing' || !gate) return;
        gate.reached();
        await gate.release;
      },
    });
    expect((await wait(daemon.engine.create({ name: 'src', memory: '256M', start: true }))).state).toBe('succeeded');
    await sh('src', GUEST_DATA_SETUP);
    sums = await md5s('src');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('shows and restores a checkpoint file by its path', async () => {
    const task = await wait(daemon.engine.checkpoint('src', { name: 'ck1' }));
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    const written = (task.result as CheckpointResult).checkpoint;
    mkdirSync(join(t.home, 'carried'));
    carried = join(t.home, 'carried', 'moved.ckpt');
    copyFileSync(written.path, carried);
    await sh('src', 'echo changed > /mnt/ram/blob && echo changed > /data/blob && sync');

    const shown = await t.client().getCheckpoint(carried);
    expect(shown).toMatchObject({ id: `file:${carried}`, name: 'moved', vmName: 'src', path: carried, state: 'complete', memoryBytes: written.memoryBytes });
    // The guest's RAM: 256 MiB, and 8 KiB more on a TCG host (spec memoryExtraKiB, see src/qemu/argv.ts).
    expect(shown.memoryBytes).toBe(256 * 1024 * 1024 + (written.spec.memoryExtraKiB ?? 0) * 1024);
    expect(shown.spec.disks.map((d) => d.file)).toEqual(written.spec.disks.map((d) => d.file));

    const restored = await wait(daemon.engine.restore({ checkpoint: carried, mode: 'eager' }));
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    const { vm } = restored.result as { vm: VmRecord };
    expect(vm.name).toBe('src-r1');
    expect(await md5s('src-r1')).toBe(sums);
    await daemon.engine.kill('src-r1');
    await daemon.engine.delete('src-r1');
  });

  it('refuses a file whose frozen disk is missing, or a truncated file, creating nothing', async () => {
    const before = { vms: (await daemon.engine.list()).map((v) => v.name), dirs: vmDirs().length, ram: memoryFiles(t).length, qemus: t.qemus().length };
    const shown = await daemon.engine.getCheckpoint(carried);
    const base = hostPathOf(t.home, shown.spec.disks[0]?.file as string);
    renameSync(base, `${base}.away`);
    try {
      await expect(daemon.engine.restore({ checkpoint: carried })).rejects.toMatchObject({ code: 'CHECKPOINT_DISK_UNAVAILABLE', message: expect.stringContaining('does not exist') });
      await expect(daemon.engine.getCheckpoint(carried)).rejects.toMatchObject({ code: 'CHECKPOINT_DISK_UNAVAILABLE' });
    } finally {
      renameSync(`${base}.away`, base);
    }
    const broken = join(t.home, 'carried', 'broken.ckpt');
    copyFileSync(carried, broken);
    truncateSync(broken, 100_000);
    await expect(daemon.engine.restore({ checkpoint: broken })).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining('truncated') });
    await expect(daemon.engine.restore({ checkpoint: join(t.home, 'carried', 'absent.ckpt') })).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
    // A relative name that no checkpoint has is not read as a file.
    await expect(daemon.engine.restore({ checkpoint: 'carried/moved.ckpt' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await daemon.engine.list()).map((v) => v.name)).toEqual(before.vms);
    expect(vmDirs().length).toBe(before.dirs);
    expect(memoryFiles(t).length).toBe(before.ram);
    expect(t.qemus().length).toBe(before.qemus);
  });

  it('cancels a checkpoint before its write: the VM runs on, nothing is left', async () => {
    let reached!: () => void;
    let release!: () => void;
    const atWrite = new Promise<void>((r) => (reached = r));
    gate = { reached: () => reached(), release: new Promise<void>((r) => (release = r)) };
    const started = await daemon.engine.checkpoint('src', { name: 'ck-cancel-1' });
    await atWrite;
    expect((await daemon.engine.getCheckpoint('ck-cancel-1')).state).toBe('writing');
    const cancelled = t.client().cancelTask(started.task?.id as string);
    gate = undefined;
    release();
    const task = await cancelled;
    expect(task.state).toBe('failed');
    expect(task.error?.code).toBe('TASK_CANCELLED');
    await expect(daemon.engine.getCheckpoint('ck-cancel-1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(existsSync(join(t.home, 'checkpoints', 'ck-cancel-1.ckpt'))).toBe(false);
    expect(existsSync(join(t.home, 'checkpoints', 'ck-cancel-1.ckpt.partial'))).toBe(false);
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    const c = await counter('src');
    await eventually(async () => (await counter('src')) > c, 10_000, 'the counter ticks');
    expect(await sh('src', 'cat /data/blob')).toBe('changed');
    await assertNothingUnused();
    // A finished task cannot be cancelled.
    await expect(daemon.engine.cancelTask(started.task?.id as string)).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
  });

  it('cancels a checkpoint while its file is being written', async () => {
    const out = join(t.home, 'carried', 'ck-cancel-2.ckpt');
    const before = readdirSync(join(t.home, 'carried'));
    const started = await daemon.engine.checkpoint('src', { name: 'ck-cancel-2', out });
    // The file is written under a temporary name in its folder, then linked to its name.
    const partial = () => readdirSync(join(t.home, 'carried')).some((f) => f.startsWith('.offshoot-ckpt-') && f.endsWith('.partial'));
    // Poll closely: the write of this guest takes a few hundred ms, the cancel lands inside it.
    for (const deadline = Date.now() + 60_000; !partial(); ) {
      if (Date.now() > deadline) throw new Error('the partial file never appeared');
      await new Promise((r) => setTimeout(r, 2));
    }
    const task = await daemon.engine.cancelTask(started.task?.id as string);
    expect(task.state).toBe('failed');
    expect(task.error?.code).toBe('TASK_CANCELLED');
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(join(t.home, 'carried'))).toEqual(before);
    await expect(daemon.engine.getCheckpoint('ck-cancel-2')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    const c = await counter('src');
    await eventually(async () => (await counter('src')) > c, 10_000, 'the counter ticks');
    await assertNothingUnused();
    // The VM can still be checkpointed afterwards.
    const again = await wait(daemon.engine.checkpoint('src', { name: 'ck-after' }));
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
  });
});
