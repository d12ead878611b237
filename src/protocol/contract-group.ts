// The group switch-over contract: what every implementation of the group
// calls (calls-group.ts) must do, run against two fake agents in one process
// (src/protocol/testing/fake-group.test.ts) and against two real agents on lab
// hosts (tests/e2e/migration-contract.test.ts). One VM booted on the source:
// a migration whose destination keeps the guest paused after completion
// (holdAfter), with its parameters changed while it copies, is reverted (the
// destination removed, the source runs on in the same QEMU); a second one is
// started at the destination (startIncoming) and the source lets it go.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newPskKey, planDataPath } from '../net/index.ts';
import { OffshootError } from '../common/index.ts';
import type { MigrationTuning } from './calls-migration.ts';
import type { AgentClient } from './client.ts';
import { follow, newOperationId, runOperation } from './client.ts';
import type { MigrationContractTarget } from './contract-migration.ts';
import type { VmSpec } from './schemas.ts';

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return err instanceof OffshootError ? err.code : `not an OffshootError: ${(err as Error).message}`;
  }
  return 'no error';
}

const TUNING: MigrationTuning = { maxBandwidthBytesPerSecond: 2 ** 30, downtimeLimitMs: 300, postcopy: 'never', autoConverge: false, multifdChannels: 1, timeoutMs: 120_000, tls: true };

