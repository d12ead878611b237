// Public surface of the memory layer: templates (frozen guest RAM shared
// copy-on-write), per-process memory statistics, the checkpoint format, guest
// RAM as the checkpoint writer reads it (mapped through the native addon, or
// read), and the postcopy page server that restores a checkpoint lazily.
export { TemplateStore } from './templates.ts';
export { mappingPssKiB, parseSmapsRollup, processMemoryStats } from './stats.ts';
export type { MemoryStats } from './stats.ts';
export { writeCheckpoint, CheckpointReader, CheckpointFormatError, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, BLOCK_BYTES, PAGE_BYTES, LIMITS as CHECKPOINT_LIMITS } from './checkpoint-format.ts';
export type { CheckpointMetadata, CheckpointPart, GuestMemory, MemoryBlock, WriteProgress, WriteTimings } from './checkpoint-format.ts';
export { openGuestMemory } from './guest-memory.ts';
export type { MemoryReadPath, OpenGuestMemory } from './guest-memory.ts';
export { loadMmapAddon, NativeAddonMissingError, MMAP_ADDON_PATH } from './native-mmap.ts';
export type { MmapAddon } from './native-mmap.ts';
export { PostcopyPageServer, GUEST_RAM_BLOCK } from './page-server.ts';
export type { PageServerStats } from './page-server.ts';
export { parseSavedDeviceState } from './saved-device-state.ts';
export type { SavedDeviceState } from './saved-device-state.ts';
export { ReturnPathReader, ReturnPathError } from './return-path.ts';
export type { ReturnMessage } from './return-path.ts';
