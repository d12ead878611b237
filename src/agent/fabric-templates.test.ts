// HostTemplates.handOut takes turns: at most one hand-out per host CPU runs its resume and guest step at once, the
// others wait, claims before warm-ups and each kind in the order asked, and each reports how long it waited. The
// children here are stand-ins whose guest agent answers nothing (the hand-out then fails as it does for a real child
// whose agent is gone); the hand-outs themselves run against real children in tests/e2e/fabric*.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sleep } from '../common/index.ts';
import type { FabricHost } from './fabric-templates.ts';
import { HostTemplates } from './fabric-templates.ts';

const dir = mkdtempSync(join(tmpdir(), 'offshoot-handout-turns-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('hand-out turns', () => {
  it('runs at most one hand-out per CPU at once, the rest in turn (claims before warm-ups), each with the time it waited', async () => {
    let now = 0;
    let most = 0;
    const began: string[] = [];
    const child = () => ({
      qmp: { cont: async () => undefined },
      dropGuestAgent: () => undefined,
      guestAgent: async () => {
        most = Math.max(most, ++now);
        await sleep(30);
        now -= 1;
        throw new Error('no guest agent here');
      },
    });
    const children = new Map(Array.from({ length: 8 }, (_, i) => [`vm-${i}`, child()]));
    // A turn begins where it looks its child up (synchronously); what follows awaits files, so guest steps begun
    // in the same instant may reach the guest agent in either order.
    const running = (vmId: string) => {
      began.push(vmId);
      return children.get(vmId);
    };
    const host = { running, layout: { vmDir: (vmId: string) => join(dir, vmId) } } as unknown as FabricHost;
    const templates = new HostTemplates(host);
    const results = await Promise.all([...children.keys()].map((vmId) => templates.handOut(vmId, true, { hostname: vmId, timeoutMs: 1000, setClock: false })));
    const cpus = Math.max(1, availableParallelism());
    expect(most).toBe(Math.min(cpus, children.size));
    expect(began).toEqual([...children.keys()]);
    for (const r of results) expect(r).toMatchObject({ ok: false, error: expect.stringContaining('no guest agent here') });
    // The last one waited for the turns before it (about 8 / cpus - 1 of them, 30 ms each).
    const waits = results.map((r) => r.timings.queuedMs ?? -1);
    expect(waits[0]).toBeLessThan(20);
    if (cpus < children.size) expect(waits.at(-1)).toBeGreaterThanOrEqual(25 * (Math.ceil(children.size / cpus) - 1));
    for (const r of results) expect(r.timings.totalMs).toBeGreaterThanOrEqual((r.timings.queuedMs ?? 0) + r.timings.guestMs - 1);

    // Warm-ups (a refill's) asked first wait behind claims asked after them, once the turns are taken.
    began.length = 0;
    const ids = [...children.keys()];
    const warmUps = ids.slice(0, 6).map((vmId) => templates.handOut(vmId, false, { hostname: vmId, timeoutMs: 1000, setClock: false, arm: true }));
    const claims = ids.slice(6).map((vmId) => templates.handOut(vmId, true, { hostname: vmId, timeoutMs: 1000, setClock: false }));
    await Promise.all([...warmUps, ...claims]);
    const turns = Math.min(cpus, 6);
    expect(began).toEqual([...ids.slice(0, turns), ...ids.slice(6), ...ids.slice(turns, 6)]);
  });
});
