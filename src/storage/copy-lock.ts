// The copy lock of a target, `<target>.copy.lock`: created exclusively by the
// one worker allowed to copy into the target, holding its pid, host, the
// kernel's boot id, the process start time, when it took the lock, and a
// lease it renews (`beat`, every lease/4) for as long as it holds it.
//
// Taking over a lock someone else holds:
// - a holder on this kernel (same boot id: the same machine, or a lab host in
//   a network namespace of it, which shares the pid space) is judged by its
//   pid: dead, or the pid reused by another process, means stale;
// - a holder on another machine (another boot id; a shared datastore folder
//   seen by several hosts) cannot be judged by pid: the taker watches the lock
//   for one whole lease on its own clock (no clock is compared across hosts)
//   and takes it only if it did not change; a live holder renews within that
//   time, so its lock is never taken.
// A holder whose lock was taken (it was frozen longer than its lease) or that
// could not renew for half a lease learns it at its next check (`assertHeld`,
// before each chunk and before each chunk is recorded) and stops. The limit:
// a process frozen longer than a lease in the middle of writing a chunk
// finishes that one write before it can check.
import { readFileSync } from 'node:fs';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { isProcessAlive, sleep } from '../common/index.ts';
import { CopyBusyError, CopyLockLostError } from './copy-errors.ts';

export const LOCK_SUFFIX = '.copy.lock';
/** Default lease of a copy lock (OFFSHOOT_COPY_LOCK_LEASE_MS overrides it, e.g. in tests). */
export const DEFAULT_LEASE_MS = 10_000;

export function lockPath(target: string): string {
  return `${target}${LOCK_SUFFIX}`;
}

export interface LockHolder {
  pid: number;
  host: string;
  /** The kernel's boot id (/proc/sys/kernel/random/boot_id): pids are comparable only on the same one. */
  boot?: string;
  /** Start time of the process in clock ticks since boot (/proc/PID/stat field 22), to tell a reused pid. */
  procStart: string;
  lockedAt: string;
  /** How long a taker on another machine waits for a renewal before it judges the lock stale. */
  leaseMs?: number;
  /** Renewal counter: changes at every renewal. */
  beat?: number;
}

/** Who takes a lock (a test may pretend to be another machine). */
export interface LockIdentity {
  host: string;
  boot: string;
}

export interface AcquireOptions {
  identity?: LockIdentity;
  leaseMs?: number;
}

let bootId: string | undefined;

function thisBoot(): string {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootId = 'unknown';
    }
  }
  return bootId;
}

export function leaseFromEnvironment(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.OFFSHOOT_COPY_LOCK_LEASE_MS);
  return Number.isFinite(n) && n >= 100 ? n : DEFAULT_LEASE_MS;
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

/** Whether the holder runs on this kernel, where its pid can be checked. */
function sameKernel(holder: LockHolder, me: LockIdentity): boolean {
  return holder.boot !== undefined ? holder.boot === me.boot : holder.host === me.host;
}

/** Stale by pid (this kernel only). */
function deadHere(holder: LockHolder): boolean {
  return !isProcessAlive(holder.pid) || processStart(holder.pid) !== holder.procStart;
}