export function runGroupContract(label: string, makeTarget: () => Promise<MigrationContractTarget>): void {
  describe(`group switch-over contract: ${label}`, () => {
    let t: MigrationContractTarget;
    const vmId = '6f6f6f6f-0000-4000-8000-0000000000c2';
    let spec: VmSpec;
    const opened: string[] = [];

    /** A path, a destination that holds the guest after completion, and a migration run to completion (its parameters changed midway). */
    async function migrateHeld(): Promise<{ pathId: string; awaitId: string; changed: { downtimeLimitMs: number; maxBandwidthBytesPerSecond: number } | null }> {
      const [s, d] = await Promise.all([t.source.migrationProbe({ peer: t.destinationAddress, files: [], installDefaultGuest: false }), t.destination.migrationProbe({ peer: t.sourceAddress, files: [], installDefaultGuest: true })]);
      const plan = planDataPath({ operationId: newOperationId(), serverManagementAddress: d.managementAddress ?? '', clientManagementAddress: s.managementAddress ?? '', inUse: [...s.slotsInUse, ...d.slotsInUse] });
      const key = newPskKey();
      opened.push(plan.operationId);
      await t.destination.openPath({ plan, role: 'server', pskKey: key });
      await t.source.openPath({ plan, role: 'client', pskKey: key });
      const writable = spec.disks.filter((x) => !x.readOnly);
      const disks = writable.map((x) => ({ id: x.id, file: x.file, format: x.format, sizeBytes: 2 ** 30, backing: [] }));
      const prepared = await runOperation(t.destination, 'prepareIncoming', { vmId, name: 'gcontract', spec, disks, pathId: plan.operationId, postcopy: false, multifdChannels: 1, tls: true, resume: true, holdAfter: true });
      const awaitId = newOperationId();
      await t.destination.awaitIncoming({ operationId: awaitId, vmId });
      let changing: Promise<{ downtimeLimitMs: number; maxBandwidthBytesPerSecond: number } | null> | null = null;
      const result = await runOperation(t.source, 'migrateOut', { vmId, pathId: plan.operationId, migration: prepared.migration, nbd: prepared.nbd, disks: writable.map((x) => ({ node: x.id, sync: 'full' as const })), tuning: TUNING, hold: false }, {
        onProgress: (e) => {
          if (changing || (e.data as { phase?: string } | undefined)?.phase !== 'memory') return;
          changing = t.source.setMigrationParameters({ vmId, downtimeLimitMs: 250, maxBandwidthBytesPerSecond: 2 ** 29 }).catch(() => null);
        },
      });
      expect(result.status).toBe('completed');
      const incoming = await follow<'awaitIncoming'>(t.destination, awaitId);
      expect([incoming.running, incoming.resumedAt]).toEqual([false, null]);
      return { pathId: plan.operationId, awaitId, changed: await (changing ?? Promise.resolve(null)) };
    }

    async function closePath(operationId: string): Promise<void> {
      await t.source.closePath({ operationId });
      await t.destination.closePath({ operationId });
    }

    beforeAll(async () => {
      t = await makeTarget();
      spec = await t.source.prepareVm({ vmId, name: 'gcontract', vcpus: 1, memoryMiB: 160, boot: { kind: 'default-guest' }, disks: [], network: 'user' });
      await runOperation(t.source, 'startVm', { vmId, name: 'gcontract', spec });
      await runOperation(t.source, 'waitForGuestAgent', { vmId, timeoutMs: t.bootTimeoutMs });
    }, 240_000);

    afterAll(async () => {
      for (const a of [t.source, t.destination] as AgentClient[]) {
        for (const operationId of opened) await a.closePath({ operationId }).catch(() => undefined);
        await a.abortIncoming({ vmId }).catch(() => undefined);
        await a.killVm({ vmId }).catch(() => undefined);
        await a.deleteVmFiles({ vmId }).catch(() => undefined);
      }
      await t.dispose();
    }, 60_000);

    it('refuses group steps with nothing to act on, with stable codes', async () => {
      expect(await codeOf(t.source.setMigrationParameters({ vmId, downtimeLimitMs: 10 }))).toBe('MIGRATION_REFUSED');
      expect(await codeOf(t.destination.startIncoming({ vmId }))).toBe('MIGRATION_REFUSED');
      // A VM that runs here has nothing to revert.
      expect(await t.source.revertOutgoing({ vmId })).toEqual({ status: 'running' });
      expect(await codeOf(t.destination.revertOutgoing({ vmId }))).toBe('VM_NOT_RUNNING');
    }, 60_000);

    it('a completed migration held at the destination is reverted: the destination goes, the guest runs on at the source', async () => {
      const { pathId, changed } = await migrateHeld();
      // The change reached the running migration (null only if it completed before the first memory progress).
      if (changed) expect(changed).toEqual({ downtimeLimitMs: 250, maxBandwidthBytesPerSecond: 2 ** 29 });
      expect((await t.destination.migrationState({ vmId })).incoming?.state).toBe('held');
      expect((await t.destination.vmStatus({ vmId })).status).toBeNull();
      expect((await t.source.migrationState({ vmId })).qemu).toMatchObject({ runState: 'postmigrate', migration: 'completed' });
      // The controller's order: the destination goes first, then the source runs on.
      expect(await t.destination.abortIncoming({ vmId })).toEqual({ removed: true });
      expect((await t.destination.migrationState({ vmId })).incoming).toBeNull();
      expect(await codeOf(t.source.revertOutgoing({ vmId }))).toBe('no error');
      expect((await t.source.vmStatus({ vmId })).status).toBe('running');
      expect(await t.source.revertOutgoing({ vmId })).toEqual({ status: 'running' });
      await closePath(pathId);
      expect((await t.source.exec({ vmId, path: 'echo', args: ['still', 'here'] })).exitCode).toBe(0);
    }, 180_000);

    it('a held destination started with startIncoming runs the guest; the source lets it go', async () => {
      const { pathId } = await migrateHeld();
      const started = await t.destination.startIncoming({ vmId });
      expect(started.running).toBe(true);
      expect(typeof started.resumedAt).toBe('string');
      expect((await t.destination.vmStatus({ vmId })).status).toBe('running');
      expect(await codeOf(t.destination.startIncoming({ vmId }))).toBe('MIGRATION_REFUSED');
      expect(await codeOf(t.destination.abortIncoming({ vmId }))).toBe('ILLEGAL_STATE');
      await t.source.finishOutgoing({ vmId });
      expect(await codeOf(t.source.revertOutgoing({ vmId }))).toBe('VM_NOT_RUNNING');
      await closePath(pathId);
      expect((await t.destination.exec({ vmId, path: 'echo', args: ['moved'] })).exitCode).toBe(0);
    }, 180_000);
  });
}
