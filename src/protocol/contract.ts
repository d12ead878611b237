// The agent contract: what every implementation of the protocol must do, run
// against the real agent in process, the real agent over HTTP on loopback, and
// the fake agent (in process and over HTTP), so none of them can drift from
// the others. One target per describe block: the suite boots one VM and forks
// it once, since against real QEMU each boot costs seconds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OffshootError } from '../common/index.ts';
import type { AgentClient } from './client.ts';
import { follow, newOperationId, runOperation } from './client.ts';
import { isLocator } from './locator.ts';
import { guestMemoryBytes } from './schemas.ts';
import type { VmRuntime, VmSpec } from './schemas.ts';
import { PROTOCOL_VERSION } from './version.ts';
import { fabricContract } from './contract-fabric.ts';
import type { ContractTargetBase } from './contract-support.ts';
import { codeOf } from './contract-support.ts';

export interface AgentContractTarget extends ContractTargetBase {
  /** A client at the agent's current epoch. */
  client: AgentClient;
  /** The same agent, reached with the epoch given (to test stale epochs). */
  withEpoch(epoch: number): AgentClient;
  /** A path a person may name (inside an allowed folder) holding a small raw disk image. */
  allowedImage: string;
  /** A path outside every allowed place. */
  forbiddenPath: string;
}

