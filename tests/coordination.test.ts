// Two controllers over one PostgreSQL inventory (issue 11), against the fake
// agent served over HTTP as the fleet's one host (fast; the same paths run
// against real QEMU and lab hosts in tests/e2e/fleet-controllers.test.ts).
// Controller A is a real `offshoot serve --no-local-host` process, so it can
// be killed with SIGKILL; controller B is the same daemon in this process.
// Any controller serves any request with either home's token, an event raised
// on one reaches the other's SSE clients, two forks of one VM at once make one
// fork and one clear error, and a controller killed mid-fork or mid-copy has
// its task taken over by the other once its lease expired: the fork rolled
// back, the copy finished, each exactly once, nothing left on the host. The
// fake agent's hold() keeps an operation in flight on the host while its
// controller dies, as a real agent (a process of its own) outlives it.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningDaemon } from '../src/api/index.ts';
import { startDaemon } from '../src/api/index.ts';
import { HostClient, OffshootClient, StorageClient } from '../src/client/index.ts';
import type { DaemonFile } from '../src/common/index.ts';
import { isProcessAlive, silentLogger } from '../src/common/index.ts';
import { FakeAgent } from '../src/protocol/index.ts';
import { KyselyInventory } from '../src/store/index.ts';
import { freshTestDatabase } from '../src/store/pg-test-cluster.ts';
import type { EngineEvent, TaskRecord, VmRecord } from '../src/vm/index.ts';
import type { ServedAgent } from './fake-fleet.ts';
import { serveAgent } from './fake-fleet.ts';
import { CLI, eventually, waitForProcessExit } from './harness.ts';

const TOKEN = 'c'.repeat(43);
/** The controllers' lease: a dead controller's tasks are taken over this long after its last renewal. */
const LEASE_MS = 1_500;

interface Controller {
  pid: number;
  url: string;
  token: string;
  client: OffshootClient;
}

/** `offshoot serve --no-local-host` over the database, in a process of its own; resolves once it answers. */
async function startController(home: string, database: string): Promise<Controller> {
  const env: NodeJS.ProcessEnv = { ...process.env, OFFSHOOT_HOME: home, OFFSHOOT_MEMORY_DIR: join(home, 'memory'), OFFSHOOT_DATABASE_URL: database, OFFSHOOT_LEASE_MS: String(LEASE_MS), OFFSHOOT_LOG_LEVEL: 'debug' };
  delete env.OFFSHOOT_URL;
  delete env.OFFSHOOT_TOKEN;
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const err = openSync(join(home, 'serve.err'), 'a');
  const child = spawn(CLI, ['serve', '--no-local-host'], { env, stdio: ['ignore', 'ignore', err] });
  const pid = child.pid as number;
  const file = join(home, 'daemon.json');
  let url = '';
  await eventually(async () => {
    if (!isProcessAlive(pid)) throw new Error(`controller A ended: ${readFileSync(join(home, 'serve.err'), 'utf8').slice(-2000)}`);
    if (!existsSync(file)) return false;
    const d = JSON.parse(readFileSync(file, 'utf8')) as DaemonFile;
    if (d.pid !== pid) return false;
    url = d.url;
    return true;
  }, 60_000, 'controller A to serve');
  const token = readFileSync(join(home, 'token'), 'utf8').trim();
  return { pid, url, token, client: new OffshootClient({ url, token }) };
}