/** A held copy lock; release it when done. */
export interface CopyLock {
  path: string;
  holder: LockHolder;
  /** Throws COPY_LOCK_LOST if another worker took the lock or this one could not renew it in time. */
  assertHeld(): void;
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

/** Whether the lock text `text` is stale: judged by pid here, by one unrenewed lease on another machine. */
async function isStale(path: string, text: string, me: LockIdentity, leaseMs: number): Promise<boolean> {
  const holder = parseHolder(text);
  if (!holder) return true; // unreadable: a writer died between create and write
  if (sameKernel(holder, me)) return deadHere(holder);
  await sleep(holder.leaseMs ?? leaseMs);
  const after = await readFile(path, 'utf8').catch(() => '');
  return after === text;
}

/** Takes the copy lock of `target` or throws COPY_BUSY. A lock held on another machine costs one lease to judge. */
export async function acquireCopyLock(target: string, options: AcquireOptions = {}): Promise<CopyLock> {
  const path = lockPath(target);
  const me = options.identity ?? { host: hostname(), boot: thisBoot() };
  const leaseMs = options.leaseMs ?? leaseFromEnvironment();
  const holder: LockHolder = { pid: process.pid, host: me.host, boot: me.boot, procStart: processStart(process.pid) ?? '0', lockedAt: new Date().toISOString(), leaseMs, beat: 0 };
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createExclusive(path, holder)) return makeLock(path, holder);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    if (!(await isStale(path, text, me, leaseMs))) throw new CopyBusyError(target, { ...parseHolder(await readFile(path, 'utf8').catch(() => text)) });
    // Take over a stale lock: move it aside atomically, and make sure what we
    // moved is the stale lock we judged (another taker may have replaced it).
    const aside = `${path}.stale.${me.boot.slice(0, 8)}.${process.pid}`;
    try {
      await rename(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const moved = await readFile(aside, 'utf8').catch(() => '');
    if (moved !== text) {
      // We moved a fresh lock of another taker (or a renewal): put it back unless a newer one exists.
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

function sameHolder(a: LockHolder | undefined, b: LockHolder): boolean {
  return a !== undefined && a.pid === b.pid && a.lockedAt === b.lockedAt && a.host === b.host && a.boot === b.boot;
}

function makeLock(path: string, initial: LockHolder): CopyLock {
  let holder = initial;
  let released = false;
  let lost: string | undefined;
  const leaseMs = initial.leaseMs ?? DEFAULT_LEASE_MS;
  let renewedAt = performance.now();
  let renewing: Promise<void> | undefined;
  const renew = async () => {
    // Late (this process was frozen or starved): a taker may be judging the lock already; never clobber its new one.
    if (performance.now() - renewedAt > leaseMs / 2) {
      lost = 'the lock could not be renewed in time';
      return;
    }
    const current = parseHolder(await readFile(path, 'utf8').catch(() => ''));
    if (!sameHolder(current, holder)) {
      lost = 'another worker took the lock';
      return;
    }
    const next = { ...holder, beat: (holder.beat ?? 0) + 1 };
    const tmp = `${path}.renew.${process.pid}`;
    const fd = await open(tmp, 'w', 0o644);
    try {
      await fd.writeFile(`${JSON.stringify(next)}\n`);
      await fd.sync();
    } finally {
      await fd.close();
    }
    await rename(tmp, path);
    holder = next;
    renewedAt = performance.now();
  };
  const timer = setInterval(() => {
    if (released || lost || renewing) return;
    renewing = renew()
      // A failed renewal is retried at the next tick; assertHeld fails once half a lease passed without one.
      .catch(() => undefined)
      .finally(() => (renewing = undefined));
  }, Math.max(25, Math.floor(leaseMs / 4)));
  timer.unref();
  return {
    path,
    get holder() {
      return holder;
    },
    assertHeld() {
      if (lost) throw new CopyLockLostError(path, lost);
      const since = performance.now() - renewedAt;
      if (since > leaseMs / 2) throw new CopyLockLostError(path, `the lock was not renewed for ${Math.round(since)} ms (lease ${leaseMs} ms)`);
    },
    async release() {
      if (released) return;
      released = true;
      clearInterval(timer);
      await renewing;
      const current = parseHolder(await readFile(path, 'utf8').catch(() => ''));
      if (sameHolder(current, holder)) await unlink(path).catch(() => {});
    },
  };
}

/** The holder of the copy lock of `target`, if any. */
export async function readCopyLock(target: string): Promise<LockHolder | undefined> {
  return parseHolder(await readFile(lockPath(target), 'utf8').catch(() => ''));
}
