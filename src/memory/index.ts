// Public surface of the memory layer: templates (frozen guest RAM shared
// copy-on-write) and per-process memory statistics.
export { TemplateStore } from './templates.ts';
export { mappingPssKiB, parseSmapsRollup, processMemoryStats } from './stats.ts';
export type { MemoryStats } from './stats.ts';
