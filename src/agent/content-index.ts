// What this host holds by content id, to answer "do you have this base?"
// when a VM moves here (findContent). Two kinds of files count:
// - datastore disks, by the content id in their sidecar (a copy keeps its
//   source's id, so a seeded base has the id it had where it came from), their
//   chain by the sidecars' parent ids;
// - the host's own read-only files in its home (images: the default guest's
//   kernel, initrd and data disk; bases frozen by forks and clones), by the
//   content id computed from their bytes (cached per file identity, see
//   LocalStorageAgent.baseContentId), their chain by the qcow2 backing file.
//   Such an id names the file's size ("cid-x<hash>-<size>"), so a lookup
//   hashes only the files whose size some asked id names: a never-hashed
//   base costs nothing to a query that cannot match it (a datastore disk's
//   recorded id names no size: no home file is hashed for it).
// A query is a chain of content ids, top first; it matches a file whose own
// chain has exactly those ids, so a base is only ever used under the same
// layers it had at the source. With verify, every layer of a match is hashed
// (the disk verify hash) and compared with what the source said; the first
// candidate that verifies wins, and a candidate whose bytes differ is
// reported, never used.
import { readdir, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import type { ContentAnswer, ContentQuery, Locator } from '../protocol/index.ts';
import { hashOfContentId } from '../protocol/index.ts';
import { isQcow2, readQcow2Header, scanDatastore, DatastoreLayout } from '../storage/index.ts';
import type { Locations } from './locations.ts';
import type { HostLayout } from './layout.ts';
import type { LocalStorageAgent } from './local-storage-agent.ts';

interface Entry {
  path: string;
  contentId: string;
  /** The file below it, or null for a standalone file; undefined: below it is a file this index does not know. */
  parent: string | null | undefined;
}

/** Regular files under `dir` (recursively), leaving out hidden files, sidecars and copies in flight. */
async function imageFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith('.') || name.endsWith('.json') || name.includes('.copy') || name.includes('.tmp')) continue;
    const path = join(dir, name);
    const info = await stat(path).catch(() => undefined);
    if (info?.isDirectory()) out.push(...(await imageFiles(path)));
    else if (info?.isFile()) out.push(path);
  }
  return out;
}

export class ContentIndex {
  constructor(
    private readonly layout: HostLayout,
    private readonly locations: Locations,
    private readonly storage: LocalStorageAgent,
  ) {}

  /** Every file this host can offer by content id, by path; with `sizes`, home files of other sizes are left out (not hashed). */
  async entries(sizes?: ReadonlySet<number>): Promise<Map<string, Entry>> {
    const entries = new Map<string, Entry>();
    for (const ds of this.locations.listDatastores()) {
      const scanned = await scanDatastore(new DatastoreLayout(ds.path)).catch(() => ({ disks: [] }));
      const byId = new Map(scanned.disks.map((d) => [d.meta.id, d.path]));
      for (const d of scanned.disks) entries.set(d.path, { path: d.path, contentId: d.meta.contentId, parent: d.meta.parentId ? (byId.get(d.meta.parentId) ?? undefined) : null });
    }
    for (const path of [...(await imageFiles(this.layout.imagesDir)), ...(await imageFiles(this.layout.basesDir))]) {
      try {
        if (sizes && !sizes.has((await stat(path)).size)) continue;
        let parent: string | null = null;
        if (await isQcow2(path)) {
          const backing = (await readQcow2Header(path)).backingFile;
          if (backing) parent = isAbsolute(backing) ? backing : join(dirname(path), backing);
        }
        entries.set(path, { path, contentId: await this.storage.baseContentId(path), parent });
      } catch {
        // unreadable or not an image: not offered
      }
    }
    return entries;
  }

  /** Answers each query with the chain found here (see the header). */
  async find(queries: ContentQuery[], verify: boolean, onProgress?: (done: number) => void): Promise<ContentAnswer[]> {
    const entries = await this.entries(sizesNamed(queries.flatMap((q) => q.contentIds)));
    const chainOf = (path: string): string[] | undefined => {
      const out: string[] = [];
      for (let at: string | null | undefined = path; at; ) {
        const e = entries.get(at);
        if (!e || out.length > 32) return undefined;
        out.push(e.path);
        if (e.parent === undefined) return undefined;
        at = e.parent;
      }
      return out;
    };
    const answers: ContentAnswer[] = [];
    for (const [qi, query] of queries.entries()) {
      const wanted = query.contentIds;
      const candidates = [...entries.values()]
        .filter((e) => e.contentId === wanted[0])
        .map((e) => chainOf(e.path))
        .filter((c): c is string[] => c !== undefined && c.length === wanted.length && c.every((p, i) => entries.get(p)?.contentId === wanted[i]));
      let answer: ContentAnswer = { file: null, chain: [], verified: verify ? false : null, mismatch: null };
      for (const chain of candidates) {
        const locators = chain.map((p) => this.locations.locator(p));
        if (!verify) {
          answer = { file: locators[0] as Locator, chain: locators, verified: null, mismatch: null };
          break;
        }
        const mismatch = await this.firstMismatch(chain, query.hashes ?? []);
        if (!mismatch) {
          answer = { file: locators[0] as Locator, chain: locators, verified: true, mismatch: null };
          break;
        }
        answer = { ...answer, mismatch: { ...mismatch, file: this.locations.locator(mismatch.file) } };
      }
      answers.push(answer);
      onProgress?.(qi + 1);
    }
    return answers;
  }

  private async firstMismatch(chain: string[], hashes: Array<string | null>): Promise<{ file: string; layer: number; expected: string; actual: string } | null> {
    for (const [i, path] of chain.entries()) {
      const expected = hashes[i] ?? null;
      const actual = await this.storage.hashDisk(path);
      if (expected === null || actual !== expected) return { file: path, layer: i, expected: expected ?? 'unknown', actual };
    }
    return null;
  }
}

/** The file sizes that content ids made from a hash name (an id not made from one, e.g. a created disk's, names none). */
export function sizesNamed(contentIds: string[]): Set<number> {
  const sizes = new Set<number>();
  for (const id of contentIds) {
    const hash = hashOfContentId(id);
    if (hash) sizes.add(Number(hash.slice(hash.lastIndexOf(':') + 1)));
  }
  return sizes;
}

/** Size, data bytes and format of a file (holes are not counted: a copy never sends them). */
export async function describeFile(path: string, dataBytes: (path: string) => Promise<number>): Promise<{ exists: boolean; size: number; dataBytes: number; format: 'qcow2' | 'raw' }> {
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) return { exists: false, size: 0, dataBytes: 0, format: 'raw' };
  return { exists: true, size: info.size, dataBytes: await dataBytes(path), format: (await isQcow2(path)) ? 'qcow2' : 'raw' };
}
