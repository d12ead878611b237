// Copy jobs handed between hosts, on the real kernel: a control plane and two
// lab hosts (network namespaces running `offshoot agent serve`) that both see
// two folders, registered as two shared datastores. A disk on the first is
// moved to the second by a copy job on lab1, throttled so that it is still
// copying when it is handed over:
// - by request (`offshoot job move JOB --to lab2`): lab1's worker stops after
//   its chunk in flight and lab2's goes on from the progress file; the result
//   says what each host copied (lab2 less than the whole), and the target
//   hashes equal to the source. A hand-over to a host that does not see the
//   datastores is refused first, and the job goes on where it was;
// - when lab1 is drained (`offshoot host drain lab1`), by itself;
// - on host death (lab1's agent killed with SIGKILL mid-copy): once lab1
//   missed its lease, the job goes on on lab2 from where lab1 got to.
// Cross-site moves by content id: a base on lab1's own datastore (a disk a VM
// of lab1 is attached to) is seeded to lab2 (`offshoot disk seed --to lab2`:
// lab2 reads it from lab1's file server), keeping its content id; lab2 then
// answers that it holds that id (`host content`), a second seed copies
// nothing, and the VM's move plan to lab2 skips the base. A seeded copy whose
// bytes were tampered with still matches by id, but is caught by --verify
// (the plan sends it; a seed with --verify copies it anew).
// Nothing of the lab is left afterwards.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningDaemon } from '../../src/api/index.ts';
import { startDaemon } from '../../src/api/index.ts';
import type { MovePlan } from '../../src/client/index.ts';
import { MobilityClient, StorageClient } from '../../src/client/index.ts';
import { silentLogger } from '../../src/common/index.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { ColdMoveResult, CopyJobRecord, DiskRecord, HandoverResult, MoveVmStarted, SeedResult } from '../../src/vm/index.ts';
import { eventually, makeTestHome } from '../harness.ts';
import type { TestHome } from '../harness.ts';

const prefix = `omb${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.214.${130 + ((randomBytes(1)[0] as number) % 40)}.0/24`;
const MiB = 2 ** 20;
const DISK_MIB = 64;

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

