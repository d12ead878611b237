// A checkpoint file given by path (carried from another machine, or written
// with --out and never recorded here): it must be a regular file inside an
// allowed root (path-policy.ts; checked by stat before anything opens it, so
// a FIFO cannot hang the daemon); the strict reader validates it (header,
// table of contents, metadata and device-state checksums, block index) and
// its metadata must describe a VM spec of the file's memory size; the frozen
// disks it names must exist on this host inside an allowed root and pass the
// safe-image check (no
// backing chain leaving this Offshoot home or the disk's own folder, declared
// formats, no external data file). Anything else is a clear error naming the
// file and the disk; nothing is created.
import { realpath, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OffshootError } from '../common/index.ts';
import { CheckpointFormatError, CheckpointReader } from '../memory/index.ts';
import { guestMemoryBytes } from '../protocol/index.ts';
import { inspectImage } from '../storage/index.ts';
import type { PathPolicy } from './path-policy.ts';
import type { CheckpointInspection, VmDisk, VmSpec } from './types.ts';

/** A disk the checkpoint refers to is missing or unsafe on this host. HTTP 400. */
export class CheckpointDiskError extends OffshootError {
  constructor(path: string, disk: VmDisk, reason: string, cause?: unknown) {
    super('CHECKPOINT_DISK_UNAVAILABLE', `checkpoint ${path}: disk ${disk.id} (${disk.path}) ${reason}`, { path, diskId: disk.id, diskPath: disk.path, reason }, 400, cause === undefined ? undefined : { cause });
  }
}

export async function inspectCheckpointFile<M extends { spec: unknown }>(policy: PathPolicy, path: string, readMetadata: (raw: Record<string, unknown>) => M, hostSpec: (spec: M['spec']) => VmSpec): Promise<CheckpointInspection & { metadata: M }> {
  await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new CheckpointFormatError(path, 'file', `cannot open (${err.code ?? err.message})`, 'CHECKPOINT_NOT_FOUND');
  });
  await policy.allowedFile('checkpoint', path);
  const reader = await CheckpointReader.open(path);
  let memoryBytes: number;
  let raw: Record<string, unknown>;
  try {
    memoryBytes = reader.memoryBytes;
    raw = reader.metadata;
  } finally {
    await reader.close();
  }
  const metadata = readMetadata(raw);
  let spec: VmSpec;
  try {
    spec = hostSpec(metadata.spec);
  } catch (err) {
    if (err instanceof OffshootError && err.code === 'NOT_FOUND') throw new OffshootError('CHECKPOINT_DISK_UNAVAILABLE', `checkpoint ${path}: ${err.message} on this host`, { path }, 409, { cause: err });
    throw err;
  }
  const specBytes = guestMemoryBytes(spec);
  if (specBytes !== memoryBytes) throw new CheckpointFormatError(path, 'metadata', `the spec says ${spec.memoryMiB} MiB${spec.memoryExtraKiB ? ` and ${spec.memoryExtraKiB} KiB` : ''} of memory (${specBytes} bytes), the file holds ${memoryBytes} bytes`);
  for (const disk of spec.disks) {
    let real: string;
    try {
      real = await realpath(disk.path);
    } catch (err) {
      throw new CheckpointDiskError(path, disk, `does not exist on this host (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, err);
    }
    try {
      await policy.allowedFile(`disk ${disk.id}`, real);
    } catch (err) {
      throw new CheckpointDiskError(path, disk, `cannot be used: ${(err as Error).message}`, err);
    }
    try {
      await inspectImage(disk.path, { allowedRoots: [policy.home, dirname(real)], expectedFormat: disk.format });
    } catch (err) {
      throw new CheckpointDiskError(path, disk, `is not safe to use: ${(err as Error).message}`, err);
    }
  }
  const fileBytes = (await stat(path)).size;
  return { memoryBytes, fileBytes, metadata };
}
