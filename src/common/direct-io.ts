// O_DIRECT helpers shared by the copy engine and the checkpoint writer:
// page-aligned buffers (O_DIRECT needs aligned addresses, offsets and
// lengths), opening a second handle of a file with O_DIRECT where its file
// system allows it (one that refuses, EINVAL, leaves the caller with its
// ordinary handle), whether a folder is tmpfs (there the page cache is the
// file: O_DIRECT, which tmpfs accepts since Linux 6.6, bypasses nothing),
// and a positional write that writes all of a buffer.
import { constants } from 'node:fs';
import { open, statfs } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

/** O_DIRECT alignment of offsets, lengths and buffer addresses used here. */
export const DIRECT_ALIGN = 4096;
const WASM_PAGE = 65536;

/** `count` page-aligned buffers of `size` bytes (each starts on a DIRECT_ALIGN boundary), in one mapping. */
export function alignedBuffers(count: number, size: number): Buffer[] {
  const each = Math.ceil(size / DIRECT_ALIGN) * DIRECT_ALIGN;
  const pages = Math.max(1, Math.ceil((count * each) / WASM_PAGE));
  // A WebAssembly.Memory is mapped with mmap by V8, so it starts on a page boundary.
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
  return Array.from({ length: count }, (_, i) => Buffer.from(memory.buffer, i * each, size));
}

/** A second handle of `path` opened with `flags | O_DIRECT`, or undefined when not `wanted` or the file system refuses O_DIRECT. */
export async function openDirect(path: string, flags: number, wanted = true): Promise<FileHandle | undefined> {
  if (!wanted) return undefined;
  try {
    return await open(path, flags | constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw err;
  }
}

/** statfs f_type of tmpfs (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;

/** Whether `path` (a file or folder) is on tmpfs. */
export async function onTmpfs(path: string): Promise<boolean> {
  return (await statfs(path)).type === TMPFS_MAGIC;
}

/** Writes `length` bytes of `buf` at `position`, all of them (a write that makes no progress is an error). */
export async function writeAllAt(file: FileHandle, buf: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesWritten } = await file.write(buf, done, length - done, position + done);
    if (bytesWritten <= 0) throw new Error(`write made no progress at ${position + done}`);
    done += bytesWritten;
  }
}
