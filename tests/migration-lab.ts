// What the end-to-end migration tests on two lab hosts share
// (tests/e2e/migrate-faults*, migrate-crash, migrate-drain): the lab fleet
// with the hosts' heartbeat and lease those tests run with; a guest shell
// through the API; a writer in the guest (a counter, and numbered lines
// appended to its data disk) and the checks that it went on and left no gap;
// and what a VM or a migration leaves in a host's network namespace (QEMU
// processes, path links).
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { expect } from 'vitest';
import type { DaemonOptions } from '../src/api/index.ts';
import type { OffshootClient } from '../src/client/index.ts';
import { processInNamespace } from '../src/lab/agent-process.ts';
import { READ_COUNTER } from './guest-data.ts';
import { eventually } from './harness.ts';
import type { LabFleet } from './lab-fleet.ts';
import { startLabFleet } from './lab-fleet.ts';

/** The daemon and lab1, lab2 on `prefix` and `subnet`, the hosts heartbeating every 0.5 s with a 5 s lease. */
export function startMigrationLab(prefix: string, subnet: string, options: Partial<DaemonOptions> = {}): Promise<LabFleet> {
  return startLabFleet(prefix, subnet, { hostHeartbeatMs: 500, hostLeaseMs: 5_000, ...options });
}

/** Runs a shell script in the guest; resolves with its output, throws when it fails. */
export async function sh(client: OffshootClient, vm: string, script: string): Promise<string> {
  const out = await client.exec(vm, '/bin/sh', ['-c', script], { timeoutMs: 60_000 });
  if (out.exitCode !== 0) throw new Error(`guest command failed (${out.exitCode}): ${script}: ${out.stderr.toString()}`);
  return out.stdout.toString();
}

/** A guest script that ticks /tmp/counter and appends the same number to /data/lines every 0.05 s, in the background. */
export const WRITER = '(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo $i >> /data/lines; sleep 0.05; done) >/dev/null 2>&1 &';

/** Starts the WRITER in the guest and waits until it has ticked. */
export async function startWriter(client: OffshootClient, vm: string): Promise<void> {
  await sh(client, vm, WRITER);
  await eventually(async () => Number(await sh(client, vm, 'cat /tmp/counter 2>/dev/null || echo 0')) > 5, 30_000, 'the writer to run');
}

/** The WRITER's counter goes on (by more than 3 within `ms`). */
export async function counterGoesOn(client: OffshootClient, vm: string, ms: number): Promise<void> {
  const c1 = Number(await sh(client, vm, READ_COUNTER));
  expect(c1).toBeGreaterThan(0);
  await eventually(async () => Number(await sh(client, vm, READ_COUNTER)) > c1 + 3, ms, 'the counter to go on');
}

/** The WRITER's lines on the data disk have no gap (the guest's writes were all kept). */
export async function expectNoGapInLines(client: OffshootClient, vm: string): Promise<void> {
  expect(await sh(client, vm, "awk 'NR != $1 { print \"gap at line \" NR \": \" $1; exit 1 }' /data/lines && echo ok")).toBe('ok\n');
}

/** The migration path links (VXLAN `ofvx…`) in a namespace. */
export function pathLinks(namespace: string): string[] {
  const out = execFileSync('ip', ['-n', namespace, '-j', 'link', 'show', 'type', 'vxlan'], { encoding: 'utf8' });
  return (JSON.parse(out || '[]') as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n.startsWith('ofvx'));
}

/** QEMU processes of a VM in a namespace (by its id on their command line). */
export function qemusOf(vmId: string, namespace: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map(Number)
    .filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return cmd.includes('qemu-system') && cmd.includes(vmId) && processInNamespace(pid, namespace);
      } catch {
        return false;
      }
    });
}
