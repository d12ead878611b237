// What each host copied of a handed-over job, from its history: the lines of
// workers that ended (stopped or finished), and, for a worker that died with
// its host, what the job had done when it was handed over.
import { describe, expect, it } from 'vitest';
import { sharesOf } from './handover.ts';
import type { CopyJobHistoryEntry, CopyJobRecord } from './records.ts';

const MiB = 2 ** 20;
const job = (history: CopyJobHistoryEntry[]) => ({ history }) as unknown as CopyJobRecord;
const at = '2026-01-01T00:00:00.000Z';

describe('sharesOf', () => {
  it('adds up the runs of each host, in the order the hosts worked', () => {
    const shares = sharesOf(
      job([
        { hostId: 'a', at, chunksCopied: 10, bytesCopied: 10 * MiB, fileIndex: 0 },
        { hostId: 'b', at, chunksCopied: 0, handedOverFrom: 'a', reason: 'requested', fileIndex: 0, bytesDoneBefore: 10 * MiB },
        { hostId: 'b', at, chunksCopied: 6, bytesCopied: 6 * MiB, fileIndex: 0 },
      ]),
      (id) => `host-${id}`,
    );
    expect(shares).toEqual([
      { hostId: 'a', host: 'host-a', bytesCopied: 10 * MiB, chunksCopied: 10 },
      { hostId: 'b', host: 'host-b', bytesCopied: 6 * MiB, chunksCopied: 6 },
    ]);
  });

  it('credits a host that died mid-file with what the job had done of that file when it was handed over', () => {
    const shares = sharesOf(
      job([
        { hostId: 'a', at, chunksCopied: 4, bytesCopied: 4 * MiB, fileIndex: 0 },
        { hostId: 'b', at, chunksCopied: 0, handedOverFrom: 'a', reason: 'lost', fileIndex: 1, bytesDoneBefore: 3 * MiB },
        { hostId: 'b', at, chunksCopied: 5, bytesCopied: 5 * MiB, fileIndex: 1 },
      ]),
      (id) => id,
    );
    expect(shares.map((s) => [s.hostId, s.bytesCopied / MiB])).toEqual([
      ['a', 7],
      ['b', 5],
    ]);
  });
});
