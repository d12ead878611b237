// The agent calls of mobility: what moves files between hosts and tells what
// a host already holds.
// - A copy between two hosts: the host that has the file serves it
//   (openFileServer: one file, read-only, one address, a one-time token,
//   closed by closeFileServer or after being idle), and the host that
//   receives it runs the copy worker against that server (fetchFile: the same
//   chunked, resumable, verified copy as copyFile, with its progress file
//   beside the target).
// - Content ids across hosts: describeFiles tells the size, data bytes,
//   format and content id of files on the source; findContent answers, on
//   the destination, which chains of content ids it holds (a file whose own
//   chain has exactly those ids), hashing what it found when asked to verify.
// Spread into AGENT_CALLS (calls.ts).
import { z } from 'zod';
import { copyResultSchema, locatorSchema, operationIdSchema } from './schemas.ts';

/** One chain the destination is asked about: content ids of a layer and every layer below it, top first. */
export const contentQuerySchema = z.object({
  contentIds: z.array(z.string().min(1).max(80)).min(1).max(32),
  /** With verify: the expected content hash of each layer (disk verify's hash; null: unknown, the layer cannot be verified). */
  hashes: z.array(z.string().max(200).nullable()).max(32).optional(),
});

export const contentAnswerSchema = z.object({
  /** The top of the chain found on this host, or null. */
  file: locatorSchema.nullable(),
  /** The files of the chain found, top first. */
  chain: z.array(locatorSchema).max(32),
  /** With verify: whether every layer hashed as expected (null: not asked). */
  verified: z.boolean().nullable(),
  /** A layer whose id matched but whose bytes did not. */
  mismatch: z.object({ file: locatorSchema, layer: z.number().int(), expected: z.string(), actual: z.string() }).nullable(),
});

export const describedFileSchema = z.object({
  file: locatorSchema,
  exists: z.boolean(),
  /** Apparent size, and the bytes of its data extents (what a copy moves). */
  size: z.number(),
  dataBytes: z.number(),
  format: z.enum(['qcow2', 'raw']),
  /** The content id, when asked (a read-only file only: it is computed from its bytes and cached). */
  contentId: z.string().nullable(),
});

const remoteFileSchema = z.object({ url: z.string().url().max(300), token: z.string().min(16).max(200) });

export const MOBILITY_CALLS = {
  openFileServer: {
    kind: 'call' as const,
    summary: 'serves one file read-only to another host (one address, a one-time token) until closed or idle',
    request: z.object({ file: locatorSchema, peer: z.string().min(1).max(255).describe('the address of the host that will read it (the server listens on the local address that reaches it)'), idleMs: z.number().int().min(1_000).max(3_600_000).optional() }),
    result: z.object({ serverId: z.string(), url: z.string(), token: z.string(), size: z.number() }),
    readOnly: false,
  },
  closeFileServer: {
    kind: 'call' as const,
    summary: 'closes a file server (already closed is fine) and tells how many bytes it sent',
    request: z.object({ serverId: z.string().min(1).max(64) }),
    result: z.object({ existed: z.boolean(), bytesServed: z.number() }),
    readOnly: false,
  },
  fetchFile: {
    kind: 'operation' as const,
    summary: "copies a file another host serves into `target`, in a worker process, resumable from its progress file; cancel stops after the chunk in flight",
    request: z.object({ operationId: operationIdSchema, source: remoteFileSchema, sourceName: z.string().max(4096), target: locatorSchema, chunkMiB: z.number().positive().optional(), maxMiBPerSecond: z.number().positive().optional() }),
    result: copyResultSchema,
    readOnly: false,
  },
  describeFiles: {
    kind: 'call' as const,
    summary: 'size, data bytes, format and (when asked) content id of files on this host',
    request: z.object({ files: z.array(z.object({ file: locatorSchema, contentId: z.boolean().default(false) })).max(256) }),
    result: z.object({ files: z.array(describedFileSchema) }),
    readOnly: true,
  },
  findContent: {
    kind: 'operation' as const,
    summary: 'which of the given chains of content ids this host holds (datastore disks by their sidecars, its own bases and images by their bytes); with verify, each layer found is hashed',
    request: z.object({ operationId: operationIdSchema, queries: z.array(contentQuerySchema).max(256), verify: z.boolean().default(false) }),
    result: z.object({ answers: z.array(contentAnswerSchema) }),
    readOnly: false,
  },
} as const;

export type ContentQuery = z.infer<typeof contentQuerySchema>;
export type ContentAnswer = z.infer<typeof contentAnswerSchema>;
export type DescribedFile = z.infer<typeof describedFileSchema>;

const HASH_ID = /^cid-x([0-9a-f]{16})-(\d+)$/;

/** The content id of a file whose disk-verify hash is `hash` ("xxh64:<hex>:<size>"): how hosts name their own bases. */
export function contentIdOfHash(hash: string): string {
  return `cid-${hash.replace(/^xxh64:/, 'x').replace(':', '-')}`;
}

/** The disk-verify hash a content id was made from, or null for an id that was not made from a hash (a created disk's). */
export function hashOfContentId(contentId: string): string | null {
  const m = HASH_ID.exec(contentId);
  return m ? `xxh64:${m[1]}:${m[2]}` : null;
}
