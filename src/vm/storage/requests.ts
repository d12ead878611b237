// Request schemas of the storage operations (datastores, disks, clones, pools,
// copy jobs). Names end up in paths, so they use the common safe alphabet.
import { z } from 'zod';
import { NAME_PATTERN } from '../../common/index.ts';
import { parseSizeMiB } from '../spec.ts';

const name = z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_", starting with a letter or digit');
const absolutePath = z.string().min(1).max(4096).regex(/^\//, 'must be an absolute path');
/** The largest disk Offshoot creates or grows to (QEMU's qcow2 allows more; ext4 files stop at 16 TiB). */
export const MAX_DISK_BYTES = 64 * 1024 ** 4;
const size = z.union([z.string().max(32), z.number().int().positive()]).transform((v, ctx) => {
  let bytes: number;
  try {
    bytes = typeof v === 'number' ? v : parseSizeMiB(v) * 1024 * 1024;
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAX_DISK_BYTES) {
    ctx.addIssue({ code: 'custom', message: `a disk size must be from 1 byte to ${MAX_DISK_BYTES} bytes (64 TiB), not ${v}` });
    return z.NEVER;
  }
  return bytes;
});

const hostRef = z.string().min(1).max(128);
export const addDatastoreRequestSchema = z.object({ name, path: absolutePath, host: hostRef.optional().describe("the host whose folder it is (default: the controller's own)") }).strict();
export const attachDatastoreRequestSchema = z.object({ host: hostRef, path: absolutePath.optional().describe('where the host sees the folder (default: the same path)') }).strict();
export const createDiskRequestSchema = z.object({ datastore: name, name, size, format: z.enum(['qcow2', 'raw']).default('qcow2') }).strict();
export const importDiskRequestSchema = z.object({ datastore: name, name, source: absolutePath, format: z.enum(['qcow2', 'raw']).default('qcow2'), host: hostRef.optional().describe('the host the source file is on (default: a host of the datastore)') }).strict();
export const resizeDiskRequestSchema = z.object({ size }).strict();
export const moveDiskRequestSchema = z.object({ datastore: name }).strict();
export const seedDiskRequestSchema = z.object({ to: hostRef.describe("a datastore, or a host (its own default datastore)"), verify: z.boolean().default(false).describe('hash the layers the destination holds by id, and copy anew one whose bytes differ') }).strict();
export const movePlanRequestSchema = z.object({ to: hostRef.describe('the destination host'), verify: z.boolean().default(false).describe('hash each layer the destination holds and compare it with the source') }).strict();
export const findContentRequestSchema = z
  .object({
    chains: z.array(z.object({ contentIds: z.array(z.string().min(1).max(80)).min(1).max(32).describe('a chain of content ids, top first'), hashes: z.array(z.string().max(200).nullable()).max(32).optional().describe('with verify: the expected hash of each layer') }).strict()).min(1).max(256),
    verify: z.boolean().default(false),
  })
  .strict();
export const moveJobRequestSchema = z.object({ to: hostRef.describe('the host that finishes the copy') }).strict();
export const verifyDiskRequestSchema = z.object({ against: z.string().min(1).max(200).optional() }).strict();
export const CLONE_MODES = ['linked', 'full', 'instant'] as const;
export const cloneRequestSchema = z
  .object({
    name,
    mode: z.enum(CLONE_MODES).default('linked'),
    /** Where full copies go; required for a full clone. */
    datastore: name.optional(),
    start: z.boolean().optional(),
  })
  .strict();
export const createPoolRequestSchema = z.object({ name, vm: z.string().min(1).max(100), datastore: name, size: z.number().int().min(0).max(64) }).strict();
export const resizePoolRequestSchema = z.object({ size: z.number().int().min(0).max(64) }).strict();
export const attachDiskRequestSchema = z.object({ disk: z.string().min(1).max(200) }).strict();
export const flattenRequestSchema = z.object({ disk: z.string().min(1).max(63).optional() }).strict();

export type AddDatastoreRequest = z.infer<typeof addDatastoreRequestSchema>;
export type CreateDiskRequest = z.input<typeof createDiskRequestSchema>;
export type ImportDiskRequest = z.input<typeof importDiskRequestSchema>;
export type CloneRequest = z.input<typeof cloneRequestSchema>;
export type CloneMode = (typeof CLONE_MODES)[number];
export type CreatePoolRequest = z.infer<typeof createPoolRequestSchema>;
