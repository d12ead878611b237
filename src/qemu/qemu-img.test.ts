// Tests of the qemu-img wrappers against real qcow2 and raw files: create
// (with backing), info (with chain, on an image in use), check (clean,
// leaky, corrupt, raw), convert and rebase (safe and unsafe).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AlreadyExistsError, InvalidInputError } from '../common/index.ts';
import { QemuImgError, checkImage, convertImage, createImage, imageInfo, rebaseImage } from './qemu-img.ts';

const dir = mkdtempSync(join(tmpdir(), 'offshoot-img-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const p = (name: string): string => join(dir, name);
const MiB = 1024 * 1024;

/** Runs one qemu-io command (write -P, read -P verifies a pattern) on a qcow2 image. */
function qemuIo(path: string, command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-io', ['-f', 'qcow2', '-c', command, path], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(err))));
  });
}

describe('createImage and imageInfo', () => {
  it('creates a qcow2 image and reads its info', async () => {
    await createImage({ path: p('base.qcow2'), format: 'qcow2', sizeBytes: 64 * MiB });
    const info = await imageInfo(p('base.qcow2'));
    expect(info).toMatchObject({ filename: p('base.qcow2'), format: 'qcow2', virtualSize: 64 * MiB, clusterSize: 65536, dirty: false });
    expect(info.backingFilename).toBeUndefined();
    expect(info.actualSize).toBeGreaterThan(0);
  });

  it('creates a raw image', async () => {
    await createImage({ path: p('disk.raw'), format: 'raw', sizeBytes: 8 * MiB });
    expect(await imageInfo(p('disk.raw'))).toMatchObject({ format: 'raw', virtualSize: 8 * MiB });
  });

  it('creates an overlay that inherits the size, and lists the backing chain', async () => {
    await createImage({ path: p('mid.qcow2'), format: 'qcow2', backing: { path: p('base.qcow2'), format: 'qcow2' } });
    await createImage({ path: p('top.qcow2'), format: 'qcow2', backing: { path: 'mid.qcow2', format: 'qcow2' } }); // relative to top's dir
    const info = await imageInfo(p('top.qcow2'), { backingChain: true });
    expect(info).toMatchObject({ virtualSize: 64 * MiB, backingFilename: 'mid.qcow2', fullBackingFilename: p('mid.qcow2'), backingFormat: 'qcow2' });
    expect(info.backingChain?.map((i) => i.filename)).toEqual([p('mid.qcow2'), p('base.qcow2')]);
    expect(info.backingChain?.[0]?.backingFilename).toBe(p('base.qcow2'));
    expect((await imageInfo(p('top.qcow2'))).backingChain).toBeUndefined();
  });

  it('refuses to overwrite an existing image unless asked', async () => {
    await expect(createImage({ path: p('base.qcow2'), format: 'qcow2', sizeBytes: MiB })).rejects.toBeInstanceOf(AlreadyExistsError);
    await createImage({ path: p('disk.raw'), format: 'raw', sizeBytes: 2 * MiB, overwrite: true });
    expect((await imageInfo(p('disk.raw'))).virtualSize).toBe(2 * MiB);
  });

  it('validates its input', async () => {
    await expect(createImage({ path: p('x.qcow2'), format: 'qcow2' })).rejects.toBeInstanceOf(InvalidInputError);
    await expect(createImage({ path: p('x.qcow2'), format: 'qcow2', sizeBytes: -1 })).rejects.toBeInstanceOf(InvalidInputError);
    await expect(createImage({ path: p('x.raw'), format: 'raw', backing: { path: p('base.qcow2'), format: 'qcow2' } })).rejects.toBeInstanceOf(InvalidInputError);
  });

  it('fails with QEMU_IMG_FAILED, the args and stderr', async () => {
    let error: unknown;
    try {
      await imageInfo(p('missing.qcow2'));
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(QemuImgError);
    const e = error as QemuImgError;
    expect(e.code).toBe('QEMU_IMG_FAILED');
    expect(e.args).toEqual(['info', '-U', '--output=json', p('missing.qcow2')]);
    expect(e.stderr).toContain('No such file or directory');
    expect(e.message).toContain('qemu-img info failed');
    expect(e.exitCode).toBe(1);

    await expect(createImage({ path: p('nodir/x.qcow2'), format: 'qcow2', sizeBytes: MiB })).rejects.toBeInstanceOf(QemuImgError);
    await expect(imageInfo(p('base.qcow2'), { binary: p('no-qemu-img') })).rejects.toThrow(/cannot run/);
  });

  it('reads the info of an image a running QEMU holds', async () => {
    await createImage({ path: p('busy.qcow2'), format: 'qcow2', sizeBytes: 16 * MiB });
    const qemu = spawn('qemu-system-x86_64', ['-machine', 'none', '-nodefaults', '-display', 'none', '-blockdev', `driver=qcow2,node-name=d0,file.driver=file,file.filename=${p('busy.qcow2')}`], { stdio: 'ignore' });
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      // Without force-share the write lock of the running QEMU makes qemu-img refuse.
      await expect(checkImage(p('busy.qcow2'))).rejects.toThrow(/Failed to get shared "write" lock/);
      expect(await imageInfo(p('busy.qcow2'))).toMatchObject({ format: 'qcow2', virtualSize: 16 * MiB });
      expect((await checkImage(p('busy.qcow2'), { forceShare: true })).supported).toBe(true);
    } finally {
      qemu.kill('SIGKILL');
      await new Promise((resolve) => qemu.once('exit', resolve));
    }
  });
});

