// Public surface of the storage layer: safe images (qcow2 headers read by
// Offshoot itself before QEMU sees a file).
export { inspectImage, UnsafeImageError, UNSAFE_REASONS, DEFAULT_MAX_CHAIN_DEPTH } from './safe-image.ts';
export type { SafeImage, UnsafeReason } from './safe-image.ts';
export { readQcow2Header, isQcow2, CorruptImageHeaderError, QCOW2_MAGIC } from './qcow2-header.ts';
export type { Qcow2Header } from './qcow2-header.ts';
