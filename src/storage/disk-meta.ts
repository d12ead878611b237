// Disk sidecar metadata: every disk file in a datastore has a `<file>.meta.json`
// beside it (id, name, content id, parent, format, size, created) so that a
// datastore describes itself and `datastore rescan` can rebuild the inventory
// from the files alone. Content ids: a disk open for writing is assumed changed
// and gets a new content id when it is next frozen; a read-only base keeps its
// id for ever, and a byte-exact copy carries its source's id (equal ids on two
// datastores mean equal content). Sidecars are written atomically.
import { randomUUID } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { z } from 'zod';
import { OffshootError } from '../common/index.ts';

export const DISK_META_SUFFIX = '.meta.json';

export const diskMetaSchema = z
  .object({
    version: z.literal(1),
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/),
    name: z.string().min(1).max(64),
    contentId: z.string().min(1).max(80),
    /** Id of the disk this one is a delta over (same datastore), or null for a standalone image. */
    parentId: z.string().nullable(),
    format: z.enum(['qcow2', 'raw']),
    virtualSize: z.number().int().nonnegative(),
    readOnly: z.boolean(),
    createdAt: z.string(),
  })
  .strict();

export type DiskMeta = z.infer<typeof diskMetaSchema>;

export class DiskMetaError extends OffshootError {
  constructor(path: string, reason: string) {
    super('DISK_META_INVALID', `disk metadata ${path} is unusable: ${reason}`, { path, reason }, 422);
  }
}

export function newContentId(): string {
  return `cid-${randomUUID()}`;
}

export function metaPathFor(diskPath: string): string {
  return `${diskPath}${DISK_META_SUFFIX}`;
}

export async function readDiskMeta(diskPath: string): Promise<DiskMeta> {
  const path = metaPathFor(diskPath);
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (err) {
    throw new DiskMetaError(path, (err as Error).message);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new DiskMetaError(path, 'not JSON');
  }
  const parsed = diskMetaSchema.safeParse(json);
  if (!parsed.success) throw new DiskMetaError(path, parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '));
  return parsed.data;
}

/** Writes the sidecar atomically (temp file, fsync, rename). */
export async function writeDiskMeta(diskPath: string, meta: DiskMeta): Promise<void> {
  const path = metaPathFor(diskPath);
  const temp = `${path}.tmp-${process.pid}`;
  const file = await open(temp, 'w', 0o644);
  try {
    await file.writeFile(`${JSON.stringify(diskMetaSchema.parse(meta), null, 2)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temp, path);
}

export async function removeDiskMeta(diskPath: string): Promise<void> {
  await rm(metaPathFor(diskPath), { force: true });
}
