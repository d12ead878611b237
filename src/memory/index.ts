// Public surface of the memory layer: templates (frozen guest RAM shared
// copy-on-write), per-process memory statistics, and the checkpoint format.
export { TemplateStore } from './templates.ts';
export { mappingPssKiB, parseSmapsRollup, processMemoryStats } from './stats.ts';
export type { MemoryStats } from './stats.ts';
export { writeCheckpoint, CheckpointReader, CheckpointFormatError, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, BLOCK_BYTES, PAGE_BYTES, LIMITS as CHECKPOINT_LIMITS } from './checkpoint-format.ts';
export type { CheckpointMetadata, CheckpointPart, WriteProgress } from './checkpoint-format.ts';
