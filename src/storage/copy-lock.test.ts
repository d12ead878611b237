// The copy lock: exclusive, released by its holder only, a dead or reused
// pid's lock is taken over, a live or other-host holder is COPY_BUSY.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CopyBusyError } from './copy-errors.ts';
import { acquireCopyLock, lockPath, readCopyLock } from './copy-lock.ts';

describe('copy lock', () => {
  let dir: string;
  let target: string;
  beforeEach(() => {
    dir = mkdtempSync('/var/tmp/offshoot-lock-');
    target = join(dir, 'disk.qcow2');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const busy = async () => {
    await expect(acquireCopyLock(target)).rejects.toBeInstanceOf(CopyBusyError);
  };

  it('is exclusive while held and gone after release', async () => {
    const lock = await acquireCopyLock(target);
    expect((await readCopyLock(target))?.pid).toBe(process.pid);
    await busy();
    await lock.release();
    expect(existsSync(lockPath(target))).toBe(false);
    await (await acquireCopyLock(target)).release();
  });

  it('takes over the lock of a dead process', async () => {
    const child = spawn('true');
    await new Promise((resolve) => child.once('close', resolve));
    writeFileSync(lockPath(target), JSON.stringify({ pid: child.pid, host: hostname(), procStart: '1', lockedAt: 'x' }));
    const lock = await acquireCopyLock(target);
    expect(JSON.parse(readFileSync(lockPath(target), 'utf8')).pid).toBe(process.pid);
    await lock.release();
  });

  it('takes over a lock whose pid now belongs to another process, and an unreadable lock', async () => {
    writeFileSync(lockPath(target), JSON.stringify({ pid: process.pid, host: hostname(), procStart: '1', lockedAt: 'x' }));
    await (await acquireCopyLock(target)).release();
    writeFileSync(lockPath(target), '');
    await (await acquireCopyLock(target)).release();
  });

  it('is busy for a live holder here and for any holder on another host', async () => {
    const child = spawn('sleep', ['30']);
    try {
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const procStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
      writeFileSync(lockPath(target), JSON.stringify({ pid: child.pid, host: hostname(), procStart, lockedAt: 'x' }));
      await busy();
    } finally {
      child.kill('SIGKILL');
    }
    writeFileSync(lockPath(target), JSON.stringify({ pid: 1, host: 'elsewhere', procStart: '1', lockedAt: 'x' }));
    await busy();
  });
});