describe('mobility between lab hosts: copy hand-over, seeding by content id', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let lab: UpResult;
  let labDir: string;
  let shared: string;
  let storage: StorageClient;
  const sources = new Map<string, string>();

  /** A disk of random bytes on the source datastore (imported through lab1), and the sha256 of its bytes. */
  async function randomDisk(name: string): Promise<DiskRecord> {
    const file = join(shared, `${name}.raw`);
    writeFileSync(file, randomBytes(DISK_MIB * MiB));
    const disk = await storage.importDisk({ datastore: `${prefix}-src`, name, source: file, format: 'raw' });
    sources.set(disk.id, await sha256(file));
    rmSync(file);
    return disk;
  }

  async function midCopy(job: CopyJobRecord): Promise<CopyJobRecord> {
    let current = job;
    await eventually(async () => {
      current = await storage.getJob(job.id);
      return current.state === 'running' && current.progress.bytesDone >= 8 * MiB;
    }, 60_000, `copy job ${job.id} to be mid-copy`);
    expect(current.progress.bytesDone).toBeLessThan(DISK_MIB * MiB);
    return current;
  }

  /** The host path of the moved disk's file (the target datastore's folder is the same on every host). */
  async function targetPath(job: CopyJobRecord): Promise<string> {
    const file = job.files[0]?.target as string;
    return join(shared, 'dst', file.slice(file.indexOf(':') + 1));
  }

  beforeAll(async () => {
    t = makeTestHome();
    // 4 MiB/s in 1 MiB chunks: a 64 MiB disk copies for about 16 s, long enough to hand it over mid-copy.
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir, logger: silentLogger, hostHeartbeatMs: 300, hostLeaseMs: 2_000, copy: { chunkMiB: 1, maxMiBPerSecond: 4 } });
    labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
    shared = mkdtempSync(`/tmp/${prefix}-shared-`);
    for (const d of ['src', 'dst']) mkdirSync(join(shared, d), { mode: 0o700 });
    lab = await labUp(2, { dir: labDir, prefix, subnet }, t.home);
    storage = new StorageClient(t.client());
    for (const d of ['src', 'dst']) {
      await storage.addDatastore(`${prefix}-${d}`, join(shared, d), 'lab1');
      await storage.attachDatastore(`${prefix}-${d}`, 'lab2');
    }
  }, 180_000);

  afterAll(async () => {
    await daemon?.close();
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    rmSync(shared, { recursive: true, force: true });
    await t?.cleanup();
  }, 120_000);

  it('hands a copy job over by request: lab2 finishes what lab1 started, without starting over', async () => {
    const disk = await randomDisk('req');
    const job = await storage.moveDisk(disk.id, `${prefix}-dst`);
    expect(daemon.engine.hostName(job.hostId)).toBe('lab1');
    await midCopy(job);

    // A host that does not see the datastores is refused before anything stops.
    const own = daemon.engine.fleet.hosts().find((h) => h.url.startsWith('local:'))?.name as string;
    await expect(new MobilityClient(t.client()).moveJob(job.id, own)).rejects.toMatchObject({ code: 'HANDOVER_REFUSED', status: 409 });
    expect((await storage.getJob(job.id)).state).toBe('running');

    const moved = await t.cli(['job', 'move', job.id, '--to', 'lab2', '--json']);
    expect(moved.code, moved.stderr).toBe(0);
    const result = JSON.parse(moved.stdout) as HandoverResult;
    expect(result.job.state, JSON.stringify(result.job.error)).toBe('succeeded');
    const byHost = Object.fromEntries(result.hosts.map((h) => [h.host, h.bytesCopied]));
    expect(Object.keys(byHost)).toEqual(['lab1', 'lab2']);
    expect(byHost.lab1).toBeGreaterThan(0);
    expect(byHost.lab2).toBeGreaterThan(0);
    expect(byHost.lab2).toBeLessThan(DISK_MIB * MiB);
    // Nothing copied twice but the chunk in flight.
    expect((byHost.lab1 as number) + (byHost.lab2 as number)).toBeLessThanOrEqual((DISK_MIB + 1) * MiB);
    expect(result.job.history.filter((h) => h.handedOverFrom !== undefined).map((h) => h.reason)).toEqual(['requested']);
    expect(await sha256(await targetPath(result.job))).toBe(sources.get(disk.id));
  }, 180_000);

  it('hands the copy jobs of a drained host over by themselves', async () => {
    const disk = await randomDisk('drain');
    const job = await storage.moveDisk(disk.id, `${prefix}-dst`);
    expect(daemon.engine.hostName(job.hostId)).toBe('lab1');
    await midCopy(job);
    expect((await t.cli(['host', 'drain', 'lab1'])).code).toBe(0);
    let done = job;
    await eventually(async () => {
      done = await storage.getJob(job.id);
      return done.state !== 'running' && done.state !== 'queued';
    }, 120_000, 'the job to end on lab2');
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect(daemon.engine.hostName(done.hostId)).toBe('lab2');
    expect(done.history.filter((h) => h.handedOverFrom !== undefined).map((h) => h.reason)).toEqual(['drained']);
    expect(await sha256(await targetPath(done))).toBe(sources.get(disk.id));
    expect((await t.cli(['host', 'ready', 'lab1'])).code).toBe(0);
  }, 180_000);

  it('seeds a base to another host by content id; the move plan skips it, and --verify catches a tampered copy', async () => {
    const mobility = new MobilityClient(t.client());
    // A base on lab1's own datastore: a disk of random bytes a VM of lab1 is attached to (which freezes it).
    const file = join(shared, 'base.raw');
    writeFileSync(file, randomBytes(8 * MiB));
    const base = await storage.importDisk({ datastore: 'lab1-local', name: 'base', source: file, format: 'raw' });
    const baseHash = await sha256(file);
    rmSync(file);
    await t.client().createVm({ name: 'mover', memory: '128M', host: 'lab1', start: false });
    await storage.attachDisk('mover', base.id);
    const frozen = await storage.getDisk(base.id);
    expect(frozen.readOnly).toBe(true);

    // Before the seed lab2 holds nothing of it, and a move would send the base.
    expect((await mobility.findContent('lab2', [[base.contentId]])).answers[0]?.file).toBeNull();
    const before = await mobility.movePlan('mover', 'lab2');
    const diskBefore = before.disks.find((d) => d.layers.some((l) => l.file === base.file));
    expect(diskBefore).toMatchObject({ skipAll: false, heldLayers: 0, sendBytes: 8 * MiB });

    const seeded = await t.cli(['disk', 'seed', 'lab1-local/base', '--to', 'lab2', '--json']);
    expect(seeded.code, seeded.stderr).toBe(0);
    const seed = JSON.parse(seeded.stdout) as SeedResult;
    expect(seed).toMatchObject({ datastore: 'lab2-local', host: 'lab2', skipped: [], copied: [{ disk: 'lab1-local/base', contentId: base.contentId, bytes: 8 * MiB }] });
    expect(seed.job?.state, JSON.stringify(seed.job?.error)).toBe('succeeded');
    expect(seed.job?.files[0]?.sourceHostId).toBeDefined();
    const copy = (await storage.listDisks('lab2-local')).find((d) => d.contentId === base.contentId) as DiskRecord;
    expect(copy).toMatchObject({ name: 'base', readOnly: true });
    const lab2Local = await storage.getDatastore('lab2-local');
    const copyPath = join(lab2Local.path, copy.file.slice(copy.file.indexOf(':') + 1));
    expect(await sha256(copyPath)).toBe(baseHash);

    // lab2 answers by content id; a second seed copies nothing.
    const found = JSON.parse((await t.cli(['host', 'content', 'lab2', base.contentId, 'cid-nothing-here', '--json'])).stdout) as { answers: Array<{ file: string | null }> };
    expect(found.answers.map((a) => a.file)).toEqual([copy.file, null]);
    const again = await mobility.seedDisk('lab1-local/base', 'lab2', { wait: true });
    expect(again.job).toBeNull();
    expect(again.skipped.map((s) => s.file)).toEqual([copy.file]);

    // The move plan skips the seeded base: the new top goes over lab2's copy.
    const plan = JSON.parse((await t.cli(['vm', 'move-plan', 'mover', '--to', 'lab2', '--json'])).stdout) as MovePlan;
    const disk = plan.disks.find((d) => d.layers.some((l) => l.file === base.file));
    expect(disk).toMatchObject({ skipAll: true, heldLayers: 1, skippedBytes: 8 * MiB, sendBytes: 0, destBacking: [{ file: copy.file, format: 'raw' }] });
    expect((await mobility.movePlan('mover', 'lab2', true)).disks.find((d) => d.diskId === disk?.diskId)).toMatchObject({ skipAll: true, mismatch: null });

    // A tampered copy: same id, other bytes. Only --verify sees it; a verified seed copies the base anew.
    const fd = openSync(copyPath, 'r+');
    writeSync(fd, randomBytes(4096), 0, 4096, 1 * MiB);
    closeSync(fd);
    expect((await mobility.movePlan('mover', 'lab2')).disks.find((d) => d.diskId === disk?.diskId)?.skipAll).toBe(true);
    const verified = (await mobility.movePlan('mover', 'lab2', true)).disks.find((d) => d.diskId === disk?.diskId);
    expect(verified).toMatchObject({ skipAll: false, heldLayers: 0, sendBytes: 8 * MiB });
    expect(verified?.mismatch?.file).toBe(copy.file);
    const reseed = await mobility.seedDisk('lab1-local/base', 'lab2', { verify: true, wait: true });
    expect(reseed.mismatch?.file).toBe(copy.file);
    expect(reseed.job?.state).toBe('succeeded');
    const fresh = (await storage.listDisks('lab2-local')).find((d) => d.contentId === base.contentId && d.id !== copy.id) as DiskRecord;
    expect(await sha256(join(lab2Local.path, fresh.file.slice(fresh.file.indexOf(':') + 1)))).toBe(baseHash);
  }, 240_000);

  it('moves a stopped VM cold whose base was seeded: only its tops travel, it starts at the destination and the base is intact', async () => {
    const mobility = new MobilityClient(t.client());
    const file = join(shared, 'cold-base.raw');
    writeFileSync(file, randomBytes(8 * MiB));
    const base = await storage.importDisk({ datastore: 'lab1-local', name: 'cold-base', source: file, format: 'raw' });
    const baseHash = await sha256(file);
    rmSync(file);
    await t.client().createVm({ name: 'cold', memory: '128M', host: 'lab1', start: false });
    await storage.attachDisk('cold', base.id);
    expect((await mobility.seedDisk('lab1-local/cold-base', 'lab2', { wait: true })).job?.state).toBe('succeeded');
    const vm = await t.client().getVm('cold');

    const moved = await t.cli(['vm', 'move', 'cold', '--to', 'lab2', '--json']);
    expect(moved.code, moved.stderr).toBe(0);
    const out = JSON.parse(moved.stdout) as MoveVmStarted;
    expect(out.mode).toBe('cold');
    expect(out.task.state).toBe('succeeded');
    const result = out.task.result as ColdMoveResult;
    const held = out.disks.find((d) => d.layers.some((l) => l.file === base.file));
    expect(held).toMatchObject({ skipAll: true, skippedBytes: 8 * MiB });
    expect(result.skipped.find((d) => d.disk === held?.diskId)).toMatchObject({ bytes: 8 * MiB });
    // Only the tops travel (a never-started VM's deltas are nearly empty), never the 8 MiB base.
    expect(result.sent.map((d) => d.disk).sort()).toEqual(vm.spec.disks.map((d) => d.id).sort());
    expect(result.sentBytes).toBeLessThan(8 * MiB);
    const after = await t.client().getVm('cold');
    expect(after.hostId).not.toBe(vm.hostId);
    const copy = (await storage.listDisks('lab2-local')).find((d) => d.contentId === base.contentId) as DiskRecord;
    expect(after.spec.disks.find((d) => d.id === held?.diskId)?.backing).toEqual([copy.file]);
    const lab2Local = await storage.getDatastore('lab2-local');
    expect(await sha256(join(lab2Local.path, copy.file.slice(copy.file.indexOf(':') + 1)))).toBe(baseHash);

    const started = await t.client().startVm('cold', { timeoutMs: 120_000 });
    if (started.task) await t.client().waitTask(started.task.id);
    expect((await t.client().getVm('cold')).state).toBe('running');
    expect((await t.client().getVm('cold')).hostId).toBe(after.hostId);
    const stopped = await t.client().stopVm('cold', { timeoutMs: 60_000 });
    if (stopped.task) await t.client().waitTask(stopped.task.id);
  }, 240_000);

  it('hands a copy job over when its host dies (agent killed with SIGKILL): lab2 goes on from where lab1 got to', async () => {
    const disk = await randomDisk('kill');
    const job = await storage.moveDisk(disk.id, `${prefix}-dst`);
    expect(daemon.engine.hostName(job.hostId)).toBe('lab1');
    const before = await midCopy(job);
    process.kill(lab.hosts[0]?.pid as number, 'SIGKILL');

    let done = job;
    await eventually(async () => {
      done = await storage.getJob(job.id);
      // The job fails on lab1 (its agent does not answer) until lab1 misses its lease and the job goes to lab2.
      return done.state === 'succeeded' || done.state === 'cancelled' || (done.state === 'failed' && daemon.engine.hostName(done.hostId) === 'lab2');
    }, 120_000, 'the job to end on lab2');
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect(daemon.engine.hostName(done.hostId)).toBe('lab2');
    const handover = done.history.find((h) => h.handedOverFrom !== undefined);
    expect(handover?.reason).toBe('lost');
    const lab2Bytes = done.history.filter((h) => h.handedOverFrom === undefined && daemon.engine.hostName(h.hostId) === 'lab2').reduce((n, h) => n + (h.bytesCopied ?? 0), 0);
    expect(lab2Bytes).toBeGreaterThan(0);
    expect(lab2Bytes).toBeLessThanOrEqual(DISK_MIB * MiB - before.progress.bytesDone + 2 * MiB);
    expect(await sha256(await targetPath(done))).toBe(sources.get(disk.id));
  }, 240_000);
});
