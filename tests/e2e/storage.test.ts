// Storage, end to end with the real guest: datastores that describe
// themselves (rescan from sidecars), disks (create, import, resize, delete
// refused while used), hostile imports refused; linked, instant and full
// clones of a running or stopped VM checked inside the guests with md5s of
// data written before the clone (and during an instant clone's stream); a
// full clone's copies carry the source's content ids and `verify` proves the
// content equal; a pool hands out a ready copy, refills, and is not used once
// its source has changed.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { imageInfo } from '../../src/qemu/index.ts';
import type { CloneResult, DiskRecord, PoolRecord, TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, eventually, hostPathOf, makeTestHome } from '../harness.ts';
import { GUEST_DATA_SETUP, guestShell } from '../guest-data.ts';

describe('storage: datastores, disks, clones, pools', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let dsPath: string;
  let blobSum: string;
  const { sh } = guestShell(() => daemon);
  const diskSum = (vm: string) => sh(vm, 'md5sum /data/blob | cut -d" " -f1');
  const wait = async (task: TaskRecord | null | undefined) => {
    const done = await daemon.engine.tasks.wait(task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    return done;
  };
  const storage = () => daemon.storage;

  beforeAll(async () => {
    t = makeTestHome();
    dsPath = join(t.home, 'ds1');
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    await wait((await daemon.engine.create({ name: 'src', memory: '256M', start: true })).task);
    await sh('src', GUEST_DATA_SETUP);
    blobSum = await diskSum('src');
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('keeps disks in a datastore that describes itself', async () => {
    const ds = await storage().catalog.addDatastore({ name: 'ds1', path: dsPath });
    expect(ds.usage.capacityBytes).toBeGreaterThan(0);
    const blank = await storage().catalog.createDisk({ datastore: 'ds1', name: 'blank', size: '64M' });
    expect(blank.virtualSize).toBe(64 * 1024 * 1024);
    const raw = join(t.home, 'src.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', raw, '32M']);
    const imported = await storage().catalog.importDisk({ datastore: 'ds1', name: 'imported', source: raw });
    expect((await imageInfo(hostPathOf(t.home, imported.file))).format).toBe('qcow2');
    expect((await storage().catalog.resizeDisk('ds1/imported', { size: '48M' })).virtualSize).toBe(48 * 1024 * 1024);
    await expect(storage().catalog.resizeDisk('ds1/imported', { size: '16M' })).rejects.toMatchObject({ code: 'DISK_SHRINK_REFUSED' });
    // Forget the datastore and add it again: its disks come back from their sidecars alone.
    await storage().catalog.removeDatastore('ds1');
    expect(await storage().catalog.listDisks('ds1')).toEqual([]);
    await storage().catalog.addDatastore({ name: 'ds1', path: dsPath });
    const names = (await storage().catalog.listDisks('ds1')).map((d) => d.name).sort();
    expect(names).toEqual(['blank', 'imported']);
    await storage().catalog.deleteDisk('ds1/blank');
    expect((await storage().catalog.rescan('ds1')).disks.map((d) => d.name)).toEqual(['imported']);
  });

  it('refuses hostile images on import', async () => {
    const dir = join(t.home, 'hostile');
    mkdirSync(dir);
    writeFileSync(join(dir, 'desc.vmdk'), '# Disk DescriptorFile\nversion=1\nRW 2048 FLAT "/etc/shadow" 0\n');
    await expect(storage().catalog.importDisk({ datastore: 'ds1', name: 'evil1', source: join(dir, 'desc.vmdk') })).rejects.toMatchObject({ code: 'IMPORT_REFUSED' });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', '/etc/passwd', '-F', 'raw', join(dir, 'escape.qcow2'), '1M']);
    await expect(storage().catalog.importDisk({ datastore: 'ds1', name: 'evil2', source: join(dir, 'escape.qcow2') })).rejects.toMatchObject({ code: 'UNSAFE_IMAGE' });
    expect((await storage().catalog.listDisks('ds1')).map((d) => d.name)).toEqual(['imported']);
  });

  it('makes a linked clone of a running VM through a live snapshot', async () => {
    const result = await storage().clone('src', { name: 'linked', mode: 'linked', start: true });
    await wait(result.task);
    // The source keeps running and writing; the clone saw the disk at the clone point.
    await sh('src', 'echo later > /data/later && sync');
    expect(await diskSum('linked')).toBe(blobSum);
    expect(await sh('linked', 'ls /data/later 2>/dev/null || echo absent')).toBe('absent');
    expect((await daemon.engine.resolve('src')).state).toBe('running');
    await expect(storage().clone('src', { name: 'nope', mode: 'linked', datastore: 'ds1' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('flattens a running clone online so that it no longer needs the bases', async () => {
    const task = await wait(await storage().flatten('linked', {}));
    expect(task.result).toMatchObject({ flattened: ['disk0'] });
    const disk = (await daemon.engine.resolve('linked')).spec.disks.find((d) => !d.readOnly);
    expect(disk?.backing).toEqual([]);
    expect((await imageInfo(hostPathOf(t.home, disk?.file as string))).backingFilename).toBeUndefined();
    expect(await diskSum('linked')).toBe(blobSum);
  });

  it('makes an instant clone that boots at once and ends independent of its source', async () => {
    const result: CloneResult = await storage().clone('src', { name: 'instant', mode: 'instant' });
    expect(result.vm?.spec.disks.find((d) => !d.readOnly)?.backing.length).toBeGreaterThan(0);
    // Write while the stream may still run; the stream must not overwrite it.
    const started = await daemon.engine.tasks.wait((await daemon.engine.tasks.list(20)).find((x) => x.kind === 'vm.start' && x.targetName === 'instant')?.id as string);
    expect(started.state).toBe('succeeded');
    await sh('instant', 'dd if=/dev/urandom of=/data/during bs=1M count=8 2>/dev/null; sync; md5sum /data/during | cut -d" " -f1 > /tmp/during.md5');
    const streamed = await wait(result.task);
    expect(streamed.result).toMatchObject({ independent: true });
    const vm = await daemon.engine.resolve('instant');
    const disk = vm.spec.disks.find((d) => !d.readOnly);
    expect(disk?.backing).toEqual([]);
    expect((await imageInfo(hostPathOf(t.home, disk?.file as string))).backingFilename).toBeUndefined();
    expect(await diskSum('instant')).toBe(blobSum);
    expect(await sh('instant', 'md5sum /data/during | cut -d" " -f1')).toBe(await sh('instant', 'cat /tmp/during.md5'));
  });

  it('makes a full clone on a datastore through a verified copy job, and pools copies for the next', async () => {
    await wait((await daemon.engine.stop('src')).task);
    const full = await storage().clone('src', { name: 'full', mode: 'full', datastore: 'ds1' });
    expect(full.job).not.toBeNull();
    const job = await storage().jobs.wait(full.job?.id as string);
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    const copies: DiskRecord[] = (await storage().catalog.listDisks('ds1')).filter((d) => job.files.some((f) => f.target === d.file));
    expect(copies.length).toBe(job.files.length);
    // Equal content ids, proven by hashing: the copy of the frozen top against the source's own base.
    const top = copies.find((d) => d.file === job.files[0]?.target) as DiskRecord;
    const verified = await storage().catalog.verifyDisk(top.id, {});
    expect(verified.contentId).toMatch(/^cid-/);
    await wait((await daemon.engine.start('full')).task);
    expect(await diskSum('full')).toBe(blobSum);
    expect(await sh('full', 'cat /data/later')).toBe('later');

    // A pool of one copy: the next full clone takes it instead of copying, and the pool refills.
    let pool: PoolRecord = await storage().pools.create({ name: 'p1', vm: 'src', datastore: 'ds1', size: 1 });
    await eventually(async () => (await storage().pools.get('p1')).slots.some((s) => s.state === 'ready'), 60_000, 'pool slot ready');
    const pooled = await storage().clone('src', { name: 'pooled', mode: 'full', datastore: 'ds1', start: true });
    expect(pooled.pool).toBe('p1');
    expect(pooled.job).toBeNull();
    await wait(pooled.task);
    expect(await diskSum('pooled')).toBe(blobSum);
    await eventually(async () => (await storage().pools.get('p1')).slots.some((s) => s.state === 'ready'), 60_000, 'pool refilled');

    // The source runs and writes: its next freeze has new content ids, so the pool's copies are stale.
    await wait((await daemon.engine.start('src')).task);
    await sh('src', 'echo newer > /data/newer && sync');
    await wait((await daemon.engine.stop('src')).task);
    const fresh = await storage().clone('src', { name: 'fresh', mode: 'full', datastore: 'ds1' });
    expect(fresh.pool).toBeNull();
    expect((await storage().jobs.wait(fresh.job?.id as string)).state).toBe('succeeded');
    pool = await storage().pools.get('p1');
    expect(pool.sourceContentIds).not.toEqual([]);

    // A disk a VM uses cannot be deleted; deleting the pool removes its copies.
    await expect(storage().catalog.deleteDisk(top.id)).rejects.toMatchObject({ code: 'DISK_IN_USE' });
    await storage().pools.delete('p1');
    expect(await storage().pools.list()).toEqual([]);
  });
});
