// Small timing helpers: sleep, time limits, polling, and keeping the event loop open.
import { TimeoutError } from './errors.ts';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Races a promise against a time limit; on expiry throws TimeoutError naming the operation. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, operation: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(operation, ms)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` until it returns a value other than undefined, or the time limit passes. */
export async function waitFor<T>(check: () => Promise<T | undefined> | T | undefined, ms: number, operation: string, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + ms;
  while (true) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) throw new TimeoutError(operation, ms);
    await sleep(intervalMs);
  }
}

/**
 * Awaits a promise that nothing in the event loop keeps pending (such as the exit of a process
 * found by polling with unref'd timers), holding the loop open until it settles, so Node does not
 * exit with "unsettled top-level await" while a daemon is still starting.
 */
export async function keepAlive<T>(promise: Promise<T>): Promise<T> {
  const timer = setInterval(() => undefined, 1_000);
  try {
    return await promise;
  } finally {
    clearInterval(timer);
  }
}
