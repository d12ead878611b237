// Host drain end to end (issue 12 part 6): a control plane and two lab hosts
// (`offshoot agent serve` in their own network namespaces). lab1 runs two
// guests, one counting in RAM; through the CLI the operator limits lab1 to one
// outgoing migration at a time (`migration-policy set --host lab1
// --max-outgoing 1`) and drains it (`host drain lab1 --json`). The drain task
// moves both guests to lab2 (the only ready host: the controller's own host is
// in maintenance), one after the other (the second waited queued until the
// first had ended), and its result lists both; each runs at lab2 in lab2's
// namespace, nothing of them is left on lab1, the counter goes on, and the
// home's invariants hold.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { DrainResult, VmRecord } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { startLabFleet } from '../lab-fleet.ts';
import { sh } from '../migration-lab.ts';

const prefix = `odr${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.214.${100 + ((randomBytes(1)[0] as number) % 40)}.0/24`;

describe('host drain between lab hosts', () => {
  let fleet: LabFleet | undefined;

  beforeAll(async () => {
    fleet = await startLabFleet(prefix, subnet, { hostHeartbeatMs: 500, hostLeaseMs: 5_000 });
  }, 180_000);

  afterAll(() => fleet?.close(), 120_000);

  it('drains a host of two running guests one at a time under maxOutgoing=1; both run on at the other host', async () => {
    const { t, lab, daemon } = fleet as LabFleet;
    const client = t.client();
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    const names = ['odr-a', 'odr-b'];
    for (const name of names) await client.createVm({ name, memory: '128M', host: 'lab1', start: true });
    for (const name of names) await eventually(async () => (await client.getVm(name)).state === 'running', 150_000, `${name} to run`);
    await sh(client, 'odr-a', 'mkdir -p /mnt/ram && mount -t tmpfs -o size=8m tmpfs /mnt/ram && (i=0; while true; do i=$((i+1)); echo $i > /mnt/ram/counter; sleep 0.05; done) >/dev/null 2>&1 &');
    await eventually(async () => Number(await sh(client, 'odr-a', 'cat /mnt/ram/counter 2>/dev/null || echo 0')) > 5, 30_000, 'the counter to run');
    const before = await Promise.all(names.map((n) => client.getVm(n)));

    // Only lab2 is a destination: the controller's own host is held in maintenance.
    const own = daemon.engine.fleet.hosts().find((h) => h.url.startsWith('local:'))?.name as string;
    expect((await t.cli(['host', 'maintenance', own])).code).toBe(0);
    const set = await t.cli(['migration-policy', 'set', '--host', 'lab1', '--max-outgoing', '1', '--json']);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ host: { name: 'lab1', policy: { maxOutgoing: 1 }, effective: { maxOutgoing: 1, sources: { maxOutgoing: 'host' } } } });
    const bad = await t.cli(['migration-policy', 'set', '--host', 'lab1', '--postcopy', 'sometimes', '--json']);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stderr)).toMatchObject({ error: { code: 'INVALID_INPUT' } });

    // Which member task was queued, and when each started copying and ended, in the order the engine saw them.
    const seen: Array<{ taskId: string; phase: string | null; state: string }> = [];
    const off = daemon.engine.events.subscribe((e) => {
      if (e.type === 'task' && e.task.kind === 'vm.migrate') seen.push({ taskId: e.task.id, phase: (e.task.result as { progress?: { phase?: string } } | null)?.progress?.phase ?? null, state: e.task.state });
    });
    const drained = await t.cli(['host', 'drain', 'lab1', '--json']);
    off();
    expect(drained.code, drained.stderr).toBe(0);
    const result = JSON.parse(drained.stdout) as DrainResult;
    expect(result.host).toBe('lab1');
    expect(result.notMoved).toEqual([]);
    expect(result.moved.map((m) => [m.vm, m.to]).sort()).toEqual(names.map((n) => [n, 'lab2']));
    // One at a time: one member waited queued and started copying only after the other had ended.
    const [first, second] = [...result.moved].sort((a, b) => a.queuedMs - b.queuedMs).map((m) => m.taskId) as [string, string];
    expect(seen.some((e) => e.taskId === second && e.phase === 'queued')).toBe(true);
    const firstEnded = seen.findIndex((e) => e.taskId === first && e.state === 'succeeded');
    expect(firstEnded).toBeGreaterThanOrEqual(0);
    expect(firstEnded).toBeLessThan(seen.findIndex((e) => e.taskId === second && e.phase !== null && e.phase !== 'queued'));
    expect((await client.getTask(second)).result).toMatchObject({ policy: { maxOutgoing: 1, sources: { maxOutgoing: 'host' } } });

    // Both run at lab2, in lab2's namespace; nothing of them left on lab1.
    expect(JSON.parse((await t.cli(['host', 'show', 'lab1', '--json'])).stdout)).toMatchObject({ state: 'draining' });
    for (const [i, name] of names.entries()) {
      const vm = (await client.getVm(name)) as VmRecord & { host: string };
      expect([vm.host, vm.state]).toEqual(['lab2', 'running']);
      expect(processInNamespace(vm.runtime?.pid as number, lab2.namespace)).toBe(true);
      expect(processInNamespace(before[i]?.runtime?.pid as number, lab1.namespace)).toBe(false);
      expect(existsSync(join(lab1.home, 'vms', vm.id))).toBe(false);
      expect(readdirSync(lab1.memoryDir).filter((f) => f.startsWith(vm.id))).toEqual([]);
    }
    const c1 = Number(await sh(client, 'odr-a', 'cat /mnt/ram/counter'));
    await eventually(async () => Number(await sh(client, 'odr-a', 'cat /mnt/ram/counter')) > c1 + 3, 20_000, 'the counter to go on');
    expect((await t.cli(['host', 'ready', 'lab1'])).code).toBe(0);
    expect((await t.cli(['host', 'ready', own])).code).toBe(0);
    for (const name of names) {
      await client.killVm(name);
      await client.deleteVm(name);
    }
    expect(await t.problems()).toEqual([]);
  }, 200_000);
});
