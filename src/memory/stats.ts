// Memory use of a process from /proc/<pid>/smaps_rollup: resident, proportional
// (PSS: shared pages divided among their users), shared and private.
import { readFile } from 'node:fs/promises';

export interface MemoryStats {
  rssKiB: number;
  pssKiB: number;
  sharedKiB: number;
  privateKiB: number;
}

export function parseSmapsRollup(text: string): MemoryStats {
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
    return match ? Number(match[1]) : 0;
  };
  return {
    rssKiB: field('Rss'),
    pssKiB: field('Pss'),
    sharedKiB: field('Shared_Clean') + field('Shared_Dirty'),
    privateKiB: field('Private_Clean') + field('Private_Dirty'),
  };
}

export async function processMemoryStats(pid: number): Promise<MemoryStats> {
  return parseSmapsRollup(await readFile(`/proc/${pid}/smaps_rollup`, 'utf8'));
}

/** PSS (KiB) of the mappings of `path` in the process (from /proc/<pid>/smaps). */
export async function mappingPssKiB(pid: number, path: string): Promise<number> {
  const text = await readFile(`/proc/${pid}/smaps`, 'utf8');
  let inMapping = false;
  let total = 0;
  for (const line of text.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inMapping = line.trimEnd().endsWith(` ${path}`);
      continue;
    }
    if (inMapping && line.startsWith('Pss:')) total += Number(/(\d+) kB/.exec(line)?.[1] ?? 0);
  }
  return total;
}
