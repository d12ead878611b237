// The copy lock: exclusive, released by its holder only, a dead or reused
// pid's lock is taken over, a live holder is COPY_BUSY; a holder on another
// machine (another boot id) is judged by its lease: taken over only after a
// whole lease without a renewal, and a holder whose lock was taken learns it.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CopyBusyError } from './copy-errors.ts';
import { acquireCopyLock, lockPath, readCopyLock } from './copy-lock.ts';
import { CopyLockLostError } from './copy-errors.ts';

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

  it('is busy for a live holder here and for a holder on another machine that renews its lease', async () => {
    const child = spawn('sleep', ['30']);
    try {
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const procStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
      writeFileSync(lockPath(target), JSON.stringify({ pid: child.pid, host: hostname(), procStart, lockedAt: 'x' }));
      await busy();
    } finally {
      child.kill('SIGKILL');
    }
    // A worker on another machine (another boot id) holds the lock and renews it: never taken.
    const other = await acquireCopyLock(target, { identity: { host: 'elsewhere', boot: 'other-boot' }, leaseMs: 400 });
    const t0 = Date.now();
    await expect(acquireCopyLock(target, { leaseMs: 400 })).rejects.toBeInstanceOf(CopyBusyError);
    // Judged by watching it for one lease on this side's clock.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    other.assertHeld();
    await other.release();
  });

  it("takes over a lock from another machine that was not renewed for a whole lease; its holder learns it lost it", async () => {
    // A holder on another machine that stopped renewing (its host died): the lock file never changes.
    writeFileSync(lockPath(target), JSON.stringify({ pid: 1, host: 'elsewhere', boot: 'other-boot', procStart: '1', lockedAt: 'x', leaseMs: 300, beat: 7 }));
    const lock = await acquireCopyLock(target, { leaseMs: 300 });
    expect((await readCopyLock(target))?.pid).toBe(process.pid);
    await lock.release();
    // A live holder whose lock someone replaced (it was frozen past its lease) stops at its next check.
    const held = await acquireCopyLock(target, { leaseMs: 200 });
    writeFileSync(lockPath(target), JSON.stringify({ pid: 2, host: 'elsewhere', boot: 'other-boot', procStart: '1', lockedAt: 'y' }));
    await new Promise((r) => setTimeout(r, 150));
    expect(() => held.assertHeld()).toThrow(CopyLockLostError);
    await held.release();
    // Its release never removes the other's lock.
    expect((await readCopyLock(target))?.pid).toBe(2);
  });
});
