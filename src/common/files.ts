// Small files the agent keeps (its state, the datastore registry, caches,
// operation journals) are written aside and renamed into place: a crash or a
// full disk leaves the old file or the new one, never half of one, and never
// the temporary file.
import { randomBytes } from 'node:crypto';
import { open, rename, rm, writeFile } from 'node:fs/promises';

/** Writes `data` to `path` atomically (same folder, private by default). */
export async function writeFileAtomic(path: string, data: string, mode = 0o600): Promise<void> {
  const temp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(temp, data, { mode });
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** Parses a JSON file's text; `fallback` if it is empty or not JSON (a file cut short before it was written atomically). */
export function parseJsonOr<T>(text: string, fallback: T): T {
  try {
    return text.trim() ? (JSON.parse(text) as T) : fallback;
  } catch {
    return fallback;
  }
}

/** Flushes a directory's entries (a file just renamed or linked into it survives a crash of the machine). */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
