// Hostile images, built for real with qemu-img (and a byte patch where
// qemu-img refuses to make the file): each must be refused with the reason
// named, before any QEMU opens it.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createImage, rebaseImage } from '../qemu/index.ts';
import { readQcow2Header } from './qcow2-header.ts';
import { UnsafeImageError, inspectImage } from './safe-image.ts';

describe('safe images', () => {
  let root: string;
  let ds: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'offshoot-safe-'));
    ds = join(root, 'ds');
    mkdirSync(ds);
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const qcow2 = (name: string, backing?: { path: string; format: 'qcow2' | 'raw' }, unsafe = false) =>
    createImage({ path: join(ds, name), format: 'qcow2', ...(backing ? { backing } : { sizeBytes: 1 << 20 }), ...(unsafe ? { sizeBytes: 1 << 20, unsafeBacking: true } : {}) });
  const reason = async (path: string, maxDepth?: number) => {
    try {
      await inspectImage(path, { allowedRoots: [ds], ...(maxDepth ? { maxDepth } : {}) });
      return 'accepted';
    } catch (err) {
      expect(err).toBeInstanceOf(UnsafeImageError);
      return (err as UnsafeImageError).reason;
    }
  };

  it('accepts a chain inside the datastore and returns it', async () => {
    await qcow2('base.qcow2');
    await qcow2('mid.qcow2', { path: join(ds, 'base.qcow2'), format: 'qcow2' });
    await qcow2('top.qcow2', { path: 'mid.qcow2', format: 'qcow2' });
    const image = await inspectImage(join(ds, 'top.qcow2'), { allowedRoots: [ds] });
    expect(image.format).toBe('qcow2');
    expect(image.chain.map((c) => c.path)).toEqual([join(ds, 'mid.qcow2'), join(ds, 'base.qcow2')]);
    writeFileSync(join(ds, 'disk.raw'), Buffer.alloc(4096));
    expect((await inspectImage(join(ds, 'disk.raw'), { allowedRoots: [ds] })).format).toBe('raw');
  });

  it('refuses a backing file outside the datastore: absolute, ../ relative, or through a symlink', async () => {
    await qcow2('abs.qcow2', { path: '/etc/passwd', format: 'raw' }, true);
    expect(await reason(join(ds, 'abs.qcow2'))).toBe('outside-datastore');
    writeFileSync(join(root, 'secret.raw'), Buffer.alloc(4096));
    await qcow2('rel.qcow2', { path: '../secret.raw', format: 'raw' }, true);
    expect(await reason(join(ds, 'rel.qcow2'))).toBe('outside-datastore');
    symlinkSync(join(root, 'secret.raw'), join(ds, 'link.raw'));
    await qcow2('sym.qcow2', { path: 'link.raw', format: 'raw' }, true);
    expect(await reason(join(ds, 'sym.qcow2'))).toBe('outside-datastore');
    await qcow2('proto.qcow2', { path: 'nbd:127.0.0.1:10809', format: 'raw' }, true);
    expect(await reason(join(ds, 'proto.qcow2'))).toMatch(/outside-datastore|not-found/);
  });

  it('refuses the image itself when it lies outside the datastore', async () => {
    writeFileSync(join(root, 'outside.raw'), Buffer.alloc(4096));
    expect(await reason(join(root, 'outside.raw'))).toBe('outside-datastore');
  });

  it('refuses a loop and a chain deeper than the limit', async () => {
    await qcow2('a.qcow2');
    await qcow2('b.qcow2', { path: join(ds, 'a.qcow2'), format: 'qcow2' });
    await rebaseImage(join(ds, 'a.qcow2'), { path: join(ds, 'b.qcow2'), format: 'qcow2' }, { unsafe: true });
    expect(await reason(join(ds, 'b.qcow2'))).toBe('loop');
    await qcow2('d0.qcow2');
    for (let i = 1; i <= 5; i++) await qcow2(`d${i}.qcow2`, { path: join(ds, `d${i - 1}.qcow2`), format: 'qcow2' });
    expect(await reason(join(ds, 'd5.qcow2'), 4)).toBe('too-deep');
    expect(await reason(join(ds, 'd5.qcow2'), 5)).toBe('accepted');
  });

  it('refuses an undeclared or wrong backing format', async () => {
    await qcow2('base.qcow2');
    await qcow2('lie.qcow2', { path: join(ds, 'base.qcow2'), format: 'raw' }, true);
    expect(await reason(join(ds, 'lie.qcow2'))).toBe('format-mismatch');
    await qcow2('nofmt.qcow2', { path: join(ds, 'base.qcow2'), format: 'qcow2' });
    // qemu-img insists on a format now; older images had none. Blank the extension type to make one.
    const file = join(ds, 'nofmt.qcow2');
    const bytes = readFileSync(file);
    const at = bytes.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
    expect(at).toBeGreaterThan(0);
    bytes.writeUInt32BE(0, at);
    writeFileSync(file, bytes);
    expect((await readQcow2Header(file)).backingFormat).toBeNull();
    expect(await reason(file)).toBe('no-backing-format');
  });

  it('refuses an external data file', async () => {
    writeFileSync(join(ds, 'data.raw'), Buffer.alloc(1 << 20));
    await createImage({ path: join(ds, 'ext.qcow2'), format: 'qcow2', sizeBytes: 1 << 20 });
    const { execFileSync } = await import('node:child_process');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(ds, 'data.raw')},data_file_raw=on`, join(ds, 'ext2.qcow2'), '1M']);
    expect(await reason(join(ds, 'ext2.qcow2'))).toBe('external-data-file');
  });

  it('refuses a truncated or corrupted header as CORRUPT_IMAGE', async () => {
    const bad = join(ds, 'bad.qcow2');
    writeFileSync(bad, Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    await expect(inspectImage(bad, { allowedRoots: [ds] })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await qcow2('ok.qcow2');
    const ok = readFileSync(join(ds, 'ok.qcow2'));
    ok.writeUInt32BE(0xffffffff, 100); // header_length
    writeFileSync(join(ds, 'len.qcow2'), ok);
    await expect(inspectImage(join(ds, 'len.qcow2'), { allowedRoots: [ds] })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
  });
});
