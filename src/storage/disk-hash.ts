// The content hash behind `disk verify`: xxh64 over a disk file's bytes,
// except the qcow2 header's backing-file name (from its offset to the end of
// the first cluster, where qemu-img keeps it). A copy whose backing file was
// re-pointed at its own copied parent (rebase -u) so hashes equal to its
// source: the guest sees the same data. Holes read as zeros.
import { open } from 'node:fs/promises';
import { Xxh64 } from '@node-rs/xxhash';
import { QCOW2_MAGIC } from './qcow2-header.ts';

const BUFFER_BYTES = 4 * 1024 * 1024;

export async function diskContentHash(path: string): Promise<string> {
  const file = await open(path, 'r');
  try {
    const size = (await file.stat()).size;
    const head = Buffer.alloc(512);
    await file.read(head, 0, head.length, 0);
    let mask: [number, number] | null = null;
    if (head.length >= 72 && head.readUInt32BE(0) === QCOW2_MAGIC) {
      const backingOffset = Number(head.readBigUInt64BE(8));
      const clusterBytes = 2 ** head.readUInt32BE(20);
      if (backingOffset > 0 && backingOffset < clusterBytes) mask = [backingOffset, clusterBytes];
    }
    const hash = new Xxh64(0n);
    const buffer = Buffer.alloc(BUFFER_BYTES);
    for (let offset = 0; offset < size; offset += BUFFER_BYTES) {
      const { bytesRead } = await file.read(buffer, 0, Math.min(BUFFER_BYTES, size - offset), offset);
      const chunk = buffer.subarray(0, bytesRead);
      if (mask && offset < mask[1]) chunk.fill(0, Math.max(0, mask[0] - offset), Math.min(bytesRead, mask[1] - offset));
      hash.update(chunk);
    }
    return `xxh64:${hash.digest().toString(16).padStart(16, '0')}:${size}`;
  } finally {
    await file.close();
  }
}
