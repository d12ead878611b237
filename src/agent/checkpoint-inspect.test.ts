// A checkpoint file given by path, against real files: a valid file whose
// frozen disk exists is accepted with its metadata; a missing disk, a disk
// whose backing chain leaves the allowed folders, metadata without a spec or
// of another memory size, and a truncated file are refused with clear errors.
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, writeCheckpoint } from '../memory/index.ts';
import { createImage } from '../qemu/index.ts';
import { inspectCheckpointFile } from './checkpoint-inspect.ts';
import { hostSpecOf, readCheckpointMetadata } from './checkpoint-meta.ts';
import { Locations } from './locations.ts';
import { HostLayout } from './layout.ts';
import { PathPolicy } from './path-policy.ts';
import type { VmSpec } from './types.ts';

const MEMORY = 16 * 1024 * 1024;

describe('checkpoint file inspection', () => {
  let root: string;
  let layout: HostLayout;
  let policy: PathPolicy;
  let base: string;
  let locations: Locations;
  /** Metadata written before schema 2 (absolute paths): read under the compatibility rule. */
  const inspect = (path: string) => inspectCheckpointFile(policy, path, (raw) => readCheckpointMetadata(locations, path, raw, 'h'), (spec) => hostSpecOf(locations, spec));

  const spec = (disks: VmSpec['disks'], memoryMiB = 16): VmSpec => ({ vcpus: 1, memoryMiB, boot: { kind: 'kernel', kernel: join(root, 'k'), cmdline: '' }, disks, nics: [], defaultGuest: true });
  const write = async (name: string, metadata: Record<string, unknown>) => {
    const path = join(root, name);
    await writeCheckpoint(path, { memoryBytes: MEMORY, readBlock: async (i, into) => (i === 0 ? (into.fill(7), BLOCK_BYTES) : 0), metadata, deviceState: Buffer.from('QEVM') });
    return path;
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'osh-inspect-'));
    layout = new HostLayout(join(root, 'home'), join(root, 'mem'));
    mkdirSync(layout.home, { recursive: true });
    policy = new PathPolicy(layout.home, [root]);
    locations = new Locations(layout.home, policy);
    base = join(layout.home, 'bases', 'frozen.qcow2');
    for (const d of [join(layout.home, 'bases'), join(layout.home, 'images'), join(root, 'other'), join(root, 'elsewhere')]) mkdirSync(d, { recursive: true });
    await createImage({ path: join(layout.home, 'images', 'root.qcow2'), format: 'qcow2', sizeBytes: 64 * 1024 * 1024 });
    await createImage({ path: base, format: 'qcow2', backing: { path: join(layout.home, 'images', 'root.qcow2'), format: 'qcow2' } });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('accepts a valid file whose frozen disk exists', async () => {
    const path = await write('ok.ckpt', { vm: { id: 'x', name: 'web' }, spec: spec([{ id: 'disk0', path: base, format: 'qcow2', readOnly: false, owned: false, backing: [] }]) });
    const found = await inspect(path);
    expect(found.memoryBytes).toBe(MEMORY);
    expect(found.fileBytes).toBe(statSync(path).size);
    expect(found.metadata.vm.name).toBe('web');
    expect(found.metadata.spec.disks[0]?.file).toBe('home:bases/frozen.qcow2');
  });

  it('accepts RAM 8 KiB past a whole MiB when the spec says so (memoryExtraKiB), and refuses it otherwise', async () => {
    const bytes = MEMORY + 8 * 1024;
    const vm = { id: '6f6f6f6f-0000-4000-8000-00000000000a', name: 'web' };
    const protocolSpec = (extra?: number) => ({ vcpus: 1, memoryMiB: 16, ...(extra ? { memoryExtraKiB: extra } : {}), boot: { kind: 'disk' as const }, disks: [], nics: [], defaultGuest: false });
    const at = async (name: string, extra?: number) => {
      const path = join(root, name);
      await writeCheckpoint(path, { memoryBytes: bytes, readBlock: async (i, into) => (i === 16 ? (into.fill(9, 0, 8192), 8192) : 0), metadata: { schema: 2, vm, spec: protocolSpec(extra), createdAt: new Date().toISOString(), hostId: 'h' }, deviceState: Buffer.from('QEVM') });
      return path;
    };
    const found = await inspect(await at('extra.ckpt', 8));
    expect(found.memoryBytes).toBe(bytes);
    expect(found.metadata.spec.memoryExtraKiB).toBe(8);
    await expect(inspect(await at('noextra.ckpt'))).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining(`holds ${bytes} bytes`) });
  });

  it('refuses a missing or unsafe disk', async () => {
    const missing = await write('missing.ckpt', { spec: spec([{ id: 'disk0', path: join(root, 'nowhere.qcow2'), format: 'qcow2', readOnly: false, owned: false, backing: [] }]) });
    await expect(inspect(missing)).rejects.toMatchObject({ code: 'CHECKPOINT_DISK_UNAVAILABLE', message: expect.stringContaining('does not exist') });
    // A disk outside the home whose backing file is in yet another folder: the chain leaves the allowed roots.
    const elsewhere = join(root, 'elsewhere');
    await createImage({ path: join(root, 'other', 'parent.qcow2'), format: 'qcow2', sizeBytes: 1024 * 1024 });
    await createImage({ path: join(elsewhere, 'top.qcow2'), format: 'qcow2', backing: { path: join(root, 'other', 'parent.qcow2'), format: 'qcow2' } });
    const unsafe = await write('unsafe.ckpt', { spec: spec([{ id: 'disk0', path: join(elsewhere, 'top.qcow2'), format: 'qcow2', readOnly: false, owned: false, backing: [] }]) });
    await expect(inspect(unsafe)).rejects.toMatchObject({ code: 'CHECKPOINT_DISK_UNAVAILABLE', message: expect.stringContaining('not safe') });
    const wrongFormat = await write('format.ckpt', { spec: spec([{ id: 'disk0', path: base, format: 'raw', readOnly: false, owned: false, backing: [] }]) });
    await expect(inspect(wrongFormat)).rejects.toMatchObject({ code: 'CHECKPOINT_DISK_UNAVAILABLE' });
  });

  it('refuses metadata without a spec or of another size, and a truncated file', async () => {
    await expect(inspect(await write('nospec.ckpt', { vm: { name: 'web' } }))).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', part: 'metadata' });
    await expect(inspect(await write('size.ckpt', { spec: spec([], 32) }))).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining('32 MiB') });
    const cut = await write('cut.ckpt', { spec: spec([]) });
    truncateSync(cut, statSync(cut).size - 10);
    await expect(inspect(cut)).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', part: 'table of contents' });
    await expect(inspect(join(root, 'absent.ckpt'))).rejects.toMatchObject({ code: 'CHECKPOINT_NOT_FOUND' });
  });
});