describe('checkImage', () => {
  it('reports a clean qcow2 image as ok', async () => {
    expect(await checkImage(p('base.qcow2'))).toMatchObject({ ok: true, supported: true, corruptions: 0, leaks: 0, checkErrors: 0 });
  });

  it('reports raw images as ok but unsupported', async () => {
    expect(await checkImage(p('disk.raw'))).toEqual({ ok: true, supported: false, corruptions: 0, leaks: 0, checkErrors: 0, raw: {} });
  });

  it('reports leaked clusters without clearing ok, and corruption as not ok', async () => {
    await createImage({ path: p('leaky.qcow2'), format: 'qcow2', sizeBytes: 16 * MiB });
    await qemuIo(p('leaky.qcow2'), 'write -P 0x5a 0 1M');
    await createImage({ path: p('corrupt.qcow2'), format: 'qcow2', sizeBytes: 16 * MiB });
    await qemuIo(p('corrupt.qcow2'), 'write -P 0x5a 0 64k');
    const fd = openSync(p('corrupt.qcow2'), 'r+');
    // Point the first L2 entry at an unaligned offset (the L2 table follows the L1 and refcount tables).
    const l2 = l2TableOffset(p('corrupt.qcow2'));
    const bad = Buffer.alloc(8);
    bad.writeBigUInt64BE(0x8000000000000000n | 0x12345n);
    writeSync(fd, bad, 0, 8, l2);
    closeSync(fd);
    const corrupt = await checkImage(p('corrupt.qcow2'));
    expect(corrupt.ok).toBe(false);
    expect(corrupt.corruptions).toBeGreaterThan(0);

    makeLeak(p('leaky.qcow2'));
    const leaky = await checkImage(p('leaky.qcow2'));
    expect(leaky).toMatchObject({ ok: true, supported: true, corruptions: 0 });
    expect(leaky.leaks).toBeGreaterThan(0);
  });
});

