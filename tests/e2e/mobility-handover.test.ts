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
// Nothing of the lab is left afterwards.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningDaemon } from '../../src/api/index.ts';
import { startDaemon } from '../../src/api/index.ts';
import { MobilityClient, StorageClient } from '../../src/client/index.ts';
import { silentLogger } from '../../src/common/index.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { CopyJobRecord, DiskRecord, HandoverResult } from '../../src/vm/index.ts';
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

describe('mobility: copy jobs handed between lab hosts', () => {
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
