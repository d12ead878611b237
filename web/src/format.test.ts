import { describe, expect, it } from 'vitest';
import { formatAgo, formatBytes, formatDuration, formatPercent, formatTime } from './format.ts';

describe('console formatting', () => {
  it('gives sizes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(256 * 1024 * 1024)).toBe('256 MiB');
    expect(formatBytes(12.5 * 1024 ** 3)).toBe('12.5 GiB');
    expect(formatBytes(undefined)).toBe('—');
  });

  it('gives durations from milliseconds', () => {
    expect(formatDuration(12.4)).toBe('12 ms');
    expect(formatDuration(1530)).toBe('1.53 s');
    expect(formatDuration(125_000)).toBe('2 min 5 s');
    expect(formatDuration(Number.NaN)).toBe('—');
  });

  it('clamps percentages', () => {
    expect(formatPercent(0.456)).toBe('46%');
    expect(formatPercent(2)).toBe('100%');
  });

  it("writes times in the given (the browser's) locale", () => {
    const iso = '2026-03-04T05:06:07Z';
    expect(formatTime(iso, 'en-US')).not.toBe(formatTime(iso, 'de-DE'));
    expect(formatTime(iso, 'de-DE')).toMatch(/04\.03\.2026/);
    expect(formatTime('not a date')).toBe('—');
    expect(formatAgo(new Date(Date.now() - 5_000).toISOString(), Date.now(), 'en')).toBe('5 seconds ago');
  });
});