describe('two controllers over one PostgreSQL, with the fake agent as their host', () => {
  let dir: string;
  let database: string;
  let agent: FakeAgent;
  let served: ServedAgent | undefined;
  let b: RunningDaemon;
  let bClient: OffshootClient;
  let a: Controller;
  let inventory: KyselyInventory;
  const seenOnB: EngineEvent[] = [];
  const sse = new AbortController();

  beforeAll(async () => {
    dir = mkdtempSync('/tmp/osh-coord-');
    database = await freshTestDatabase('osh_coord');
    agent = new FakeAgent({ hostId: 'fleet-host' });
    served = await serveAgent(agent, TOKEN);
    b = await startDaemon({ home: join(dir, 'b'), memoryDir: join(dir, 'b-memory'), database, noLocalHost: true, leaseMs: LEASE_MS, logger: silentLogger, hostHeartbeatMs: 200, hostLeaseMs: 2_000 });
    bClient = new OffshootClient({ url: b.url, token: b.token });
    await new HostClient(bClient).add('fake', served.url, TOKEN);
    a = await startController(join(dir, 'a'), database);
    inventory = await KyselyInventory.open(database);
    void (async () => {
      for await (const event of bClient.events(sse.signal)) seenOnB.push(event);
    })().catch(() => undefined);
  }, 120_000);

  afterAll(async () => {
    sse.abort();
    if (a && isProcessAlive(a.pid)) {
      process.kill(a.pid, 'SIGTERM');
      await waitForProcessExit(a.pid, 30_000).catch(() => process.kill(a.pid, 'SIGKILL'));
    }
    await b?.close();
    await inventory?.close();
    await served?.close();
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  /** Controller A again after a test killed it (its controller id is the same: it is A's next life). */
  const ensureA = async () => {
    if (!isProcessAlive(a.pid)) a = await startController(join(dir, 'a'), database);
  };
  const killA = async () => {
    process.kill(a.pid, 'SIGKILL');
    await waitForProcessExit(a.pid);
  };
  const vmNames = async () => (await bClient.listVms()).map((v) => v.name).sort();
  const ended = async (client: OffshootClient, id: string): Promise<TaskRecord> => {
    let task: TaskRecord | undefined;
    await eventually(async () => {
      task = await client.getTask(id);
      return task.state !== 'running';
    }, 30_000, `task ${id} to end`);
    return task as TaskRecord;
  };

  it('serves any request on any controller with either home\'s token, and events of one reach the SSE clients of the other', async () => {
    const { vm, task } = await a.client.createVm({ name: 'vm1', memory: '128M', start: true });
    // The task of A, followed through B.
    expect((await ended(bClient, task?.id as string)).state).toBe('succeeded');
    expect((await bClient.getVm('vm1')).state).toBe('running');
    await eventually(() => seenOnB.some((e) => e.type === 'vm.created' && e.vm.id === vm.id), 10_000, 'B\'s SSE client to hear of the VM A created');
    await eventually(() => seenOnB.some((e) => e.type === 'vm.state' && e.vm.id === vm.id && e.vm.state === 'running'), 10_000, 'B\'s SSE client to hear the VM run');
    // Stopped through B, seen stopped through A; started again through A with B's token.
    const stop = await bClient.stopVm('vm1');
    expect((await ended(a.client, stop.task?.id as string)).state).toBe('succeeded');
    expect((await a.client.getVm('vm1')).state).toBe('stopped');
    const aWithBToken = new OffshootClient({ url: a.url, token: b.token });
    const start = await aWithBToken.startVm('vm1');
    expect((await ended(bClient, start.task?.id as string)).state).toBe('succeeded');
    expect((await bClient.getVm('vm1')).state).toBe('running');
    await expect(new OffshootClient({ url: a.url, token: 'x'.repeat(43) }).listVms()).rejects.toMatchObject({ status: 401 });
  });

  it('lets one of two controllers fork a VM asked of both at once; the other gets a clear BUSY or ILLEGAL_STATE', async () => {
    const release = agent.hold('prepareFork');
    const outcomes = await Promise.allSettled([a.client.forkVm('vm1', { count: 1 }), bClient.forkVm('vm1', { count: 1 })]);
    release();
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(won.length).toBe(1);
    expect(lost.length).toBe(1);
    expect(['BUSY', 'ILLEGAL_STATE', 'VM_BUSY']).toContain((lost[0]?.reason as { code: string }).code);
    const task = (won[0] as PromiseFulfilledResult<{ task?: TaskRecord }>).value.task as TaskRecord;
    expect((await ended(bClient, task.id)).state).toBe('succeeded');
    expect(await vmNames()).toEqual(['vm1', 'vm1-c1']);
    expect(agent.calls.get('prepareFork')).toBe(1);
  });

  it('rolls back a fork whose controller was killed while its host prepared it: the other takes the task over after the lease, once, nothing left', async () => {
    await ensureA();
    const before = { vms: await bClient.listVms(), files: [...agent.files].sort(), templates: [...agent.templates].sort(), qemus: [...agent.vms.keys()].sort() };
    const prepares = agent.calls.get('prepareFork') ?? 0;
    const release = agent.hold('prepareFork');
    const { task } = await a.client.forkVm('vm1', { count: 2 });
    const taskId = task?.id as string;
    await eventually(() => (agent.calls.get('prepareFork') ?? 0) > prepares, 10_000, 'the host to be preparing the fork');
    await killA();
    // B's beat finds the lease expired and takes the task; only then does the host finish preparing.
    await eventually(async () => (await inventory.leases.get(taskId))?.owner === b.engine.controllerId, 20_000, 'B to take the fork over');
    release();
    const done = await ended(bClient, taskId);
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('TASK_INTERRUPTED');
    expect(done.message).toContain('removed 2 unfinished children');
    await b.engine.coordinator.settled();
    // The source runs on in its QEMU; no child, file or memory template of the fork is left on the host.
    const after = await bClient.listVms();
    // (A fork of a fork first gives the source memory of its own in a new QEMU; that step had completed and stays.)
    expect(after.map((v: VmRecord) => [v.name, v.state])).toEqual(before.vms.map((v: VmRecord) => [v.name, v.state]));
    for (const vm of after) expect(agent.vms.get(vm.id)?.runtime.pid).toBe(vm.runtime?.pid);
    expect([...agent.vms.keys()].sort()).toEqual(before.qemus);
    expect([...agent.files].sort()).toEqual(before.files);
    expect([...agent.templates].sort()).toEqual(before.templates);
    expect(agent.calls.get('prepareFork')).toBe(prepares + 1);
    // Exactly once: one takeover, by B, and no other task ran on the VM meanwhile.
    const tasks = (await bClient.listTasks(20)).filter((t) => t.kind === 'vm.fork');
    expect(tasks.filter((t) => t.state === 'running')).toEqual([]);
  });

  it('finishes a copy job whose controller was killed mid-copy: the other reattaches to the copy in flight, which runs once', async () => {
    await ensureA();
    const copies = agent.calls.get('copyFile') ?? 0;
    // A disk moved between two datastores of the host: a copy job of one file.
    const storage = new StorageClient(a.client);
    await storage.addDatastore('ds1', '/srv/osh-coord/ds1', 'fake');
    await storage.addDatastore('ds2', '/srv/osh-coord/ds2', 'fake');
    await storage.createDisk({ datastore: 'ds1', name: 'data', size: '1G' });
    const release = agent.hold('copyFile');
    const job0 = await storage.moveDisk('ds1/data', 'ds2');
    const jobId = job0.id;
    await eventually(() => (agent.calls.get('copyFile') ?? 0) > copies, 10_000, 'the host to be copying');
    const job = await inventory.storage.getCopyJob(jobId);
    const taskId = job?.taskId as string;
    await killA();
    await eventually(async () => (await inventory.leases.get(taskId))?.owner === b.engine.controllerId, 20_000, 'B to take the copy job over');
    release();
    const finished = await b.storage.jobs.wait(jobId);
    expect(finished.state, JSON.stringify(finished.error)).toBe('succeeded');
    expect((await ended(bClient, taskId)).state).toBe('succeeded');
    // The disk was moved once; the host copied its one file once (B followed A's operation, it did not start another).
    expect((await new StorageClient(bClient).listDisks()).map((d) => `${d.datastore}/${d.name}`)).toEqual(['ds2/data']);
    expect(agent.calls.get('copyFile')).toBe(copies + 1);
    expect(await inventory.pins.list({ holder: `copy-job:${jobId}` })).toEqual([]);
  });
});
