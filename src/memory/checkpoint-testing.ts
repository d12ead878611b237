// For tests: the guest memory a checkpoint file holds, read block by block
// through CheckpointReader (every check of the reader applies).
import { BLOCK_BYTES, CheckpointReader } from './checkpoint-format.ts';

/** All of the checkpoint's guest memory, as one buffer of its memory size. */
export async function readCheckpointMemory(path: string): Promise<Buffer> {
  const reader = await CheckpointReader.open(path);
  try {
    const out = Buffer.alloc(reader.memoryBytes);
    const buf = Buffer.alloc(BLOCK_BYTES);
    for (let i = 0; i < reader.blockCount; i++) {
      await reader.readBlock(i, buf);
      buf.copy(out, i * BLOCK_BYTES);
    }
    return out;
  } finally {
    await reader.close();
  }
}
