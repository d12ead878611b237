// The inventory's clock: leases, claims and heartbeats are epoch milliseconds
// from it. Real time by default; tests inject one they move by hand, so
// expiry is tested without sleeping.
import { InvalidInputError } from '../common/index.ts';

export type Clock = () => number;

export const systemClock: Clock = () => Date.now();

/** Expiry `ttlMs` from now, refusing nonsense durations. */
export function expiryAfter(clock: Clock, ttlMs: number): { now: number; expiresAt: number } {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) throw new InvalidInputError(`a lease lasts a positive whole number of milliseconds, got ${ttlMs}`, { ttlMs });
  const now = clock();
  return { now, expiresAt: now + ttlMs };
}
