// The move plan by content id against two fake agents (which answer
// describeFiles and findContent the way the real agent does, passing the same
// contract): the longest chain the destination holds below a disk is
// skipped, what lies above it is sent, a chain held only in part skips its
// lower layers, and with verify a held layer whose bytes differ is reported
// and not used. The real agents do the same in tests/e2e/mobility.test.ts.
import { describe, expect, it } from 'vitest';
import { FakeAgent, inProcessClient } from '../../protocol/index.ts';
import type { DiskMetaData, Locator } from '../../protocol/index.ts';
import { planByContent } from './content-plan.ts';

const b0 = 'ds.d0000000001:disks/b0.raw' as Locator;
const b1 = 'ds.d0000000001:disks/b1.qcow2' as Locator;
const meta = (id: string, contentId: string, parentId: string | null, format: 'raw' | 'qcow2'): DiskMetaData => ({ version: 1, id, name: id, contentId, parentId, format, virtualSize: 1 << 20, readOnly: true, createdAt: '2026-01-01T00:00:00.000Z' });

function host(name: string) {
  const agent = new FakeAgent({ hostId: name });
  return { agent, client: inProcessClient(agent.endpoint, { hostName: name, epoch: () => 0 }) };
}

/** Puts a datastore disk on a fake host: the file, its sidecar, and (for a copy) the content of its source. */
function put(h: ReturnType<typeof host>, file: Locator, m: DiskMetaData, content?: string) {
  h.agent.files.add(file);
  h.agent.metas.set(file, m);
  if (content) h.agent.content.set(file, content);
}

function setup() {
  const source = host('src');
  put(source, b0, meta('b0', 'cid-b0', null, 'raw'));
  put(source, b1, meta('b1', 'cid-b1', 'b0', 'qcow2'));
  return { source, dest: host('dst') };
}

const c0 = 'ds.d0000000002:disks/c0.raw' as Locator;
const c1 = 'ds.d0000000002:disks/c1.qcow2' as Locator;
const request = { disks: [{ id: 'disk0', backing: [b1, b0] }], contentIds: { [b0]: 'cid-b0', [b1]: 'cid-b1' } };

describe('planByContent', () => {
  it('asks the source to hash only the layers that have no recorded content id', async () => {
    const { source, dest } = setup();
    const asked: Array<{ file: string; contentId: boolean }> = [];
    const client = { ...source.client, describeFiles: (r: Parameters<typeof source.client.describeFiles>[0]) => {
      asked.push(...r.files.map((f) => ({ file: f.file, contentId: f.contentId ?? false })));
      return source.client.describeFiles(r);
    } } as typeof source.client;
    await planByContent(client, dest.client, { ...request, contentIds: { [b1]: 'cid-b1' } });
    expect(asked).toEqual([{ file: b1, contentId: false }, { file: b0, contentId: true }]);
  });

  it('sends the whole chain to a host that holds none of it', async () => {
    const { source, dest } = setup();
    const [plan] = await planByContent(source.client, dest.client, request);
    expect(plan).toMatchObject({ diskId: 'disk0', heldLayers: 0, skipAll: false, destBacking: [], skippedBytes: 0, sendBytes: 2 << 20 });
    expect(plan?.send.map((l) => l.file)).toEqual([b1, b0]);
  });

  it('skips the whole chain a host holds by content id, and gives the chain to create the new top over', async () => {
    const { source, dest } = setup();
    put(dest, c0, meta('c0', 'cid-b0', null, 'raw'), b0);
    put(dest, c1, meta('c1', 'cid-b1', 'c0', 'qcow2'), b1);
    const [plan] = await planByContent(source.client, dest.client, request);
    expect(plan).toMatchObject({ heldLayers: 2, skipAll: true, send: [], sendBytes: 0, skippedBytes: 2 << 20 });
    expect(plan?.destBacking).toEqual([
      { file: c1, format: 'qcow2' },
      { file: c0, format: 'raw' },
    ]);
  });

  it('skips the lower layers a host holds and sends the ones above', async () => {
    const { source, dest } = setup();
    put(dest, c0, meta('c0', 'cid-b0', null, 'raw'), b0);
    const [plan] = await planByContent(source.client, dest.client, request);
    expect(plan).toMatchObject({ heldLayers: 1, skipAll: false, destBacking: [{ file: c0, format: 'raw' }], sendBytes: 1 << 20, skippedBytes: 1 << 20 });
    expect(plan?.send.map((l) => l.file)).toEqual([b1]);
  });

  it('with verify, does not use a held layer whose bytes differ, and reports it', async () => {
    const { source, dest } = setup();
    put(dest, c0, meta('c0', 'cid-b0', null, 'raw'), 'tampered');
    expect((await planByContent(source.client, dest.client, request))[0]?.heldLayers).toBe(1);
    const [plan] = await planByContent(source.client, dest.client, { ...request, verify: true });
    expect(plan).toMatchObject({ heldLayers: 0, skipAll: false, sendBytes: 2 << 20 });
    expect(plan?.mismatch?.file).toBe(c0);
  });
});
