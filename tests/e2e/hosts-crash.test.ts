// A controller killed with SIGKILL while a fork runs on a lab host (whose
// agent, in its own process and namespace, lives on): the restarted
// controller rolls the fork back through the agent, from its journal. The
// source runs on with its memory and disk as they were; no child, waiting
// QEMU, template or base is left on the lab host.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findOffshootQemus } from '../../src/qemu/index.ts';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { TaskRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { eventually, makeTestHome, startDetachedDaemon, waitForProcessExit } from '../harness.ts';

const prefix = `ohc${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${100 + ((randomBytes(1)[0] as number) % 40)}.0/24`;

describe('controller killed while a lab host forks', () => {
  let t: TestHome;
  let labDir: string;
  let lab: UpResult;

  beforeAll(() => {
    t = makeTestHome();
    labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  });
  afterAll(async () => {
    const daemonFile = join(t.home, 'daemon.json');
    if (existsSync(daemonFile)) for (const vm of await t.client().listVms().catch(() => [])) await t.client().killVm(vm.id).catch(() => undefined);
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    await t.cleanup();
  }, 120_000);

  it('rolls the fork back through the agent that lived on', async () => {
    t.env.OFFSHOOT_TEST_FAULTS = 'fork.prepared=sleep:60000';
    let daemon = await startDetachedDaemon(t);
    lab = await labUp(1, { dir: labDir, prefix, subnet }, t.home);
    expect(lab.hosts[0]?.registration.registered).toBe(true);
    const client = t.client();
    const created = await client.createVm({ name: 'src', memory: '192M', host: 'lab1', start: true });
    expect((await client.waitTask(created.task?.id as string)).state).toBe('succeeded');
    expect((await client.exec('src', '/bin/sh', ['-c', 'echo before > /data/mark; echo before > /tmp/mark; sync'])).exitCode).toBe(0);
    const { task } = await client.forkVm('src', { count: 2 });
    await eventually(async () => ((await client.getTask(task?.id as string)).result as { journal?: { phase: string } } | null)?.journal?.phase === 'prepared', 60_000, 'the fork to be prepared');
    // Prepared on the lab host: the source's replacement and two children wait for device state there.
    const namespace = lab.hosts[0]?.namespace as string;
    const inLab = () => findOffshootQemus().filter((q) => processInNamespace(q.pid, namespace));
    expect(inLab().length).toBe(4);
    process.kill(daemon.pid, 'SIGKILL');
    await waitForProcessExit(daemon.pid);

    delete t.env.OFFSHOOT_TEST_FAULTS;
    daemon = await startDetachedDaemon(t);
    const again = t.client();
    const finished = (await again.getTask(task?.id as string)) as TaskRecord;
    expect(finished.error?.code).toBe('TASK_INTERRUPTED');
    expect(finished.message).toContain('removed 2 unfinished children');
    const vms = await again.listVms();
    expect(vms.map((v) => [v.name, v.state])).toEqual([['src', 'running']]);
    expect((await again.exec('src', '/bin/cat', ['/data/mark', '/tmp/mark'])).stdout.toString()).toBe('before\nbefore\n');
    await eventually(() => inLab().length === 1, 15_000, 'only the source QEMU on the lab host');
    expect(inLab()[0]?.pid).toBe(vms[0]?.runtime?.pid);
    const labHome = lab.hosts[0]?.home as string;
    expect(readdirSync(join(labHome, 'vms'))).toEqual([vms[0]?.id]);
    await eventually(() => (existsSync(join(labHome, 'work')) ? readdirSync(join(labHome, 'work')) : []).length === 0, 10_000, 'no work files on the lab host');
    expect(readdirSync(lab.hosts[0]?.memoryDir as string).filter((f) => f.endsWith('.ram'))).toEqual([`${vms[0]?.id}.ram`]);
    await again.killVm('src');
    await again.deleteVm('src');
    process.kill(daemon.pid, 'SIGTERM');
    await waitForProcessExit(daemon.pid);
  }, 300_000);
});
