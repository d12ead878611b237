// The path policy against real files: what lies inside the allowed roots is
// used, what resolves outside (directly or through a symlink) is refused with
// PATH_NOT_ALLOWED; a FIFO, a folder or a device is refused by stat without
// ever being opened; a new file never replaces one; datastores go nowhere
// unsafe (/, system folders, the home, in or around another datastore, under
// a file), checked before anything is created.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PathPolicy, assertRegularFile } from './path-policy.ts';

describe('PathPolicy', () => {
  let root: string;
  let home: string;
  let allowed: string;
  let policy: PathPolicy;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'osh-policy-'));
    home = join(root, 'home');
    allowed = join(root, 'images');
    for (const d of [home, join(home, 'sub'), allowed, join(root, 'outside'), join(root, 'ds1')]) mkdirSync(d);
    writeFileSync(join(home, 'a.img'), 'x');
    writeFileSync(join(allowed, 'b.img'), 'x');
    writeFileSync(join(root, 'outside', 'c.img'), 'x');
    symlinkSync('/etc/passwd', join(home, 'escape.img'));
    symlinkSync(join(allowed, 'b.img'), join(home, 'inside-link.img'));
    execFileSync('mkfifo', [join(home, 'fifo')]);
    policy = new PathPolicy(home, [allowed]);
    policy.addDatastore(join(root, 'ds1'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('allows files inside the roots and refuses the rest, symlinks resolved', async () => {
    expect(await policy.allowedFile('disk', join(home, 'a.img'))).toBe(join(home, 'a.img'));
    expect(await policy.allowedFile('disk', join(allowed, 'b.img'))).toBe(join(allowed, 'b.img'));
    expect(await policy.allowedFile('disk', join(home, 'inside-link.img'))).toBe(join(allowed, 'b.img'));
    await expect(policy.allowedFile('disk', join(root, 'outside', 'c.img'))).rejects.toMatchObject({ code: 'PATH_NOT_ALLOWED', status: 403 });
    await expect(policy.allowedFile('disk', '/etc/shadow')).rejects.toMatchObject({ code: 'PATH_NOT_ALLOWED', details: { allowedRoots: policy.roots() } });
    await expect(policy.allowedFile('disk', join(home, 'escape.img'))).rejects.toMatchObject({ code: 'PATH_NOT_ALLOWED', details: { resolved: '/etc/passwd' } });
    await expect(policy.allowedFile('disk', join(home, '..', 'outside', 'c.img'))).rejects.toMatchObject({ code: 'PATH_NOT_ALLOWED' });
  });

  it('refuses FIFOs, folders and devices without opening them', async () => {
    await expect(policy.allowedFile('checkpoint', join(home, 'fifo'))).rejects.toMatchObject({ code: 'NOT_A_REGULAR_FILE', message: expect.stringContaining('FIFO') });
    await expect(policy.allowedFile('checkpoint', home)).rejects.toMatchObject({ code: 'NOT_A_REGULAR_FILE', message: expect.stringContaining('folder') });
    await expect(assertRegularFile('source', '/dev/zero')).rejects.toMatchObject({ code: 'NOT_A_REGULAR_FILE', message: expect.stringContaining('device') });
    await expect(assertRegularFile('source', join(home, 'fifo'))).rejects.toMatchObject({ code: 'NOT_A_REGULAR_FILE' });
    await expect(policy.allowedFile('disk', `${home}/a\0.img`)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('never names an existing file as a new one', async () => {
    expect(await policy.newFile('out', join(home, 'new.ckpt'))).toBe(join(home, 'new.ckpt'));
    await expect(policy.newFile('out', join(home, 'a.img'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS', status: 409 });
    await expect(policy.newFile('out', join(home, 'escape.img'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(policy.newFile('out', join(home, 'sub'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(policy.newFile('out', join(root, 'outside', 'x.ckpt'))).rejects.toMatchObject({ code: 'PATH_NOT_ALLOWED' });
    await expect(policy.newFile('out', join(home, 'missing', 'x.ckpt'))).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('places datastores only in safe folders, before creating anything', async () => {
    const refused = ['/', '/etc', '/usr', '/usr/lib', '/usr/local/ds', '/etc/ds', '/boot/x', '/var', '/proc/x', '/dev/shm/osh-x', home, join(home, 'vms'), join(home, 'bases', 'x'), root, join(root, 'ds1'), join(root, 'ds1', 'inner'), '/etc/passwd', '/dev/zero', '/etc/passwd/x', `${root}/a\0b`, 'relative/path'];
    for (const path of refused) {
      await expect(policy.checkDatastorePath(path), path).rejects.toMatchObject({ code: 'DATASTORE_PATH_INVALID', status: 400 });
    }
    expect(await policy.checkDatastorePath(join(root, 'ds2', 'deep'))).toBe(join(root, 'ds2', 'deep'));
    expect(existsSync(join(root, 'ds2'))).toBe(false);
    expect(await policy.checkDatastorePath(join(home, 'datastores', 'ds3'))).toBe(join(home, 'datastores', 'ds3'));
  });
});
