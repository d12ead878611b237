import { describe, expect, it } from 'vitest';
import { OffshootError } from '../../common/index.ts';
import { parseRequest } from '../requests.ts';
import { destinationOf, migrateRequestSchema, parseRate, tuningOf } from './migrate-request.ts';

describe('migrate request', () => {
  it('reads rates in binary units per second', () => {
    expect(parseRate('500M')).toBe(500 * 2 ** 20);
    expect(parseRate('1G')).toBe(2 ** 30);
    expect(parseRate('1.5GiB/s')).toBe(1.5 * 2 ** 30);
    expect(parseRate(1234)).toBe(1234);
    expect(() => parseRate('fast')).toThrow(OffshootError);
  });

  it('fills the defaults and turns them into the source agent tuning', () => {
    const request = parseRequest('migrate request', migrateRequestSchema, { to: 'lab2' });
    expect(destinationOf(request)).toBe('lab2');
    expect(tuningOf(request)).toEqual({ maxBandwidthBytesPerSecond: 4 * 2 ** 30, downtimeLimitMs: 300, postcopy: 'auto', autoConverge: false, multifdChannels: 2, timeoutMs: 600_000, tls: true });
    expect(destinationOf(parseRequest('migrate request', migrateRequestSchema, { host: 'lab1' }))).toBe('lab1');
  });

  it('refuses a missing destination, unknown fields and a rate below 1 MiB/s', () => {
    expect(() => destinationOf(parseRequest('migrate request', migrateRequestSchema, {}))).toThrow(/destination/);
    expect(() => parseRequest('migrate request', migrateRequestSchema, { to: 'x', speed: 1 })).toThrow(OffshootError);
    expect(() => tuningOf(parseRequest('migrate request', migrateRequestSchema, { to: 'x', maxBandwidth: '512K' }))).toThrow(/below 1 MiB/);
  });
});
