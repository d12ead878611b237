// The copy lock of a target, `<target>.copy.lock`: created exclusively by the
// one worker allowed to copy into the target, holding its pid, host, process
// start time and the time it took the lock. A lock whose holder is dead (same
// host, pid gone or reused by another process) is taken over; a live or
// foreign-host holder gives COPY_BUSY.
import { readFileSync } from 'node:fs';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { isProcessAlive } from '../common/index.ts';
import { CopyBusyError } from './copy-errors.ts';

export const LOCK_SUFFIX = '.copy.lock';

export function lockPath(target: string): string {
  return `${target}${LOCK_SUFFIX}`;
}

export interface LockHolder {
  pid: number;
  host: string;
  /** Start time of the process in clock ticks since boot (/proc/PID/stat field 22), to tell a reused pid. */
  procStart: string;
  lockedAt: string;
}

/** Field 22 of /proc/PID/stat, or undefined if the process is gone. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (typeof v.pid === 'number' && typeof v.host === 'string' && typeof v.procStart === 'string' && typeof v.lockedAt === 'string') return v as LockHolder;
  } catch {
    // fall through
  }
  return undefined;
}

function isStale(holder: LockHolder | undefined): boolean {
  if (!holder) return true; // unreadable: a writer died between create and write
  if (holder.host !== hostname()) return false;
  return !isProcessAlive(holder.pid) || processStart(holder.pid) !== holder.procStart;
}

/** A held copy lock; release it when done. */
export interface CopyLock {
  path: string;
  holder: LockHolder;
  release(): Promise<void>;
}

async function createExclusive(path: string, holder: LockHolder): Promise<boolean> {
  let fd;
  try {
    fd = await open(path, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await fd.writeFile(`${JSON.stringify(holder)}\n`);
    await fd.sync();
  } finally {
    await fd.close();
  }
  return true;
}

/** Takes the copy lock of `target` or throws COPY_BUSY. */
export async function acquireCopyLock(target: string): Promise<CopyLock> {
  const path = lockPath(target);
  const holder: LockHolder = { pid: process.pid, host: hostname(), procStart: processStart(process.pid) ?? '0', lockedAt: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createExclusive(path, holder)) return makeLock(path, holder);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const current = parseHolder(text);
    if (!isStale(current)) throw new CopyBusyError(target, { ...current });
    // Take over a stale lock: move it aside atomically, and make sure what we
    // moved is the stale lock we judged (another taker may have replaced it).
    const aside = `${path}.stale.${process.pid}`;
    try {
      await rename(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const moved = await readFile(aside, 'utf8').catch(() => '');
    if (moved !== text) {
      // We moved a fresh lock of another taker: put it back unless a newer one exists.
      await link(aside, path).catch(() => {});
      await unlink(aside).catch(() => {});
      const other = parseHolder(moved);
      throw new CopyBusyError(target, { ...other });
    }
    await unlink(aside).catch(() => {});
  }
  const last = parseHolder(await readFile(path, 'utf8').catch(() => ''));
  throw new CopyBusyError(target, { ...last });
}

function makeLock(path: string, holder: LockHolder): CopyLock {
  let released = false;
  return {
    path,
    holder,
    async release() {
      if (released) return;
      released = true;
      const current = parseHolder(await readFile(path, 'utf8').catch(() => ''));
      if (current && current.pid === holder.pid && current.lockedAt === holder.lockedAt && current.host === holder.host) await unlink(path).catch(() => {});
    },
  };
}

/** The holder of the copy lock of `target`, if any. */
export async function readCopyLock(target: string): Promise<LockHolder | undefined> {
  return parseHolder(await readFile(lockPath(target), 'utf8').catch(() => ''));
}
