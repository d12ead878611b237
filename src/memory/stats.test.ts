import { describe, expect, it } from 'vitest';
import { parseSmapsRollup, processMemoryStats } from './stats.ts';

describe('memory stats', () => {
  it('parses smaps_rollup', () => {
    const text = 'Rss:              1000 kB\nPss:               600 kB\nShared_Clean:      300 kB\nShared_Dirty:      100 kB\nPrivate_Clean:      50 kB\nPrivate_Dirty:     550 kB\n';
    expect(parseSmapsRollup(text)).toEqual({ rssKiB: 1000, pssKiB: 600, sharedKiB: 400, privateKiB: 600 });
  });

  it('reads a real process', async () => {
    const stats = await processMemoryStats(process.pid);
    expect(stats.rssKiB).toBeGreaterThan(0);
    expect(stats.pssKiB).toBeGreaterThan(0);
  });
});
