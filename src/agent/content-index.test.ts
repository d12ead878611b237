import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { contentIdOfHash } from '../protocol/index.ts';
import { ContentIndex, sizesNamed } from './content-index.ts';
import type { HostLayout } from './layout.ts';
import type { LocalStorageAgent } from './local-storage-agent.ts';
import type { Locations } from './locations.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('ContentIndex', () => {
  it('names the sizes of hash-made ids only', () => {
    expect([...sizesNamed([contentIdOfHash('xxh64:00112233445566ff:1441792'), 'cid-0123456789abcdef0123456789abcdef', contentIdOfHash('xxh64:ffeeddccbbaa9988:512')])].sort((a, b) => a - b)).toEqual([512, 1441792]);
  });

  it('hashes only the home files whose size an asked id names', async () => {
    const home = mkdtempSync(join(tmpdir(), 'ofs-cindex-'));
    dirs.push(home);
    const images = join(home, 'images');
    const bases = join(home, 'bases');
    mkdirSync(images);
    mkdirSync(bases);
    writeFileSync(join(images, 'kernel'), Buffer.alloc(3000, 1));
    writeFileSync(join(bases, 'base.raw'), Buffer.alloc(1000, 2));
    const hashed: string[] = [];
    const idOf = (path: string) => contentIdOfHash(`xxh64:${path.endsWith('base.raw') ? 'aaaaaaaaaaaaaaaa' : 'bbbbbbbbbbbbbbbb'}:${path.endsWith('base.raw') ? 1000 : 3000}`);
    const storage = {
      baseContentId: async (path: string) => {
        hashed.push(path);
        return idOf(path);
      },
      hashDisk: async () => 'xxh64:aaaaaaaaaaaaaaaa:1000',
    } as unknown as LocalStorageAgent;
    const locations = { listDatastores: () => [], locator: (path: string) => `home:${path.slice(home.length + 1)}` } as unknown as Locations;
    const index = new ContentIndex({ imagesDir: images, basesDir: bases } as HostLayout, locations, storage);

    // A datastore disk's recorded id names no size: nothing here is hashed for it.
    expect(await index.find([{ contentIds: ['cid-0123456789abcdef0123456789abcdef'] }], false)).toEqual([{ file: null, chain: [], verified: null, mismatch: null }]);
    expect(hashed).toEqual([]);

    // An id of a 1000-byte file: only the base of that size is hashed, and found.
    const [answer] = await index.find([{ contentIds: [idOf(join(bases, 'base.raw'))] }], false);
    expect(answer?.file).toBe('home:bases/base.raw');
    expect(hashed).toEqual([join(bases, 'base.raw')]);

    // With verify, a match is hashed and compared as before.
    const [verified] = await index.find([{ contentIds: [idOf(join(bases, 'base.raw'))], hashes: ['xxh64:aaaaaaaaaaaaaaaa:1000'] }], true);
    expect(verified?.verified).toBe(true);
    const [tampered] = await index.find([{ contentIds: [idOf(join(bases, 'base.raw'))], hashes: ['xxh64:cccccccccccccccc:1000'] }], true);
    expect(tampered).toMatchObject({ file: null, verified: false, mismatch: { layer: 0, expected: 'xxh64:cccccccccccccccc:1000' } });
  });
});