/** The file offset of the first L2 table of a qcow2 image, from its L1 table. */
function l2TableOffset(path: string): number {
  const buf = readFileSync(path);
  const l1 = Number(buf.readBigUInt64BE(40));
  return Number(buf.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
}

/** Gives two clusters that nothing references a refcount of 1: leaked clusters. */
function makeLeak(path: string): void {
  const buf = readFileSync(path);
  const refcountTable = Number(buf.readBigUInt64BE(48));
  const block = Number(buf.readBigUInt64BE(refcountTable));
  const clusters = Math.ceil(buf.length / 65536);
  // Append two clusters and give them 16-bit refcounts of 1 (check only looks inside the file).
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.alloc(2 * 65536), 0, 2 * 65536, clusters * 65536);
  const one = Buffer.from([0, 1]);
  writeSync(fd, one, 0, 2, block + 2 * clusters);
  writeSync(fd, one, 0, 2, block + 2 * (clusters + 1));
  closeSync(fd);
}

describe('convertImage', () => {
  it('flattens a chain into a standalone image with the same content', async () => {
    await qemuIo(p('base.qcow2'), 'write -P 0x11 0 1M');
    await qemuIo(p('top.qcow2'), 'write -P 0x22 1M 1M');
    await convertImage(p('top.qcow2'), p('flat.qcow2'), { outFormat: 'qcow2' });
    const info = await imageInfo(p('flat.qcow2'));
    expect(info.backingFilename).toBeUndefined();
    await qemuIo(p('flat.qcow2'), 'read -P 0x11 0 1M');
    await qemuIo(p('flat.qcow2'), 'read -P 0x22 1M 1M');
    await convertImage(p('top.qcow2'), p('flat.raw'), { outFormat: 'raw', inFormat: 'qcow2' });
    expect((await imageInfo(p('flat.raw'))).format).toBe('raw');
    const raw = readFileSync(p('flat.raw'));
    expect(raw[0]).toBe(0x11);
    expect(raw[MiB]).toBe(0x22);
    await expect(convertImage(p('top.qcow2'), p('flat.raw'), { outFormat: 'raw' })).rejects.toBeInstanceOf(AlreadyExistsError);
    await convertImage(p('top.qcow2'), p('small.qcow2'), { outFormat: 'qcow2', compress: true });
    await qemuIo(p('small.qcow2'), 'read -P 0x22 1M 1M');
  });
});

describe('rebaseImage', () => {
  it('safe rebase keeps the content while changing the backing image', async () => {
    // top → mid → base; rebase top straight onto base: mid's clusters (none written) are copied in.
    await qemuIo(p('mid.qcow2'), 'write -P 0x33 2M 1M');
    await rebaseImage(p('top.qcow2'), { path: p('base.qcow2'), format: 'qcow2' });
    const info = await imageInfo(p('top.qcow2'), { backingChain: true });
    expect(info.backingFilename).toBe(p('base.qcow2'));
    expect(info.backingChain).toHaveLength(1);
    await qemuIo(p('top.qcow2'), 'read -P 0x33 2M 1M');
    await qemuIo(p('top.qcow2'), 'read -P 0x22 1M 1M');
  });

  it('unsafe rebase only rewrites the header (a moved backing file)', async () => {
    await convertImage(p('base.qcow2'), p('base-moved.qcow2'), { outFormat: 'qcow2' });
    await rebaseImage(p('top.qcow2'), { path: p('base-moved.qcow2'), format: 'qcow2' }, { unsafe: true });
    expect((await imageInfo(p('top.qcow2'))).backingFilename).toBe(p('base-moved.qcow2'));
    await qemuIo(p('top.qcow2'), 'read -P 0x11 0 1M');
  });

  it('rebases onto nothing, copying the backing content in', async () => {
    await rebaseImage(p('top.qcow2'), null);
    expect((await imageInfo(p('top.qcow2'))).backingFilename).toBeUndefined();
    await qemuIo(p('top.qcow2'), 'read -P 0x11 0 1M');
    expect(existsSync(p('top.qcow2'))).toBe(true);
  });

  it('fails with QemuImgError for a missing backing image', async () => {
    await expect(rebaseImage(p('mid.qcow2'), { path: p('gone.qcow2'), format: 'qcow2' })).rejects.toBeInstanceOf(QemuImgError);
  });
});
