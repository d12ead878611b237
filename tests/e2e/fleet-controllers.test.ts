// Two controllers over one PostgreSQL and two lab hosts, end to end (issue
// 11): controllers A and B are `offshoot serve --no-local-host` processes with
// homes of their own over one database (the run's temporary cluster, a
// database of this test's), with a 3 s lease (OFFSHOOT_LEASE_MS); lab1 and
// lab2 are network namespaces running `offshoot agent serve`, registered
// through A. A VM created through A runs a command and stops through B, and
// B's SSE client hears of it; two forks of one VM asked of A and B at once
// make one fork and one BUSY/ILLEGAL_STATE; A killed with SIGKILL at a fork's
// `fork.prepared` point (OFFSHOOT_TEST_FAULTS gates) has its fork rolled back
// by B once A's lease expired, while the CLI given both controllers' URLs
// goes on through B; A killed while a lab host copies a disk for a
// copy job has the job finished by B, which follows the copy the host ran on
// (one copy operation on the host). After each, each lab host's invariants
// hold: no orphan QEMU, no leaked file, nothing open to other users.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostClient, OffshootClient, StorageClient } from '../../src/client/index.ts';
import { isProcessAlive } from '../../src/common/index.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import { freshTestDatabase } from '../../src/store/pg-test-cluster.ts';
import type { CopyJobRecord, EngineEvent, TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { CLI, eventually, makeTestHome, waitForProcessExit } from '../harness.ts';
import { homeProblems } from '../invariants.ts';

const prefix = `ofl${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.214.${20 + ((randomBytes(1)[0] as number) % 40)}.0/24`;
const LEASE_MS = 3_000;
const LIVE = ['running', 'paused', 'starting', 'stopping', 'forking', 'checkpointing', 'unknown'];

interface Controller {
  t: TestHome;
  gates: string;
  pid: number;
  client: OffshootClient;
}

describe('fleet: two controllers over one PostgreSQL and two lab hosts', () => {
  let database: string;
  let a: Controller;
  let b: Controller;
  let lab: UpResult;
  let labDir: string;
  const seenOnB: EngineEvent[] = [];
  const sse = new AbortController();

  /** `offshoot serve --detach --no-local-host` for a controller's home; resolves once it answers. */
  const serve = async (c: Omit<Controller, 'pid' | 'client'> & Partial<Controller>): Promise<Controller> => {
    const r = await c.t.cli(['serve', '--detach', '--json', '--no-local-host']);
    if (r.code !== 0) throw new Error(`serve failed: ${r.stderr}\n${existsSync(join(c.t.home, 'daemon.log')) ? readFileSync(join(c.t.home, 'daemon.log'), 'utf8').slice(-3000) : ''}`);
    const { pid } = JSON.parse(r.stdout) as { pid: number; url: string };
    return { ...c, pid, client: c.t.client() };
  };
  const controllerHome = (name: string): Omit<Controller, 'pid' | 'client'> => {
    const t = makeTestHome();
    const gates = mkdtempSync(`/tmp/${prefix}-gates-${name}-`);
    Object.assign(t.env, { OFFSHOOT_DATABASE_URL: database, OFFSHOOT_LEASE_MS: String(LEASE_MS), OFFSHOOT_TEST_FAULTS: `gates=${gates}`, OFFSHOOT_COPY_CHUNK_MIB: '1', OFFSHOOT_COPY_MAX_MIBPS: '4' });
    return { t, gates };
  };
  /** A again after a test killed it (the same home: the same controller id, its next life). */
  const ensureA = async () => {
    if (!isProcessAlive(a.pid)) a = await serve(a);
  };
  const killA = async () => {
    process.kill(a.pid, 'SIGKILL');
    await waitForProcessExit(a.pid);
  };
  const ended = async (client: OffshootClient, id: string, ms = 120_000): Promise<TaskRecord> => {
    let task: TaskRecord | undefined;
    await eventually(async () => (task = await client.getTask(id)).state !== 'running', ms, `task ${id} to end`);
    return task as TaskRecord;
  };
  const labHost = (name: string) => lab.hosts.find((h) => h.name === name) as UpResult['hosts'][number];

  /** The invariants of one lab host's home, from the records of the VMs and files on that host. */
  const hostProblems = async (name: string): Promise<string[]> => {
    const host = (await new HostClient(b.client).list()).find((h) => h.name === name);
    // As snapshotHome (tests/invariants.ts), without the controller's own host: it has none.
    const st = new StorageClient(b.client);
    const [vms, checkpoints, allDatastores, disks, pools, jobs] = await Promise.all([b.client.listVms(), b.client.listCheckpoints(), st.listDatastores(), st.listDisks(), st.listPools(), st.listJobs()]);
    const s = { vms, checkpoints, datastores: allDatastores, disks, pools, jobs };
    const datastores = s.datastores.filter((d) => d.hosts.some((h) => h.hostId === host?.id));
    const names = new Set(datastores.map((d) => d.name));
    const onHost = { templates: [], vms: s.vms.filter((v) => v.hostId === host?.id), checkpoints: s.checkpoints.filter((c) => c.hostId === host?.id), datastores, disks: s.disks.filter((d) => names.has(d.datastore)), pools: s.pools.filter((p) => names.has(p.datastore)), jobs: s.jobs.filter((j) => j.hostId === host?.id), allowedRoots: [] };
    return homeProblems(onHost, { home: labHost(name).home, memoryDir: labHost(name).memoryDir });
  };
  /** Problems settle asynchronously (a takeover collects garbage after its rollback): what stays is a leak. */
  const settledProblems = async (name: string): Promise<string[]> => {
    let problems = await hostProblems(name);
    for (let i = 0; i < 50 && problems.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      problems = await hostProblems(name);
    }
    return problems;
  };

  beforeAll(async () => {
    database = await freshTestDatabase('osh_fleet_e2e');
    a = await serve(controllerHome('a'));
    b = await serve(controllerHome('b'));
    labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
    lab = await labUp(2, { dir: labDir, prefix, subnet }, a.t.home);
    void (async () => {
      for await (const event of b.client.events(sse.signal)) seenOnB.push(event);
    })().catch(() => undefined);
  }, 240_000);

  afterAll(async () => {
    sse.abort();
    const alive = [a, b].find((c) => c && isProcessAlive(c.pid));
    if (alive) {
      for (const vm of await alive.client.listVms().catch(() => [])) if (LIVE.includes(vm.state)) await alive.client.killVm(vm.id).catch(() => undefined);
    }
    // Stop the controllers first: their homes hold no VM of their own (the lab hosts have them).
    for (const c of [a, b]) {
      if (!c) continue;
      if (isProcessAlive(c.pid)) await c.t.cli(['daemon', 'stop']);
      rmSync(join(c.t.home, 'daemon.json'), { force: true });
      rmSync(c.gates, { recursive: true, force: true });
    }
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    for (const c of [a, b]) await c?.t.cleanup();
  }, 180_000);

  it('registers the lab hosts through A; B sees them; neither controller claims this machine as a host', async () => {
    expect(lab.hosts.map((h) => [h.name, h.registration.registered])).toEqual([
      ['lab1', true],
      ['lab2', true],
    ]);
    for (const c of [a, b]) expect((await new HostClient(c.client).list()).map((h) => [h.name, h.state]).sort()).toEqual([['lab1', 'ready'], ['lab2', 'ready']]);
  });

  it('runs a VM created through A and controls it through B, whose SSE client hears of it', async () => {
    const { vm, task } = await a.client.createVm({ name: 'web', memory: '192M', host: 'lab1', start: true });
    expect((await ended(b.client, task?.id as string)).state).toBe('succeeded');
    const out = await b.client.exec('web', '/bin/hostname', []);
    expect(out.stdout.toString().trim()).toBe('web');
    await eventually(() => seenOnB.some((e) => e.type === 'vm.created' && e.vm.id === vm.id), 10_000, 'B\'s SSE client to hear of the VM A created');
    const stop = await b.client.stopVm('web');
    expect((await ended(a.client, stop.task?.id as string)).state).toBe('succeeded');
    expect((await a.client.getVm('web')).state).toBe('stopped');
    const start = await b.client.startVm('web');
    expect((await ended(b.client, start.task?.id as string)).state).toBe('succeeded');
    expect(await settledProblems('lab1')).toEqual([]);
  });

  it('forks a VM once when A and B are asked at the same time; the other answers BUSY or ILLEGAL_STATE', async () => {
    const outcomes = await Promise.allSettled([a.client.forkVm('web', { count: 1 }), b.client.forkVm('web', { count: 1 })]);
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(won.length).toBe(1);
    expect(['BUSY', 'ILLEGAL_STATE', 'VM_BUSY']).toContain((lost[0]?.reason as { code: string }).code);
    const task = (won[0] as PromiseFulfilledResult<{ task?: TaskRecord }>).value.task as TaskRecord;
    const done = await ended(b.client, task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect((await b.client.listVms()).map((v) => v.name).sort()).toEqual(['web', 'web-c1']);
    await b.client.killVm('web-c1');
    await b.client.deleteVm('web-c1');
    expect(await settledProblems('lab1')).toEqual([]);
  });

  it('rolls back, through B, a fork whose controller A was killed after its host prepared it', async () => {
    await ensureA();
    const before = await b.client.getVm('web');
    writeFileSync(join(a.gates, 'fork.prepared.arm'), '');
    const { task } = await a.client.forkVm('web', { count: 2 });
    await eventually(() => existsSync(join(a.gates, 'fork.prepared.reached')), 120_000, 'A\'s fork to be prepared');
    const aUrl = a.client.url;
    await killA();
    // The CLI given both controllers (A first, with A's token) goes on through B.
    const list = await new Promise<string>((resolve, reject) =>
      execFile(CLI, ['vm', 'list', '--json'], { env: { ...a.t.env, OFFSHOOT_URL: `${aUrl},${b.client.url}`, OFFSHOOT_TOKEN: readFileSync(join(a.t.home, 'token'), 'utf8').trim() } }, (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout))),
    );
    expect((JSON.parse(list) as Array<{ name: string }>).map((v) => v.name)).toContain('web');
    const done = await ended(b.client, task?.id as string);
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('TASK_INTERRUPTED');
    expect(done.message).toContain('removed 2 unfinished children');
    const after = await b.client.getVm('web');
    expect(after.state).toBe('running');
    // Its QEMU is the one it had, or the one the fork's first step gave it (memory of its own, as 'web' maps the
    // template of the earlier fork): that step had completed and stays.
    expect(after.runtime?.pid === before.runtime?.pid || (before.runtime?.memory.mode === 'derived' && after.runtime?.memory.mode === 'owned')).toBe(true);
    expect((await b.client.listVms()).map((v) => v.name)).toEqual(['web']);
    expect((await b.client.exec('web', '/bin/hostname', [])).stdout.toString().trim()).toBe('web');
    expect(await settledProblems('lab1')).toEqual([]);
    rmSync(join(a.gates, 'fork.prepared.reached'), { force: true });
  });

  it('finishes, through B, a copy job whose controller A was killed while the host copied: one copy on the host', async () => {
    await ensureA();
    const lab2 = labHost('lab2');
    const storage = new StorageClient(a.client);
    // 40 MiB of random data on lab2, imported as a disk, then moved to a second datastore there (a copy job).
    mkdirSync(join(lab2.home, 'import'), { recursive: true, mode: 0o700 });
    const raw = join(lab2.home, 'import', 'data.raw');
    execFileSync('sh', ['-c', `umask 077; dd if=/dev/urandom of=${raw} bs=1M count=40 2>/dev/null`]);
    await eventually(async () => (await storage.listDatastores()).some((d) => d.name === 'lab2-local'), 30_000, 'the default datastore of lab2');
    await storage.importDisk({ datastore: 'lab2-local', name: 'big', source: raw });
    rmSync(join(lab2.home, 'import'), { recursive: true, force: true });
    await storage.addDatastore('lab2-b', join(lab2.home, 'ds-b'), 'lab2');
    const job0 = await storage.moveDisk('lab2-local/big', 'lab2-b');
    const job = async (id: string) => (await new StorageClient(b.client).getJob(id)) as CopyJobRecord;
    await eventually(async () => (await job(job0.id)).progress.chunksDone >= 5, 60_000, 'the copy to be under way');
    await killA();
    const taskId = (await job(job0.id)).taskId as string;
    await eventually(async () => ['succeeded', 'failed', 'cancelled', 'paused'].includes((await job(job0.id)).state), 120_000, 'the copy job to end');
    const finished = await job(job0.id);
    expect(finished.state, JSON.stringify(finished.error)).toBe('succeeded');
    expect((await b.client.getTask(taskId)).state).toBe('succeeded');
    expect((await new StorageClient(b.client).listDisks()).filter((d) => d.name === 'big').map((d) => d.datastore)).toEqual(['lab2-b']);
    // The host ran one copy operation for the job's file: B followed the one A had started.
    const copies = readdirSync(join(lab2.home, 'operations'))
      .filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(readFileSync(join(lab2.home, 'operations', f), 'utf8')) as { call: string; operationId: string })
      .filter((o) => o.call === 'copyFile');
    expect(copies.length).toBe(1);
    expect(finished.progress.chunksCopied).toBeLessThanOrEqual(finished.progress.chunksTotal);
    expect(await settledProblems('lab2')).toEqual([]);
  });
});
