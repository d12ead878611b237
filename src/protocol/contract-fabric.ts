// The fabric's part of the agent contract (run at the end of contract.ts, on
// the VM the contract has booted, against the real and the fake agent): a
// switched-over fork kept as a host template; garbage collection keeps its
// memory and files while it exists; children spawned from it with no parent
// running, one handed out (resumed, hostname, environment, script output);
// the template exported into a checkpoint file and imported back as another
// host template whose child runs; a broken or removed one reported and
// refused with TEMPLATE_MISSING.
import { expect, it } from 'vitest';
import type { AgentClient } from './client.ts';
import { newOperationId, runOperation } from './client.ts';
import { templateFolderFile } from './calls-fabric.ts';
import { codeOf } from './contract-support.ts';
import { guestMemoryBytes } from './schemas.ts';
import type { VmSpec } from './schemas.ts';

interface FabricContractState {
  t: { client: AgentClient; bootTimeoutMs: number };
  vmId: string;
  spec: VmSpec;
}

export function fabricContract(state: () => FabricContractState): void {
  it('keeps a fork as a host template, spawns and hands out children of it, exports and imports it', async () => {
    const { t, vmId, spec } = state();
    const templateId = '6f6f6f6f-0000-4000-8000-00000000f001';
    const importedId = '6f6f6f6f-0000-4000-8000-00000000f002';
    const childA = '6f6f6f6f-0000-4000-8000-00000000f0a1';
    const childB = '6f6f6f6f-0000-4000-8000-00000000f0b1';
    const childSpec = (s: VmSpec, mac: string): VmSpec => ({ ...s, nics: s.nics.map((n) => ({ ...n, mac })) });
    try {
      // The source maps a template since the checkpoint: its memory becomes its own before a new freeze.
      await runOperation(t.client, 'startOwnedTarget', { vmId, name: 'contract', spec });
      await runOperation(t.client, 'migrateToOwnedTarget', { vmId });
      await t.client.switchToOwnedTarget({ vmId });
      const forkId = newOperationId();
      expect(await codeOf(t.client.keepForkTemplate({ forkId, templateId, spec }))).toBe('FORK_NOT_PREPARED');
      const prepared = await runOperation(t.client, 'prepareFork', { forkId, source: { vmId, name: 'contract', spec }, children: [], maxDepth: 64 });
      const frozen: VmSpec = { ...spec, disks: spec.disks.map((d) => ({ ...d, file: prepared.disks.frozen.find((f) => f.from === d.file)?.to ?? d.file, owned: false })) };
      expect(await codeOf(t.client.keepForkTemplate({ forkId, templateId, spec: frozen }))).toBe('FORK_NOT_SWITCHED');
      await t.client.switchFork({ forkId });
      const kept = await t.client.keepForkTemplate({ forkId, templateId, spec: frozen });
      expect(kept.memoryTemplateId).toBe(prepared.templateId);
      expect(kept.memoryBytes).toBe(guestMemoryBytes(spec));
      await t.client.finishFork({ forkId });

      // Garbage collection told that nothing is in use keeps what the template needs.
      const frozenFiles = frozen.disks.flatMap((d) => [d.file, ...d.backing]);
      const released = await t.client.releaseUnused({ templates: [], files: prepared.disks.source.flatMap((d) => d.backing) });
      expect(released.templates).not.toContain(kept.memoryTemplateId);
      for (const f of frozenFiles) expect(released.files).not.toContain(f);
      const status = await t.client.templateStatus({ templateId, files: frozenFiles });
      expect(status).toMatchObject({ present: true, missing: [] });
      expect(status.memoryBytes).toBeGreaterThan(0);
      expect(status.memoryBytes).toBeLessThanOrEqual(kept.memoryBytes);

      // A child with no parent running: paused, then handed out.
      const a = await runOperation(t.client, 'spawnFromTemplate', { templateId, vmId: childA, name: 'contract-ta', spec: childSpec(frozen, '52:54:00:0c:f0:a1'), run: true });
      expect(a.runtime.memory).toEqual({ mode: 'derived', templateId: kept.memoryTemplateId });
      const writable = a.spec.disks.find((d) => !d.readOnly);
      expect(writable?.owned).toBe(true);
      expect(writable?.backing[0]).toBe(frozen.disks.find((d) => d.id === writable?.id)?.file);
      await runOperation(t.client, 'waitForGuestAgent', { vmId: childA, timeoutMs: t.bootTimeoutMs });
      await t.client.pauseVm({ vmId: childA });
      const out = await runOperation(t.client, 'handOutChild', { vmId: childA, resume: true, hostname: 'contract-claimed', script: 'hostname\necho "$GREETING"\n', env: ['GREETING=hello'], timeoutMs: 60_000 });
      expect(out.ok, out.error ?? '').toBe(true);
      expect(out.script).toEqual({ exitCode: 0, stdout: 'contract-claimed\nhello\n', stderr: '' });
      expect((await t.client.vmStatus({ vmId: childA })).status).toBe('running');
      const echoed = await t.client.exec({ vmId: childA, path: 'echo', args: ['child', 'ok'] });
      expect(Buffer.from(echoed.stdout, 'base64').toString()).toBe('child ok\n');

      // Carried as a checkpoint file and made a host template again, with no parent.
      const file = templateFolderFile(templateId, 'export.ckpt');
      const metadata = { schema: 2 as const, checkpointId: '7e7e7e7e-0000-4000-8000-00000000f0c2', vm: { id: templateId, name: 'contract-template' }, spec: frozen, createdAt: new Date().toISOString(), hostId: 'contract-host' };
      const exported = await runOperation(t.client, 'exportTemplate', { templateId, file, metadata });
      expect(exported.fileBytes).toBeGreaterThan(0);
      expect(await codeOf(runOperation(t.client, 'exportTemplate', { templateId, file, metadata }))).toBe('ALREADY_EXISTS');
      const imported = await runOperation(t.client, 'importTemplate', { templateId: importedId, checkpoint: file, spec: frozen });
      expect(imported.memoryTemplateId).not.toBe(kept.memoryTemplateId);
      // The file names the checkpoint id it was given: removeCheckpoint removes it by that id, and by no other.
      expect((await t.client.removeCheckpoint({ file, checkpointId: '7e7e7e7e-0000-4000-8000-00000000f0c3', createdAt: metadata.createdAt })).removed).toBe(false);
      expect((await t.client.removeCheckpoint({ file, checkpointId: metadata.checkpointId, createdAt: metadata.createdAt })).removed).toBe(true);
      const b = await runOperation(t.client, 'spawnFromTemplate', { templateId: importedId, vmId: childB, name: 'contract-tb', spec: childSpec(frozen, '52:54:00:0c:f0:b1'), run: false });
      expect(b.runtime.memory.templateId).toBe(imported.memoryTemplateId);
      expect((await t.client.vmStatus({ vmId: childB })).status).toBe('paused');
      const outB = await runOperation(t.client, 'handOutChild', { vmId: childB, resume: true, hostname: 'contract-imported', timeoutMs: 60_000 });
      expect(outB.ok, outB.error ?? '').toBe(true);
      expect(outB.script).toBeNull();

      // Removed, a host template is reported gone and spawns nothing; its children run on.
      await t.client.removeTemplate({ templateId: importedId });
      expect((await t.client.templateStatus({ templateId: importedId, files: [] })).present).toBe(false);
      expect(await codeOf(runOperation(t.client, 'spawnFromTemplate', { templateId: importedId, vmId: '6f6f6f6f-0000-4000-8000-00000000f0c1', name: 'contract-tc', spec: frozen, run: false }))).toBe('TEMPLATE_MISSING');
      expect((await t.client.vmStatus({ vmId: childB })).status).toBe('running');
    } finally {
      for (const id of [childA, childB]) {
        await t.client.killVm({ vmId: id }).catch(() => undefined);
        await t.client.deleteVmFiles({ vmId: id }).catch(() => undefined);
      }
      await t.client.removeTemplate({ templateId }).catch(() => undefined);
      await t.client.removeTemplate({ templateId: importedId }).catch(() => undefined);
    }
  }, 240_000);
}
