// Datastores: named folders that hold disks. A datastore folder describes
// itself: a marker file names it, and every disk under `disks/` has a sidecar
// (see disk-meta.ts), so `rescan` rebuilds its disks from the files alone.
// Layout:
//   <path>/.offshoot-datastore.json   { version, name, createdAt }
//   <path>/disks/<diskId>.<fmt>       disk images (+ .meta.json sidecars)
//   <path>/pools/<poolId>/<slot>/     pre-copied disk sets of a pool
//   <path>/vms/<vmId>/                deltas of VMs placed on this datastore
//   <path>/work/                      copies in flight
import { mkdir, readFile, readdir, stat, statfs, writeFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { OffshootError } from '../common/index.ts';
import { DISK_META_SUFFIX, readDiskMeta } from './disk-meta.ts';
import type { DiskMeta } from './disk-meta.ts';

export const DATASTORE_MARKER = '.offshoot-datastore.json';

export class DatastorePathError extends OffshootError {
  constructor(path: string, reason: string) {
    super('DATASTORE_PATH_INVALID', `cannot use ${path} as a datastore: ${reason}`, { path, reason }, 400);
  }
}

export class DatastoreLayout {
  readonly disksDir: string;
  readonly poolsDir: string;
  readonly vmsDir: string;
  readonly workDir: string;
  readonly marker: string;

  constructor(readonly path: string) {
    this.disksDir = join(path, 'disks');
    this.poolsDir = join(path, 'pools');
    this.vmsDir = join(path, 'vms');
    this.workDir = join(path, 'work');
    this.marker = join(path, DATASTORE_MARKER);
  }

  diskPath(diskId: string, format: 'qcow2' | 'raw'): string {
    return join(this.disksDir, `${diskId}.${format}`);
  }

  poolSlotDir(poolId: string, slot: string): string {
    return join(this.poolsDir, poolId, slot);
  }

  vmDir(vmId: string): string {
    return join(this.vmsDir, vmId);
  }
}

/** Creates (or adopts) a datastore folder; refuses one that another datastore name has claimed. */
export async function initDatastore(path: string, name: string): Promise<DatastoreLayout> {
  if (!isAbsolute(path)) throw new DatastorePathError(path, 'the path must be absolute');
  const layout = new DatastoreLayout(resolve(path));
  await mkdir(layout.path, { recursive: true });
  const info = await stat(layout.path);
  if (!info.isDirectory()) throw new DatastorePathError(path, 'not a directory');
  const existing = await readMarker(layout);
  if (existing && existing.name !== name) throw new DatastorePathError(path, `it already is datastore "${existing.name}"`);
  for (const dir of [layout.disksDir, layout.poolsDir, layout.vmsDir, layout.workDir]) await mkdir(dir, { recursive: true });
  if (!existing) await writeFile(layout.marker, `${JSON.stringify({ version: 1, name, createdAt: new Date().toISOString() }, null, 2)}\n`);
  return layout;
}

export async function readMarker(layout: DatastoreLayout): Promise<{ name: string; createdAt: string } | undefined> {
  const text = await readFile(layout.marker, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const marker = JSON.parse(text) as { name?: unknown; createdAt?: unknown };
    if (typeof marker.name === 'string') return { name: marker.name, createdAt: String(marker.createdAt ?? '') };
  } catch {
    /* fall through */
  }
  throw new DatastorePathError(layout.path, `${DATASTORE_MARKER} is corrupt`);
}

export interface DatastoreUsage {
  capacityBytes: number;
  freeBytes: number;
  /** Bytes allocated on the host by the datastore's disk files. */
  usedBytes: number;
  diskCount: number;
}

export async function datastoreUsage(layout: DatastoreLayout): Promise<DatastoreUsage> {
  const fs = await statfs(layout.path);
  let usedBytes = 0;
  let diskCount = 0;
  for (const dir of [layout.disksDir, layout.poolsDir, layout.vmsDir]) {
    for (const file of await walk(dir)) {
      const info = await stat(file).catch(() => undefined);
      if (!info) continue;
      usedBytes += info.blocks * 512;
      if (dir === layout.disksDir && !file.endsWith(DISK_META_SUFFIX) && !file.includes('.copy')) diskCount++;
    }
  }
  return { capacityBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize, usedBytes, diskCount };
}

async function walk(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const files: string[] = [];
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...(await walk(path)));
    else if (entry.isFile()) files.push(path);
  }
  return files;
}

export interface ScannedDisk {
  path: string;
  meta: DiskMeta;
}

/** Reads every disk sidecar under `disks/`; files without a usable sidecar are reported, not guessed. */
export async function scanDatastore(layout: DatastoreLayout): Promise<{ disks: ScannedDisk[]; problems: { path: string; reason: string }[] }> {
  const disks: ScannedDisk[] = [];
  const problems: { path: string; reason: string }[] = [];
  const names = await readdir(layout.disksDir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    if (name.endsWith(DISK_META_SUFFIX) || name.includes('.copy') || name.includes('.tmp-')) continue;
    const path = join(layout.disksDir, name);
    try {
      disks.push({ path, meta: await readDiskMeta(path) });
    } catch (err) {
      problems.push({ path, reason: (err as Error).message });
    }
  }
  return { disks, problems };
}
