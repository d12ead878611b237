// The group switch-over contract: what every implementation of the group
// calls (calls-group.ts) must do, run against two fake agents in one process
// (src/protocol/testing/fake-group.test.ts) and against two real agents on lab
// hosts (tests/e2e/migration-contract.test.ts). One VM booted on the source:
// a migration whose destination keeps the guest paused after completion
// (holdAfter), with its parameters changed while it copies, is reverted (the
// destination removed, the source runs on in the same QEMU); one whose source
// brakes itself at the end of its first pass (brakeAfterFirstPass) ignores a
// change decided on that pass, parks itself at its next pass once asked to
// (parkBelowBytes), ignores a change decided before that pass and goes on
// when released; one not allowed to hold (holdAllowed false) rolls itself
// back at its switch-over (MIGRATION_SENT_BACK); a last one is
// started at the destination (startIncoming) and the source lets it go.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationTuning } from './calls-migration.ts';
import { follow, newOperationId, runOperation } from './client.ts';
import type { MigrationContractTarget } from './contract-support.ts';
import { CONTRACT_TUNING, bootAtSource, cleanUpBothHosts, closeContractPath, codeOf, openContractPath } from './contract-support.ts';
import type { VmSpec } from './schemas.ts';

const TUNING: MigrationTuning = { ...CONTRACT_TUNING, multifdChannels: 1 };

