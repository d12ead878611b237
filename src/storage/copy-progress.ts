// The progress file of a copy job, `<target>.copy.json`: which source (path,
// size, mtime, inode) is copied with which chunk size, and which chunks are
// done (each with its xxh3-64 hash and data bytes). Written atomically (temp
// file, fsync, rename, fsync of the folder) after each chunk is flushed, so a
// crash leaves either the old or the new record, never a torn one.
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
// A namespace import (not `{ z }`) lets the copy worker's bundle leave out the parts of zod it does not use.
import * as z from 'zod';
import { CopyProgressInvalidError, CopySourceChangedError } from './copy-errors.ts';

export const PROGRESS_SUFFIX = '.copy.json';
export const PROGRESS_KIND = 'offshoot-copy-progress';

export function progressPath(target: string): string {
  return `${target}${PROGRESS_SUFFIX}`;
}

const identitySchema = z.object({
  path: z.string(),
  size: z.number().int().nonnegative(),
  /** Modification time in nanoseconds since the epoch (decimal string: exceeds 2^53). */
  mtimeNs: z.string().regex(/^\d+$/),
  ino: z.string().regex(/^\d+$/),
});
export type SourceIdentity = z.infer<typeof identitySchema>;

const chunkSchema = z.object({ hash: z.string().regex(/^[0-9a-f]{16}$/), bytes: z.number().int().nonnegative() });
export type ChunkRecord = z.infer<typeof chunkSchema>;

const progressSchema = z.object({
  kind: z.literal(PROGRESS_KIND),
  version: z.literal(1),
  source: identitySchema,
  size: z.number().int().nonnegative(),
  chunkBytes: z.number().int().positive(),
  chunks: z.number().int().nonnegative(),
  /** Chunk index (decimal) to its record; only chunks flushed to the target appear. */
  done: z.record(z.string().regex(/^\d+$/), chunkSchema),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type CopyProgressFile = z.infer<typeof progressSchema>;

/** The identity of the file at `path` now. */
export async function sourceIdentity(path: string): Promise<SourceIdentity & { mode: number }> {
  const st = await stat(path, { bigint: true });
  if (!st.isFile()) throw new CopySourceChangedError(path, 'not a regular file');
  return { path, size: Number(st.size), mtimeNs: st.mtimeNs.toString(), ino: st.ino.toString(), mode: Number(st.mode) & 0o7777 };
}

/** Throws COPY_SOURCE_CHANGED unless `now` is the file `recorded` describes (the path may differ: another host may mount it elsewhere). */
export function checkSameSource(recorded: SourceIdentity, now: SourceIdentity): void {
  for (const key of ['size', 'mtimeNs', 'ino'] as const) {
    if (recorded[key] !== now[key]) {
      throw new CopySourceChangedError(now.path, `${key} was ${recorded[key]}, is ${now[key]}`, { recorded, now: { path: now.path, size: now.size, mtimeNs: now.mtimeNs, ino: now.ino } });
    }
  }
}

/** Reads the progress file of `target`, or undefined if there is none. */
export async function readProgress(target: string): Promise<CopyProgressFile | undefined> {
  const path = progressPath(target);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new CopyProgressInvalidError(path, 'not JSON');
  }
  const parsed = progressSchema.safeParse(json);
  if (!parsed.success) throw new CopyProgressInvalidError(path, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  const p = parsed.data;
  if (p.chunks !== Math.ceil(p.size / p.chunkBytes)) throw new CopyProgressInvalidError(path, 'chunk count does not match size and chunk size');
  if (Object.keys(p.done).some((k) => Number(k) >= p.chunks)) throw new CopyProgressInvalidError(path, 'chunk index out of range');
  return p;
}

async function fsyncDir(dir: string): Promise<void> {
  const fd = await open(dir, 'r');
  try {
    await fd.sync();
  } finally {
    await fd.close();
  }
}

/** Writes the progress file of `target` atomically and durably. */
export async function writeProgress(target: string, progress: CopyProgressFile): Promise<void> {
  const path = progressPath(target);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = await open(tmp, 'w', 0o644);
  try {
    await fd.writeFile(`${JSON.stringify(progress)}\n`);
    await fd.sync();
  } finally {
    await fd.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dirname(path));
}

/** Removes the progress file of `target` (durably); absent is fine. */
export async function removeProgress(target: string): Promise<boolean> {
  try {
    await unlink(progressPath(target));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  await fsyncDir(dirname(target));
  return true;
}