export function runAgentContract(label: string, makeTarget: () => Promise<AgentContractTarget>): void {
  describe(`agent contract: ${label}`, () => {
    let t: AgentContractTarget;
    const vmId = '6f6f6f6f-0000-4000-8000-000000000001';
    const childId = '6f6f6f6f-0000-4000-8000-000000000002';
    const restoredId = '6f6f6f6f-0000-4000-8000-000000000003';
    let spec: VmSpec;
    let runtime: VmRuntime;

    beforeAll(async () => {
      t = await makeTarget();
      await t.client.attach({ hostId: 'contract-host', epoch: 2 });
    }, 180_000);

    afterAll(async () => {
      for (const id of [vmId, childId, restoredId]) {
        await t.client.killVm({ vmId: id }).catch(() => undefined);
        await t.client.deleteVmFiles({ vmId: id }).catch(() => undefined);
      }
      await t.dispose();
    }, 60_000);

    it('tells its protocol version and capabilities', async () => {
      const info = await t.client.hostInfo({});
      expect(info.protocolVersion).toBe(PROTOCOL_VERSION);
      expect(info.capabilities).toEqual(expect.arrayContaining(['vm', 'fork', 'checkpoint']));
      expect(info.epoch).toBe(2);
    });

    it('refuses a request from an older epoch, and unknown calls and bad input with stable codes', async () => {
      expect(await codeOf(t.withEpoch(1).pauseVm({ vmId }))).toBe('STALE_EPOCH');
      // Fields a newer controller adds are ignored (it checks capabilities before it relies on one).
      expect(await codeOf((t.client.hostInfo as (r: unknown) => Promise<unknown>)({ addedLater: 1 }))).toBe('no error');
      expect(await codeOf(t.client.prepareVm({ vmId: 'not-a-uuid', name: 'x', vcpus: 1, memoryMiB: 128, boot: { kind: 'default-guest' }, disks: [], network: 'none' }))).toBe('INVALID_INPUT');
      expect(await codeOf(t.client.prepareVm({ vmId, name: '../etc', vcpus: 1, memoryMiB: 128, boot: { kind: 'default-guest' }, disks: [], network: 'none' }))).toBe('INVALID_INPUT');
      expect(await codeOf(t.client.removeDisk({ file: '/etc/passwd' }))).toBe('INVALID_INPUT');
      expect(await codeOf(t.client.removeDisk({ file: 'home:../../etc/passwd' }))).toBe('INVALID_INPUT');
    });

    it('refuses a disk outside the places it may touch, and creates nothing', async () => {
      expect(await codeOf(t.client.prepareVm({ vmId, name: 'contract', vcpus: 1, memoryMiB: 128, boot: { kind: 'default-guest' }, disks: [{ source: { hostPath: t.forbiddenPath }, readOnly: true }], network: 'none' }))).toBe('PATH_NOT_ALLOWED');
    });

    it('prepares and boots a VM as operations; a retried start reaches the same operation', async () => {
      // The refused prepare above left nothing behind, so the same VM id prepares now.
      spec = await t.client.prepareVm({ vmId, name: 'contract', vcpus: 1, memoryMiB: 192, boot: { kind: 'default-guest' }, disks: [{ source: { hostPath: t.allowedImage }, readOnly: true }], network: 'user' });
      expect(spec.disks[0]?.owned).toBe(true);
      // A TCG host gives guest RAM 8 KiB beyond its MiB (QEMU 7.2's TCG dirty tracking, see qemu/argv.ts).
      expect(spec.memoryExtraKiB ?? 0).toBe((await t.client.hostInfo({})).accel === 'tcg' ? 8 : 0);
      for (const disk of spec.disks) {
        expect(isLocator(disk.file)).toBe(true);
        for (const b of disk.backing) expect(isLocator(b)).toBe(true);
      }
      expect(spec.boot.kind === 'kernel' && isLocator(spec.boot.kernel)).toBe(true);
      const operationId = newOperationId();
      const first = await t.client.startVm({ operationId, vmId, name: 'contract', spec });
      const again = await t.client.startVm({ operationId, vmId, name: 'contract', spec });
      expect(again.operationId).toBe(first.operationId);
      const progress: number[] = [];
      runtime = await follow<'startVm'>(t.client, operationId, { onProgress: (e) => progress.push(e.progress) });
      expect(runtime.pid).toBeGreaterThan(0);
      await runOperation(t.client, 'waitForGuestAgent', { vmId, timeoutMs: t.bootTimeoutMs });
      expect((await t.client.vmStatus({ vmId })).status).toBe('running');
      expect((await t.client.hostInfo({})).vms.map((v) => v.vmId)).toContain(vmId);
      expect(await codeOf(t.client.getOperation({ operationId: newOperationId(), afterSeq: 0, waitMs: 0 }))).toBe('OPERATION_NOT_FOUND');
    }, 180_000);

    it('runs, pauses and resumes the guest; errors keep their code and details across', async () => {
      const out = await t.client.exec({ vmId, path: 'echo', args: ['contract', 'ok'] });
      expect(out.exitCode).toBe(0);
      expect(Buffer.from(out.stdout, 'base64').toString()).toBe('contract ok\n');
      await t.client.pauseVm({ vmId });
      expect((await t.client.vmStatus({ vmId })).status).toBe('paused');
      await t.client.resumeVm({ vmId });
      expect((await t.client.vmStatus({ vmId })).status).toBe('running');
      const missing = '6f6f6f6f-0000-4000-8000-0000000000ff';
      const err = await t.client.pauseVm({ vmId: missing }).catch((e: unknown) => e as OffshootError);
      expect(err).toBeInstanceOf(OffshootError);
      expect((err as OffshootError).code).toBe('VM_NOT_RUNNING');
      expect((err as OffshootError).details.vmId).toBe(missing);
      expect((await t.client.adoptVm({ vmId, runtime })).status).toBe('running');
    }, 60_000);

    it('forks: prepared while the source runs, a switch-over, a child that runs; templates in use are kept', async () => {
      const forkId = newOperationId();
      const prepared = await runOperation(t.client, 'prepareFork', { forkId, source: { vmId, name: 'contract', spec }, children: [{ vmId: childId, name: 'contract-c1', spec: { ...spec, nics: spec.nics.map((n) => ({ ...n, mac: '52:54:00:0c:0c:01' })) } }], maxDepth: 8 });
      expect(Object.keys(prepared.incoming).sort()).toEqual([vmId, childId].sort());
      const sw = await t.client.switchFork({ forkId });
      expect(sw.wasRunning).toBe(true);
      runtime = sw.runtime;
      const child = await t.client.completeForkChild({ forkId, childId });
      expect(child.memory.templateId).toBe(prepared.templateId);
      await t.client.finishFork({ forkId });
      expect((await t.client.vmStatus({ vmId: childId })).status).toBe('running');
      const inUse = [...prepared.disks.frozen.map((f) => f.to), ...spec.disks.flatMap((d) => d.backing)];
      const released = await t.client.releaseUnused({ templates: [prepared.templateId], files: inUse });
      expect(released.templates).not.toContain(prepared.templateId);
      spec = { ...spec, disks: prepared.disks.source };
    }, 180_000);

    it('reports a killed VM as an event', async () => {
      const { nextSeq } = await t.client.events({ afterSeq: 0, waitMs: 0 });
      await t.client.killVm({ vmId: childId });
      const deadline = Date.now() + 10_000;
      let seen = false;
      let after = Math.max(0, nextSeq - 1);
      while (!seen && Date.now() < deadline) {
        const page = await t.client.events({ afterSeq: after, waitMs: 1000 });
        seen = page.events.some((e) => e.type === 'vm.exit' && e.vmId === childId);
        after = page.nextSeq;
      }
      expect(seen).toBe(true);
      expect((await t.client.vmStatus({ vmId: childId })).status).toBeNull();
      await t.client.deleteVmFiles({ vmId: childId });
    }, 30_000);

    it('writes a checkpoint to a new file only, and restores it as a new VM', async () => {
      // After the fork the source maps the template: its memory becomes its own again before a new freeze.
      // An aborted attempt leaves the VM running in its QEMU.
      const abandoned = await runOperation(t.client, 'startOwnedTarget', { vmId, name: 'contract', spec });
      await t.client.abortOwnedTarget({ vmId });
      expect((await t.client.vmStatus({ vmId })).status).toBe('running');
      expect(await codeOf(t.client.switchToOwnedTarget({ vmId }))).toBe('FORK_NOT_PREPARED');
      const target = await runOperation(t.client, 'startOwnedTarget', { vmId, name: 'contract', spec });
      expect(target.pid).not.toBe(abandoned.pid);
      expect(target.memory.mode).toBe('owned');
      const moved = await runOperation(t.client, 'migrateToOwnedTarget', { vmId });
      expect(moved.bytes).toBeGreaterThan(0);
      const owned = await t.client.switchToOwnedTarget({ vmId });
      expect(owned.pid).toBe(target.pid);
      expect((await t.client.vmStatus({ vmId })).status).toBe('running');
      const forkId = newOperationId();
      const prepared = await runOperation(t.client, 'prepareFork', { forkId, source: { vmId, name: 'contract', spec }, children: [], maxDepth: 64 });
      const frozenSpec: VmSpec = { ...spec, disks: spec.disks.map((d) => ({ ...d, file: prepared.disks.frozen.find((f) => f.from === d.file)?.to ?? d.file, owned: false })) };
      await t.client.switchFork({ forkId });
      spec = { ...spec, disks: prepared.disks.source };
      const plan = await t.client.planCheckpointFile({ name: 'contract-ckpt' });
      const checkpointId = newOperationId();
      const createdAt = new Date().toISOString();
      const metadata = { schema: 2 as const, checkpointId, vm: { id: vmId, name: 'contract' }, spec: frozenSpec, createdAt, hostId: 'contract-host' };
      const written = await runOperation(t.client, 'writeCheckpoint', { forkId, checkpointId, file: plan.file, memoryBytes: guestMemoryBytes(spec), metadata });
      expect(written.fileBytes).toBeGreaterThan(0);
      await t.client.finishFork({ forkId });
      expect(await codeOf(t.client.planCheckpointFile({ name: 'contract-ckpt' }))).toBe('ALREADY_EXISTS');
      const inspected = await t.client.inspectCheckpoint({ source: { file: plan.file } });
      expect(inspected.metadata.vm.id).toBe(vmId);
      const restored = await runOperation(t.client, 'restoreVm', { vmId: restoredId, name: 'contract-r1', checkpoint: plan.file, spec: { ...frozenSpec, nics: frozenSpec.nics.map((n) => ({ ...n, mac: '52:54:00:0c:0c:02' })) }, mode: 'eager' });
      expect(restored.runtime.memory.mode).toBe('owned');
      expect((await t.client.vmStatus({ vmId: restoredId })).status).toBe('running');
      await t.client.killVm({ vmId: restoredId });
      await t.client.deleteVmFiles({ vmId: restoredId });
      // Only the file that names the checkpoint is removed.
      expect((await t.client.removeCheckpoint({ file: plan.file, checkpointId: newOperationId(), createdAt })).removed).toBe(false);
      expect((await t.client.removeCheckpoint({ file: plan.file, checkpointId, createdAt })).removed).toBe(true);
    }, 180_000);

    fabricContract(() => ({ t, vmId, spec }));
  });
}
