// A controller killed with SIGKILL in the middle of a migration between two
// lab hosts (whose agents, in their own processes and namespaces, live on):
// the restarted controller finds the migration in its task's journal. Killed
// while the destination waited (before anything moved): rolled back, the VM
// runs on at its source in the same QEMU, and the destination's QEMU, files
// and the path are gone. Killed right after the switch-over was recorded:
// finished, the VM runs at its destination and nothing of it or of the path
// is left at the source.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrateClient } from '../../src/client/index.ts';
import { findOffshootQemus } from '../../src/qemu/index.ts';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { eventually, makeTestHome, startDetachedDaemon, waitForProcessExit } from '../harness.ts';
import { pathLinks } from '../migration-lab.ts';

const prefix = `omk${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${20 + ((randomBytes(1)[0] as number) % 30)}.0/24`;

describe('controller killed mid-migration between lab hosts', () => {
  let t: TestHome;
  let labDir: string;
  let lab: UpResult;
  let daemon: { pid: number };

  beforeAll(() => {
    t = makeTestHome();
    labDir = mkdtempSync(`/tmp/${prefix}-lab-`);
  });
  afterAll(async () => {
    if (existsSync(join(t.home, 'daemon.json'))) for (const vm of await t.client().listVms().catch(() => [])) await t.client().killVm(vm.id).catch(() => undefined);
    if (daemon) {
      try {
        process.kill(daemon.pid, 'SIGTERM');
        await waitForProcessExit(daemon.pid);
      } catch {
        // already gone
      }
    }
    await labDown({ dir: labDir, prefix }).catch(() => undefined);
    rmSync(labDir, { recursive: true, force: true });
    await t.cleanup();
  }, 120_000);

  async function restart(faults?: string): Promise<void> {
    process.kill(daemon.pid, 'SIGKILL');
    await waitForProcessExit(daemon.pid);
    if (faults) t.env.OFFSHOOT_TEST_FAULTS = faults;
    else delete t.env.OFFSHOOT_TEST_FAULTS;
    daemon = await startDetachedDaemon(t);
  }

  it('rolls back a migration whose controller died before the transfer, and finishes one that died after the switch-over', async () => {
    t.env.OFFSHOOT_TEST_FAULTS = 'migrate.transfer=sleep:60000';
    daemon = await startDetachedDaemon(t);
    lab = await labUp(2, { dir: labDir, prefix, subnet }, t.home);
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    const inNs = (namespace: string) => findOffshootQemus().filter((q) => processInNamespace(q.pid, namespace));
    let client = t.client();
    const created = await client.createVm({ name: 'omk-vm', memory: '192M', host: 'lab1', start: true });
    expect((await client.waitTask(created.task?.id as string)).state).toBe('succeeded');
    await client.exec('omk-vm', '/bin/sh', ['-c', 'echo before > /data/mark; echo before > /tmp/mark; sync']);
    const before = await client.getVm('omk-vm');

    // 1. Killed while the destination waits and the path is open.
    const first = await new MigrateClient(client).migrate('omk-vm', { to: 'lab2' });
    await eventually(async () => ((await client.getTask(first.task?.id as string)).result as { journal?: { phase: string } } | null)?.journal?.phase === 'transfer', 60_000, 'the destination to be prepared');
    expect(inNs(lab2.namespace).length).toBe(1);
    expect(pathLinks(lab1.namespace).length).toBe(1);
    await restart('migrate.switched=sleep:60000');
    client = t.client();
    const rolledBack = await client.getTask(first.task?.id as string);
    expect(rolledBack.error?.code).toBe('TASK_INTERRUPTED');
    expect(rolledBack.message).toContain('rolled back');
    const back = (await client.getVm('omk-vm')) as VmRecord & { host: string };
    expect([back.host, back.state, back.runtime?.pid]).toEqual(['lab1', 'running', before.runtime?.pid]);
    expect((await client.exec('omk-vm', '/bin/cat', ['/data/mark', '/tmp/mark'])).stdout.toString()).toBe('before\nbefore\n');
    expect(inNs(lab2.namespace)).toEqual([]);
    expect(existsSync(join(lab2.home, 'vms', before.id))).toBe(false);
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);

    // 2. Killed right after the switch-over was recorded: the source's QEMU, files and the path are left to recovery.
    const second = await new MigrateClient(client).migrate('omk-vm', { to: 'lab2' });
    await eventually(async () => ((await client.getVm('omk-vm')) as VmRecord & { host: string }).host === 'lab2', 120_000, 'the switch-over to be recorded');
    await restart();
    client = t.client();
    const finished = await client.getTask(second.task?.id as string);
    expect(finished.error?.code).toBe('TASK_INTERRUPTED');
    const moved = (await client.getVm('omk-vm')) as VmRecord & { host: string };
    expect([moved.host, moved.state]).toEqual(['lab2', 'running']);
    expect((await client.exec('omk-vm', '/bin/cat', ['/data/mark', '/tmp/mark'])).stdout.toString()).toBe('before\nbefore\n');
    await eventually(() => inNs(lab1.namespace).length === 0, 15_000, 'no QEMU of the VM left at the source');
    expect(existsSync(join(lab1.home, 'vms', before.id))).toBe(false);
    expect(readdirSync(lab1.memoryDir).filter((f) => f.startsWith(before.id))).toEqual([]);
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);
    await client.killVm('omk-vm');
    await client.deleteVm('omk-vm');
  }, 400_000);
});
