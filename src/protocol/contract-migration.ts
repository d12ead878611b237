// The migration contract: what every implementation of the migration calls
// (calls-migration.ts) must do, run against two fake agents in one process
// (src/protocol/testing/fake-migration.test.ts) and against two real agents
// on lab hosts, each in its own network namespace (tests/e2e/migration-contract.test.ts),
// so the fake the orchestration tests use cannot drift from the real agents.
// One VM is booted on the source and moved to the destination at the end; a
// cancelled attempt before that leaves it running at the source and nothing
// at the destination.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DataPathPlanData, IncomingDisk } from './calls-migration.ts';
import { follow, newOperationId, runOperation } from './client.ts';
import type { MigrationContractTarget } from './contract-support.ts';
import { CONTRACT_TUNING as TUNING, bootAtSource, cleanUpBothHosts, closeContractPath, codeOf, openContractPath } from './contract-support.ts';
import type { VmSpec } from './schemas.ts';

export type { MigrationContractTarget } from './contract-support.ts';

export function runMigrationContract(label: string, makeTarget: () => Promise<MigrationContractTarget>): void {
  describe(`migration contract: ${label}`, () => {
    let t: MigrationContractTarget;
    const vmId = '6f6f6f6f-0000-4000-8000-0000000000c1';
    let spec: VmSpec;
    const opened: string[] = [];

    /** Plans and opens a path between the two hosts (as the controller does). */
    async function openPath(): Promise<DataPathPlanData> {
      return openContractPath(t, opened, { installDefaultGuest: false });
    }

    async function closePath(operationId: string): Promise<void> {
      await closeContractPath(t, operationId);
    }

    /** The target disks at the destination: over the bases it has with the same content id (`top`), else whole (`full`). */
    async function targetDisks(): Promise<{ disks: IncomingDisk[]; mirror: Array<{ node: string; sync: 'top' | 'full' }> }> {
      const files = spec.disks.filter((d) => !d.readOnly).flatMap((d) => [{ file: d.file, contentId: false }, ...d.backing.map((f) => ({ file: f, contentId: true }))]);
      const here = await t.source.migrationProbe({ peer: null, files, installDefaultGuest: false });
      const there = await t.destination.migrationProbe({ peer: null, files: files.filter((f) => f.contentId), installDefaultGuest: true });
      const disks: IncomingDisk[] = [];
      const mirror: Array<{ node: string; sync: 'top' | 'full' }> = [];
      for (const d of spec.disks.filter((x) => !x.readOnly)) {
        const top = here.files.find((f) => f.file === d.file);
        const basesThere = d.backing.every((b) => {
          const mine = here.files.find((f) => f.file === b);
          const theirs = there.files.find((f) => f.file === b);
          return theirs?.exists && theirs.contentId !== null && theirs.contentId === mine?.contentId;
        });
        disks.push({ id: d.id, file: d.file, format: d.format, sizeBytes: top?.virtualSize ?? 2 ** 30, backing: basesThere ? d.backing.map((b) => ({ file: b, format: 'qcow2' as const })) : [] });
        mirror.push({ node: d.id, sync: basesThere ? 'top' : 'full' });
      }
      return { disks, mirror };
    }

    beforeAll(async () => {
      t = await makeTarget();
      spec = await bootAtSource(t, vmId, 'mcontract');
    }, 240_000);

    afterAll(() => cleanUpBothHosts(t, vmId, opened), 60_000);

    it('opens an isolated path on both hosts and removes it again (idempotent)', async () => {
      const plan = await openPath();
      const counters = await t.source.pathCounters({ operationId: plan.operationId });
      expect(counters.linkName).toBe(plan.linkName);
      const inUse = (await t.destination.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse;
      expect(inUse).toContain(plan.slot);
      const closed = await t.destination.closePath({ operationId: plan.operationId });
      expect(closed).toMatchObject({ removedLinks: [plan.linkName], removedCredential: true });
      expect(await t.destination.closePath({ operationId: plan.operationId })).toMatchObject({ removedLinks: [], removedCredential: false });
      await t.source.closePath({ operationId: plan.operationId });
      expect((await t.destination.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).not.toContain(plan.slot);
    }, 60_000);

    it('refuses steps out of order with stable codes', async () => {
      expect(await codeOf(runOperation(t.source, 'migrateOut', { vmId, pathId: newOperationId(), migration: { host: '10.0.0.1', port: 1 }, nbd: null, disks: [], tuning: TUNING, hold: false }))).toBe('DATA_PATH_FAILED');
      expect(await codeOf(t.source.continueMigration({ vmId }))).toBe('MIGRATION_REFUSED');
      expect(await codeOf(t.destination.migrateOut({ operationId: newOperationId(), vmId, pathId: newOperationId(), migration: { host: '10.0.0.1', port: 1 }, nbd: null, disks: [], tuning: TUNING, hold: false }).then((o) => follow(t.destination, o.operationId)))).toBe('VM_NOT_RUNNING');
      expect(await t.destination.abortIncoming({ vmId })).toEqual({ removed: false });
      expect(await codeOf(runOperation(t.source, 'prepareIncoming', { vmId, name: 'mcontract', spec, disks: [], pathId: newOperationId(), postcopy: false, multifdChannels: 1, tls: true, resume: true }))).toMatch(/^(MIGRATION_REFUSED|DATA_PATH_FAILED)$/);
      expect((await t.source.migrationState({ vmId })).qemu?.runState).toBe('running');
    }, 60_000);

    it('a migration cancelled before its switch-over leaves the VM running at the source and nothing at the destination', async () => {
      const plan = await openPath();
      const { disks, mirror } = await targetDisks();
      const prepared = await runOperation(t.destination, 'prepareIncoming', { vmId, name: 'mcontract', spec, disks, pathId: plan.operationId, postcopy: false, multifdChannels: 1, tls: true, resume: true });
      expect(prepared.exports).toEqual(disks.map((d) => d.id));
      expect((await t.destination.migrationState({ vmId })).incoming?.state).toBe('waiting');
      expect((await t.destination.vmStatus({ vmId })).status).toBeNull();
      const awaitId = newOperationId();
      await t.destination.awaitIncoming({ operationId: awaitId, vmId });
      // Slow enough (1 MiB/s) that the cancel lands in pre-copy.
      const controller = new AbortController();
      const phases: string[] = [];
      const out = runOperation(t.source, 'migrateOut', { vmId, pathId: plan.operationId, migration: prepared.migration, nbd: prepared.nbd, disks: mirror, tuning: { ...TUNING, maxBandwidthBytesPerSecond: 2 ** 20, multifdChannels: 1 }, hold: false }, {
        signal: controller.signal,
        onProgress: (e) => {
          const phase = (e.data as { phase?: string } | undefined)?.phase;
          if (phase) phases.push(phase);
          if (phase === 'memory') controller.abort();
        },
      });
      expect(await codeOf(out)).toBe('TASK_CANCELLED');
      expect(phases).toContain('memory');
      expect((await t.source.vmStatus({ vmId })).status).toBe('running');
      expect((await t.source.migrationState({ vmId })).outgoing).toBeNull();
      expect(await t.destination.abortIncoming({ vmId })).toEqual({ removed: true });
      expect(await codeOf(follow(t.destination, awaitId))).not.toBe('no error');
      expect((await t.destination.migrationState({ vmId })).incoming).toBeNull();
      const left = await t.destination.migrationProbe({ peer: null, files: disks.map((d) => ({ file: d.file, contentId: false })), installDefaultGuest: false });
      expect(left.files.every((f) => !f.exists)).toBe(true);
      await closePath(plan.operationId);
      expect((await t.source.exec({ vmId, path: 'echo', args: ['still', 'here'] })).exitCode).toBe(0);
    }, 180_000);

    it('migrates the running VM with its disk: it runs at the destination, the source lets it go, the path is gone', async () => {
      const plan = await openPath();
      const { disks, mirror } = await targetDisks();
      const prepared = await runOperation(t.destination, 'prepareIncoming', { vmId, name: 'mcontract', spec, disks, pathId: plan.operationId, postcopy: false, multifdChannels: 2, tls: true, resume: true });
      const awaitId = newOperationId();
      await t.destination.awaitIncoming({ operationId: awaitId, vmId });
      const progress: Array<Record<string, unknown>> = [];
      const result = await runOperation(t.source, 'migrateOut', { vmId, pathId: plan.operationId, migration: prepared.migration, nbd: prepared.nbd, disks: mirror, tuning: TUNING, hold: false }, { onProgress: (e) => progress.push((e.data ?? {}) as Record<string, unknown>) });
      expect(result.status).toBe('completed');
      expect(result.memoryBytes).toBeGreaterThan(0);
      expect(result.postcopy).toBe(false);
      expect(progress.some((p) => typeof p.remainingBytes === 'number' && typeof p.pass === 'number')).toBe(true);
      const incoming = await follow<'awaitIncoming'>(t.destination, awaitId);
      expect(incoming.running).toBe(true);
      expect(incoming.runtime.memory.mode).toBe('owned');
      expect((await t.destination.vmStatus({ vmId })).status).toBe('running');
      expect(await codeOf(t.destination.abortIncoming({ vmId }))).toBe('ILLEGAL_STATE');
      expect(await codeOf(t.source.abortOutgoing({ vmId, resume: true }))).not.toBe('no error');
      await t.source.finishOutgoing({ vmId });
      await t.source.finishOutgoing({ vmId });
      expect((await t.source.vmStatus({ vmId })).status).toBeNull();
      const files = disks.map((d) => ({ file: d.file, contentId: false }));
      expect((await t.source.migrationProbe({ peer: null, files, installDefaultGuest: false })).files.every((f) => !f.exists)).toBe(true);
      expect((await t.destination.migrationProbe({ peer: null, files, installDefaultGuest: false })).files.every((f) => f.exists)).toBe(true);
      await closePath(plan.operationId);
      expect((await t.source.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).not.toContain(plan.slot);
      expect((await t.destination.exec({ vmId, path: 'echo', args: ['moved'] })).exitCode).toBe(0);
    }, 180_000);
  });
}
