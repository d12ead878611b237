// The operation journal: an operation's file is in the journal folder before
// its work runs, written into one of the spare files made ahead (none is
// created on the way once they are there), and rewritten when it ends; a
// table that restarts marks the operations left running as interrupted and
// removes the spare files of the one before.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/index.ts';
import { OperationTable } from './operations.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function journalDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'osh-ops-journal-'));
  dirs.push(d);
  return join(d, 'operations');
}

const spares = (dir: string) => readdirSync(dir).filter((f) => f.startsWith('spare-'));
/** Waits until the table has made all its spare files. */
const allSpares = (dir: string) => waitFor(() => (spares(dir).length >= 64 ? true : undefined), 10_000, 'spare files made', 10);
const journal = (dir: string, id: string) => JSON.parse(readFileSync(join(dir, `${id}.json`), 'utf8')) as { state: string; error?: { code: string } };

describe('operation journal', () => {
  it('journals an operation before its work runs, through spare files, and its end', async () => {
    const dir = journalDir();
    const table = new OperationTable(dir);
    await table.recover();
    let seenAtWork: string | undefined;
    let finish!: () => void;
    await table.start('test', 'op-1', async () => {
      seenAtWork = journal(dir, 'op-1').state;
      await new Promise<void>((r) => (finish = r));
      return { done: true };
    });
    expect(seenAtWork).toBe('running');
    // The spares are made in the background; the next operations take them.
    await allSpares(dir);
    const before = new Set(spares(dir));
    await table.start('test', 'op-2', async () => ({}));
    expect(journal(dir, 'op-2').state).toMatch(/running|succeeded/);
    expect(spares(dir).filter((f) => !before.has(f))).toEqual([]);
    expect(spares(dir).length).toBeLessThan(before.size);
    finish();
    await table.get('op-1', 0, 5_000, 'end');
    await waitFor(() => (journal(dir, 'op-1').state === 'succeeded' ? true : undefined), 5_000, 'the end journaled', 10);
  });

  it('marks the operations a previous table left running as interrupted, and removes its spare files', async () => {
    const dir = journalDir();
    const first = new OperationTable(dir);
    await first.recover();
    await first.start('test', 'op-left', () => new Promise(() => undefined));
    await allSpares(dir);
    const left = spares(dir);
    const again = new OperationTable(dir);
    expect(await again.recover()).toEqual(['op-left']);
    expect(journal(dir, 'op-left')).toMatchObject({ state: 'failed', error: { code: 'TASK_INTERRUPTED' } });
    const { operation } = await again.get('op-left');
    expect(operation.state).toBe('failed');
    // Those of the first table are gone (the second makes its own).
    expect(spares(dir).filter((f) => left.includes(f))).toEqual([]);
  });
});
