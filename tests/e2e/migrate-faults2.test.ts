// Live migration's failures and storage cases, end to end on two lab hosts
// with the real guest, in one lab fleet. One VM on lab1 keeps writing (a
// counter, numbered lines appended to its disk); its disks: the default
// guest's delta (holding a blob of random data) and a delta over a base of
// random bytes on lab1's own datastore. Against it, each before anything is
// seeded at lab2:
// - a cancel during the disk mirror (progress under 100 %): it runs on at
//   lab1, same QEMU, its blob's md5 unchanged, nothing at lab2;
// - lab2's agent killed with SIGKILL during pre-copy: the controller stops the
//   transfer at once and rolls back (it runs on at lab1 in the same QEMU);
//   once the agent is restarted, lab2 has no QEMU, VM folder, RAM file, path
//   link or key of it left;
// - the path cut during pre-copy (lab2's end of the VXLAN link set down):
//   nothing moves, post-copy (auto) is not tried over the dead path, the
//   migration fails (at its time budget, or when the source QEMU, wedged on a
//   mirror request to the silent path, stops answering and the path's
//   connections are ended), the VM runs on at lab1, and lab2 has nothing of it;
// then the base is seeded to lab2 (`disk seed`) and the VM migrates: the
// result names the base as skipped and sends only the deltas (the whole base
// fewer bytes than the same VM's mirror before the seed), its data intact.
// A second VM boots from, and writes to, files on a datastore both hosts see:
// it migrates with its disk kept where it is (storage auto chooses shared; and
// back with --storage shared): no disk byte sent, its data's md5 equal.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostClient, MigrateClient, StorageClient } from '../../src/client/index.ts';
import { loadDefaultGuest } from '../../src/guest/index.ts';
import { labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { MigrateResult, MigrationProgress, TaskRecord, VmRecord } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { TestHome } from '../harness.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { counterGoesOn, expectNoGapInLines, pathLinks, qemusOf, sh, startMigrationLab, startWriter } from '../migration-lab.ts';

const prefix = `omq${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.215.${10 + ((randomBytes(1)[0] as number) % 40)}.0/24`;
const MiB = 2 ** 20;
const BASE_MIB = 16;
type Host = UpResult['hosts'][number];

/** Whatever of a VM is on a host: its QEMUs, VM folder, RAM file, path links and keys. */
function leftovers(vmId: string, host: Host): string[] {
  const keys = join(host.home, 'net', 'keys');
  return [
    ...qemusOf(vmId, host.namespace).map((pid) => `qemu ${pid}`),
    ...(existsSync(join(host.home, 'vms', vmId)) ? [`folder vms/${vmId}`] : []),
    ...readdirSync(host.memoryDir).filter((f) => f.startsWith(vmId)),
    ...pathLinks(host.namespace).map((l) => `link ${l}`),
    ...(existsSync(keys) ? readdirSync(keys).map((k) => `key ${k}`) : []),
  ];
}

function progressOf(task: TaskRecord): MigrationProgress | undefined {
  return (task.result as { progress?: MigrationProgress } | null)?.progress;
}

describe('live migration between lab hosts: failures mid-way, a seeded base, a shared datastore', () => {
  let t: TestHome;
  let lab: UpResult;
  let fleet: LabFleet | undefined;
  let shared: string;
  let lab1: Host;
  let lab2: Host;
  const vm = 'omq-vm';
  let blobMd5 = '';
  let vmRecord: VmRecord;
  /** The disk bytes the VM's mirror had to copy before the base was seeded (the base copied whole). */
  let mirrorTotalBefore = 0;

  beforeAll(async () => {
    fleet = await startMigrationLab(prefix, subnet);
    ({ t, lab } = fleet);
    [lab1, lab2] = lab.hosts as [Host, Host];
    shared = mkdtempSync(`/tmp/${prefix}-shared-`);
    const client = t.client();
    const storage = new StorageClient(client);
    // A base of random bytes on lab1's own datastore, under the VM's second disk.
    const file = join(fleet.labDir, 'base.raw');
    writeFileSync(file, randomBytes(BASE_MIB * MiB));
    const base = await storage.importDisk({ datastore: 'lab1-local', name: 'qbase', source: file, format: 'raw' });
    rmSync(file);
    await client.createVm({ name: vm, memory: '192M', host: 'lab1', start: false });
    await storage.attachDisk(vm, base.id);
    const started = await client.startVm(vm);
    expect((await client.waitTask(started.task?.id as string)).state).toBe('succeeded');
    await sh(client, vm, 'dd if=/dev/urandom of=/data/blob bs=1M count=24 2>/dev/null && sync');
    blobMd5 = await sh(client, vm, 'md5sum /data/blob');
    await startWriter(client, vm);
    vmRecord = await client.getVm(vm);
  }, 240_000);

  afterAll(async () => {
    if (process.env.OMQ_KEEP_LOGS) for (const h of lab?.hosts ?? []) copyFileSync(h.log, `${process.env.OMQ_KEEP_LOGS}-${h.name}.log`);
    await fleet?.close();
    if (shared) rmSync(shared, { recursive: true, force: true });
  }, 120_000);

  /** The VM runs on at lab1 in the same QEMU, writing, its blob unchanged, and lab2 has nothing of it. */
  async function ranOnAtSource(): Promise<void> {
    const client = t.client();
    const after = (await client.getVm(vm)) as VmRecord & { host: string };
    expect([after.host, after.state, after.runtime?.pid]).toEqual(['lab1', 'running', vmRecord.runtime?.pid]);
    await counterGoesOn(client, vm, 30_000);
    expect(await sh(client, vm, 'md5sum /data/blob')).toBe(blobMd5);
    await expectNoGapInLines(client, vm);
    // (Its QEMU, folder and RAM file are at lab1: no path link or key of the migration is.)
    expect(leftovers(vmRecord.id, lab1).filter((l) => l.startsWith('link') || l.startsWith('key'))).toEqual([]);
    await eventually(() => leftovers(vmRecord.id, lab2).length === 0, 30_000, `nothing of the VM at lab2 (${leftovers(vmRecord.id, lab2).join(', ')})`);
  }

  it('a cancel during the disk mirror: the VM runs on at lab1 with its disks unchanged, nothing at lab2', async () => {
    const client = t.client();
    // 4 MiB/s: the mirror (the blob, the whole base) takes several seconds.
    const started = await new MigrateClient(client).migrate(vm, { to: 'lab2', maxBandwidth: '4M' });
    const taskId = started.task?.id as string;
    let seen: MigrationProgress | undefined;
    await eventually(async () => {
      seen = progressOf(await client.getTask(taskId));
      return seen?.phase === 'disks' && seen.diskDoneBytes > 0;
    }, 60_000, 'the disk mirror to run');
    mirrorTotalBefore = seen?.diskTotalBytes ?? 0;
    expect(mirrorTotalBefore).toBeGreaterThan((24 + BASE_MIB) * MiB);
    const cancelled = await client.cancelTask(taskId);
    expect(cancelled.state).toBe('failed');
    expect(cancelled.error?.code).toBe('TASK_CANCELLED');
    expect(progressOf(cancelled)?.diskDoneBytes ?? 0).toBeLessThan(mirrorTotalBefore);
    await ranOnAtSource();
  }, 180_000);

  it("lab2's agent killed during pre-copy: the transfer stops, the VM runs on at lab1; the restarted agent is left nothing", async () => {
    const client = t.client();
    const started = await new MigrateClient(client).migrate(vm, { to: 'lab2', maxBandwidth: '16M', postcopy: 'never' });
    const taskId = started.task?.id as string;
    await eventually(async () => progressOf(await client.getTask(taskId))?.phase === 'memory', 90_000, 'pre-copy to run');
    expect(qemusOf(vmRecord.id, lab2.namespace).length).toBe(1);
    process.kill(lab2.pid as number, 'SIGKILL');
    const t0 = Date.now();
    const error = await client.waitTask(taskId).then(
      () => null,
      (err: unknown) => err as { code?: string; message?: string },
    );
    expect(error?.code, error?.message).toBe('MIGRATION_FAILED');
    expect(error?.message).toMatch(/destination lab2/);
    // Stopped when the agent went, not when the copy would have ended.
    expect(Date.now() - t0).toBeLessThan(15_000);
    // Its QEMU, in its own session, outlived the agent; the restarted agent and the controller's re-adoption remove what is left.
    const again = await labUp(2, { dir: fleet?.labDir as string, prefix, subnet }, t.home);
    expect(again.hosts.map((h) => h.action)).toEqual(['running', 'restarted']);
    lab2 = again.hosts[1] as Host;
    await eventually(async () => (await new HostClient(client).get('lab2')).state === 'ready', 60_000, 'lab2 to be ready again');
    await ranOnAtSource();
  }, 240_000);

  it('the path cut during pre-copy: no post-copy over the dead path; the migration fails at its time budget and the VM runs on at lab1', async () => {
    const client = t.client();
    const started = await new MigrateClient(client).migrate(vm, { to: 'lab2', maxBandwidth: '16M', timeoutS: 25 });
    const taskId = started.task?.id as string;
    await eventually(async () => progressOf(await client.getTask(taskId))?.phase === 'memory', 90_000, 'pre-copy to run');
    const [link] = pathLinks(lab2.namespace);
    expect(link).toBeDefined();
    execFileSync('ip', ['-n', lab2.namespace, 'link', 'set', link as string, 'down']);
    const error = await client.waitTask(taskId).then(
      () => null,
      (err: unknown) => err as { code?: string; message?: string },
    );
    // Stopped by the time budget (nothing moving), or earlier when QEMU stopped answering on the cut path (its connections were ended).
    expect(['MIGRATION_TIMEOUT', 'MIGRATION_FAILED'], error?.message).toContain(error?.code);
    const task = await client.getTask(taskId);
    expect(progressOf(task)?.phase).not.toBe('postcopy');
    await ranOnAtSource();
  }, 240_000);

  it('over a base seeded to lab2 first: the base is skipped, only the deltas travel, the data intact', async () => {
    const client = t.client();
    const seeded = await t.cli(['disk', 'seed', 'lab1-local/qbase', '--to', 'lab2', '--json']);
    expect(seeded.code, seeded.stderr).toBe(0);
    const started = await new MigrateClient(client).migrate(vm, { to: 'lab2', postcopy: 'never' });
    const task = await client.waitTask(started.task?.id as string);
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    const result = task.result as MigrateResult;
    const baseDisk = vmRecord.spec.disks.find((d) => d.backing.some((b) => b.startsWith('ds.')));
    expect(result.storage.sync).toEqual({ disk0: 'top', [baseDisk?.id as string]: 'top' });
    const skipped = result.storage.skipped.find((s) => s.disk === baseDisk?.id);
    expect(skipped?.bytes).toBe(BASE_MIB * MiB);
    expect(skipped?.destinationBases[0]).toMatch(/^ds\./);
    expect(skipped?.destinationBases).not.toEqual(skipped?.bases);
    // The same disks less the base (random bytes: sent, it would have been whole; the guest's writes since add a little).
    expect(result.diskBytes).toBeGreaterThan(24 * MiB);
    expect(result.diskBytes).toBeLessThan(mirrorTotalBefore - (BASE_MIB / 2) * MiB);
    const moved = (await client.getVm(vm)) as VmRecord & { host: string };
    expect(moved.host).toBe('lab2');
    expect(moved.spec.disks.find((d) => d.id === baseDisk?.id)?.backing).toEqual(skipped?.destinationBases);
    expect(await sh(client, vm, 'md5sum /data/blob')).toBe(blobMd5);
    await expectNoGapInLines(client, vm);
    expect(leftovers(vmRecord.id, lab1)).toEqual([]);
    await client.killVm(vm);
    await client.deleteVm(vm);
  }, 240_000);

  it('a VM whose disk is on a datastore both hosts see migrates with its disk kept where it is: no disk byte sent', async () => {
    const client = t.client();
    const storage = new StorageClient(client);
    await storage.addDatastore(`${prefix}-sh`, shared, 'lab1');
    await storage.attachDatastore(`${prefix}-sh`, 'lab2');
    // It boots the default guest's kernel from the datastore, and its data disk is a copy there.
    const guest = await loadDefaultGuest();
    for (const [from, to] of [[guest.kernel, 'vmlinuz'], [guest.initrd, 'initrd.img'], [guest.dataDisk, 'data.qcow2']] as const) {
      copyFileSync(from, join(shared, to));
      chmodSync(join(shared, to), 0o600);
    }
    const name = 'omq-shared';
    const made = await client.createVm({ name, memory: '128M', host: 'lab1', kernel: { path: join(shared, 'vmlinuz'), initrd: join(shared, 'initrd.img'), cmdline: `${guest.cmdline} offshoot.hostname=${name}` }, disks: [{ path: join(shared, 'data.qcow2') }], start: true });
    const boot = await client.waitTask(made.task?.id as string);
    expect(boot.state, JSON.stringify(boot.error)).toBe('succeeded');
    const created = await client.getVm(name);
    expect(created.spec.disks.map((d) => d.id)).toEqual(['disk0']);
    expect(created.spec.disks[0]?.file).toMatch(/^ds\./);
    await sh(client, name, 'dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && sync');
    const md5 = await sh(client, name, 'md5sum /data/blob');
    for (const [to, storageMode] of [['lab2', 'auto'], ['lab1', 'shared']] as const) {
      const started = await new MigrateClient(client).migrate(name, { to, storage: storageMode, postcopy: 'never' });
      const task = await client.waitTask(started.task?.id as string);
      expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
      const result = task.result as MigrateResult;
      expect(result.storage).toMatchObject({ copied: [], shared: ['disk0'], sync: {} });
      expect(result.diskBytes).toBe(0);
      const moved = (await client.getVm(name)) as VmRecord & { host: string };
      expect(moved.host).toBe(to);
      expect(moved.spec.disks[0]?.file).toBe(created.spec.disks[0]?.file);
      expect(await sh(client, name, 'md5sum /data/blob')).toBe(md5);
    }
    expect(leftovers(created.id, lab2)).toEqual([]);
    await client.killVm(name);
    await client.deleteVm(name);
  }, 240_000);
});
