// The agent contract of the mobility calls (calls-mobility.ts), run against
// the same targets as contract.ts (the real agent in process and over HTTP,
// the fake agent in process and over HTTP). On the files of a prepared (never
// booted) default-guest VM: describeFiles tells sizes, formats and content
// ids; findContent finds the guest's base by its content id (and verifies it,
// or reports a wrong hash as a mismatch), and finds nothing for an unknown
// id; a file served by openFileServer is copied byte-exact by fetchFile, a
// wrong token is refused, and closeFileServer says how much it sent.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentContractTarget } from './contract.ts';
import { codeOf } from './contract-support.ts';
import { runOperation } from './client.ts';
import { contentIdOfHash } from './calls-mobility.ts';
import type { Locator } from './locator.ts';
import type { VmSpec } from './schemas.ts';

export function runMobilityContract(label: string, makeTarget: () => Promise<AgentContractTarget>): void {
  describe(`agent mobility contract: ${label}`, () => {
    let t: AgentContractTarget;
    const vmId = '6f6f6f6f-0000-4000-8000-0000000000a1';
    let spec: VmSpec;
    let kernel: Locator;
    let base: Locator;
    let top: Locator;

    beforeAll(async () => {
      t = await makeTarget();
      await t.client.attach({ hostId: 'contract-host', epoch: 2 });
      spec = await t.client.prepareVm({ vmId, name: 'mobility', vcpus: 1, memoryMiB: 128, boot: { kind: 'default-guest' }, disks: [], network: 'none' });
      if (spec.boot.kind !== 'kernel') throw new Error('the default guest boots a kernel');
      kernel = spec.boot.kernel;
      top = spec.disks[0]?.file as Locator;
      base = spec.disks[0]?.backing[0] as Locator;
    }, 120_000);

    afterAll(async () => {
      await t.client.deleteVmFiles({ vmId }).catch(() => undefined);
      await t.dispose();
    }, 60_000);

    it("describes files: size, data bytes, format, and a read-only file's content id", async () => {
      const { files } = await t.client.describeFiles({ files: [{ file: kernel, contentId: true }, { file: top }, { file: base, contentId: true }, { file: `${top}-missing` }] });
      const [k, d, b, m] = files;
      expect(k?.exists && d?.exists && b?.exists).toBe(true);
      expect(k?.size).toBeGreaterThan(0);
      expect(k?.dataBytes).toBeLessThanOrEqual(k?.size ?? 0);
      expect(k?.format).toBe('raw');
      expect(b?.format).toBe('qcow2');
      expect(k?.contentId).toBe((await t.client.contentId({ file: kernel })).contentId);
      expect(d?.contentId).toBeNull();
      expect(m?.exists).toBe(false);
    });

    it('finds a chain it holds by content id, verifies it by hash, and reports a wrong hash', async () => {
      const baseId = (await t.client.contentId({ file: base })).contentId;
      const hash = (await runOperation(t.client, 'hashDisk', { file: base })).hash;
      // A host's own bases are named by their bytes.
      expect(contentIdOfHash(hash)).toBe(baseId);
      const { answers } = await runOperation(t.client, 'findContent', { queries: [{ contentIds: [baseId] }, { contentIds: ['cid-nothing-here'] }, { contentIds: [baseId, baseId] }], verify: false });
      expect(answers[0]?.file).toBe(base);
      expect(answers[0]?.chain).toEqual([base]);
      expect(answers[1]?.file).toBeNull();
      // The same id over a layer it does not have below it: no match.
      expect(answers[2]?.file).toBeNull();
      const checked = await runOperation(t.client, 'findContent', { queries: [{ contentIds: [baseId], hashes: [hash] }, { contentIds: [baseId], hashes: ['xxh64:0000000000000000:1'] }], verify: true });
      expect(checked.answers[0]).toMatchObject({ file: base, verified: true, mismatch: null });
      expect(checked.answers[1]).toMatchObject({ file: null, verified: false, mismatch: { file: base, layer: 0, expected: 'xxh64:0000000000000000:1', actual: hash } });
    });

    it('copies a file another host serves, byte-exact; a wrong token is refused', async () => {
      const served = await t.client.openFileServer({ file: kernel, peer: '127.0.0.1' });
      expect(served.url).toMatch(/^http:\/\//);
      const target = `home:vms/${vmId}/kernel-copy`;
      expect(await codeOf(runOperation(t.client, 'fetchFile', { source: { url: served.url, token: `${served.token.slice(0, -2)}xx` }, sourceName: kernel, target: `home:vms/${vmId}/never` }))).toBe('COPY_SOURCE_UNREACHABLE');
      const copied = await runOperation(t.client, 'fetchFile', { source: { url: served.url, token: served.token }, sourceName: kernel, target });
      expect(copied.state).toBe('done');
      expect((await runOperation(t.client, 'hashDisk', { file: target })).hash).toBe((await runOperation(t.client, 'hashDisk', { file: kernel })).hash);
      const closed = await t.client.closeFileServer({ serverId: served.serverId });
      expect(closed.existed).toBe(true);
      expect(closed.bytesServed).toBeGreaterThan(0);
      expect((await t.client.closeFileServer({ serverId: served.serverId })).existed).toBe(false);
      expect(await codeOf(t.client.openFileServer({ file: `${top}-missing`, peer: '127.0.0.1' }))).toBe('INVALID_INPUT');
    });
  });
}