export function runGroupContract(label: string, makeTarget: () => Promise<MigrationContractTarget>): void {
  describe(`group switch-over contract: ${label}`, () => {
    let t: MigrationContractTarget;
    const vmId = '6f6f6f6f-0000-4000-8000-0000000000c2';
    let spec: VmSpec;
    const opened: string[] = [];

    type Limits = { downtimeLimitMs: number; maxBandwidthBytesPerSecond: number };
    const BRAKE: Limits = { maxBandwidthBytesPerSecond: 2 ** 10, downtimeLimitMs: 1 };
    const RELEASE: Limits = { downtimeLimitMs: 250, maxBandwidthBytesPerSecond: 2 ** 29 };
    // A busy member hovering: the 1 ms limit (it keeps iterating), parked by its source at a small pass. At 16 MiB/s the
    // limit holds 4 pages, under what the guest's loop dirties between two syncs (at full bandwidth a 4 MiB pass took
    // milliseconds and a sync could find nothing dirty: it completed before any park).
    const HOVER: Limits = { downtimeLimitMs: 1, maxBandwidthBytesPerSecond: 16 * 2 ** 20 };
    // As a group member runs: a 1 ms downtime limit, so that it does not complete at the end of its first pass (with a
    // guest that keeps dirtying memory, and a cap that makes that limit hold less than what it dirties). At 64 MiB/s
    // its second pass (the guest's 4 MiB) lasts about 60 ms, and the source's brake comes within it (at 256 MiB/s that
    // pass took 4 ms, ended before the brake, and a sync that found under 64 pages dirty completed the migration).
    const SELF_BRAKE_TUNING: MigrationTuning = { ...TUNING, downtimeLimitMs: 1, maxBandwidthBytesPerSecond: 2 ** 26 };

    /**
     * A path, a destination that holds the guest after completion, and a migration run to completion: its parameters
     * changed midway, or (selfBrake) braked by its source at the end of its first pass, then sent a change decided on
     * that pass (stale) and a hover that asks it to park itself at a pass of at most 1 GiB (its next one); parked, sent
     * a change decided on the pass before (stale) and a release.
     */
    async function migrateHeld(selfBrake = false): Promise<{ pathId: string; awaitId: string; changed: Limits | null; braked: { pass: number; stale: Limits; hover: Limits } | null; parked: { pass: number; stale: Limits; released: Limits } | null }> {
      const plan = await openContractPath(t, opened, { installDefaultGuest: true });
      const writable = spec.disks.filter((x) => !x.readOnly);
      const disks = writable.map((x) => ({ id: x.id, file: x.file, format: x.format, sizeBytes: 2 ** 30, backing: [] }));
      const prepared = await runOperation(t.destination, 'prepareIncoming', { vmId, name: 'gcontract', spec, disks, pathId: plan.operationId, postcopy: false, multifdChannels: 1, tls: true, resume: true, holdAfter: true });
      const awaitId = newOperationId();
      await t.destination.awaitIncoming({ operationId: awaitId, vmId });
      let changing: Promise<Limits | null> | null = null;
      let braking: Promise<{ pass: number; stale: Limits; hover: Limits }> | null = null;
      let parking: Promise<{ pass: number; stale: Limits; released: Limits }> | null = null;
      const result = await runOperation(t.source, 'migrateOut', { vmId, pathId: plan.operationId, migration: prepared.migration, nbd: prepared.nbd, disks: writable.map((x) => ({ node: x.id, sync: 'full' as const })), tuning: selfBrake ? SELF_BRAKE_TUNING : TUNING, hold: false, brakeAfterFirstPass: selfBrake ? BRAKE : null }, {
        onProgress: (e) => {
          const d = e.data as { phase?: string; pass?: number; selfBraked?: boolean; selfParked?: number | null } | undefined;
          if (selfBrake) {
            // Braked at a crawl it would wait for ever: a change decided on its first pass, then a hover with the park armed.
            const pass = d?.pass ?? 0;
            if (!braking && d?.selfBraked) {
              braking = (async () => ({ pass, stale: await t.source.setMigrationParameters({ vmId, ...RELEASE, pass: 1 }), hover: await t.source.setMigrationParameters({ vmId, ...HOVER, pass, parkBelowBytes: 2 ** 30, parkFromPass: pass + 1 }) }))();
              braking.catch(() => undefined);
            }
            // Parked at a crawl by its source: a change decided on the pass before, then its release.
            const parkedAt = d?.selfParked;
            if (braking && !parking && typeof parkedAt === 'number') {
              parking = (async () => ({ pass: parkedAt, stale: await t.source.setMigrationParameters({ vmId, ...RELEASE, pass: parkedAt - 1 }), released: await t.source.setMigrationParameters({ vmId, ...RELEASE, pass: parkedAt }) }))();
              parking.catch(() => undefined);
            }
            return;
          }
          if (changing || d?.phase !== 'memory') return;
          changing = t.source.setMigrationParameters({ vmId, ...RELEASE }).catch(() => null);
        },
      });
      expect(result.status).toBe('completed');
      const incoming = await follow<'awaitIncoming'>(t.destination, awaitId);
      expect([incoming.running, incoming.resumedAt]).toEqual([false, null]);
      return { pathId: plan.operationId, awaitId, changed: await (changing ?? Promise.resolve(null)), braked: await (braking ?? Promise.resolve(null)), parked: await (parking ?? Promise.resolve(null)) };
    }

    async function closePath(operationId: string): Promise<void> {
      await closeContractPath(t, operationId);
    }

    beforeAll(async () => {
      t = await makeTarget();
      spec = await bootAtSource(t, vmId, 'gcontract');
    }, 240_000);

    afterAll(() => cleanUpBothHosts(t, vmId, opened), 60_000);

    it('refuses group steps with nothing to act on, with stable codes', async () => {
      expect(await codeOf(t.source.setMigrationParameters({ vmId, downtimeLimitMs: 10 }))).toBe('MIGRATION_REFUSED');
      expect(await codeOf(t.destination.startIncoming({ vmId }))).toBe('MIGRATION_REFUSED');
      // A VM that runs here has nothing to revert.
      expect(await t.source.revertOutgoing({ vmId })).toEqual({ status: 'running' });
      expect(await codeOf(t.destination.revertOutgoing({ vmId }))).toBe('VM_NOT_RUNNING');
    }, 60_000);

    it('a source not allowed to hold (holdAllowed false) that reaches its switch-over rolls itself back at once: MIGRATION_SENT_BACK, the guest runs on there', async () => {
      const plan = await openContractPath(t, opened, { installDefaultGuest: true });
      const writable = spec.disks.filter((x) => !x.readOnly);
      const disks = writable.map((x) => ({ id: x.id, file: x.file, format: x.format, sizeBytes: 2 ** 30, backing: [] }));
      const prepared = await runOperation(t.destination, 'prepareIncoming', { vmId, name: 'gcontract', spec, disks, pathId: plan.operationId, postcopy: false, multifdChannels: 1, tls: true, resume: true, holdAfter: true });
      await t.destination.awaitIncoming({ operationId: newOperationId(), vmId });
      const sent = await runOperation(t.source, 'migrateOut', { vmId, pathId: plan.operationId, migration: prepared.migration, nbd: prepared.nbd, disks: writable.map((x) => ({ node: x.id, sync: 'full' as const })), tuning: TUNING, hold: true, brakeAfterFirstPass: null, holdAllowed: false }).then(
        () => null,
        (err: unknown) => err as { code?: string; details?: { stoppedAt?: unknown; resumedAt?: unknown } },
      );
      expect(sent?.code).toBe('MIGRATION_SENT_BACK');
      expect(typeof sent?.details?.resumedAt).toBe('string');
      expect((await t.source.vmStatus({ vmId })).status).toBe('running');
      expect((await t.source.migrationState({ vmId })).outgoing).toBeNull();
      // The destination never got the guest: it goes as any failed migration's does.
      expect((await t.destination.abortIncoming({ vmId })).removed).toBe(true);
      expect(await t.source.revertOutgoing({ vmId })).toEqual({ status: 'running' });
      await closePath(plan.operationId);
      expect((await t.source.exec({ vmId, path: 'echo', args: ['still', 'here'] })).exitCode).toBe(0);
    }, 180_000);

    it('a completed migration held at the destination is reverted: the destination goes, the guest runs on at the source', async () => {
      const { pathId, changed } = await migrateHeld();
      // The change reached the running migration (null only if it completed before the first memory progress).
      if (changed) expect(changed).toEqual(RELEASE);
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

    it('a source asked to brake itself after the first pass does so, ignores a change decided on that pass, parks itself at a small pass when asked, ignores a change decided before it, and goes on when released', async () => {
      const stopDirtying = await t.keepDirtying?.(t.source, vmId);
      try {
        const { pathId, braked, parked } = await migrateHeld(true);
        // It reported the brake past its first pass; the stale change found the brake's limits in force, the hover its own.
        expect(braked?.pass).toBeGreaterThanOrEqual(2);
        expect(braked?.stale).toEqual(BRAKE);
        expect(braked?.hover).toEqual(HOVER);
        // Hovering, it parked itself at its next pass (the brake's crawl again): a change decided before that pass found
        // the crawl in force, the release its own.
        expect(parked?.pass).toBeGreaterThan(braked?.pass ?? 0);
        expect(parked?.stale).toEqual(BRAKE);
        expect(parked?.released).toEqual(RELEASE);
        expect(await t.destination.abortIncoming({ vmId })).toEqual({ removed: true });
        expect(await codeOf(t.source.revertOutgoing({ vmId }))).toBe('no error');
        expect((await t.source.vmStatus({ vmId })).status).toBe('running');
        await closePath(pathId);
      } finally {
        // Its guest runs again (reverted): the loop stops.
        await stopDirtying?.().catch(() => undefined);
      }
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
