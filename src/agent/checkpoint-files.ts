// Checkpoints on one host: writing a frozen VM (its template RAM file and
// device state, after a fork-style switch-over with no children) into the
// checkpoint format, and an eager restore: the checkpoint's memory written
// into a new owned RAM file, a qcow2 delta over each frozen disk, and a QEMU
// that loads the device state and runs. A failed restore leaves nothing.
//
// A checkpoint file never replaces anything: it is written under a temporary
// name in its own folder (`.offshoot-ckpt-<id>.tmp`, named by the checkpoint's
// id so a restarted daemon finds it), then hard-linked to its final name,
// which fails if that name exists (two checkpoints with one --out cannot
// delete each other's file), and the folder is flushed so that the name
// survives a crash of the machine; then the temporary name goes. The checkpoint's
// id is in its metadata, so removing a checkpoint removes a file only if it
// is that checkpoint; a failed or cancelled write removes only its own
// temporary files.
import { link, lstat, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { OffshootError, syncDirectory } from '../common/index.ts';
import { CheckpointReader, openGuestMemory, writeCheckpoint } from '../memory/index.ts';
import type { CheckpointMetadata, WriteProgress, WriteTimings } from '../memory/index.ts';
import { createImage } from '../qemu/index.ts';
import type { StagingHost } from './fork-stager.ts';
import { loadDeviceState } from './migration.ts';
import type { VmDisk, VmRuntime, VmSpec } from './types.ts';

/** The temporary name a checkpoint is written under, in the folder of its final name. */
export function checkpointTempPath(path: string, checkpointId: string): string {
  return join(dirname(path), `.offshoot-ckpt-${checkpointId}.tmp`);
}

/** Removes the temporary files of a checkpoint write (never its final name). */
export async function removeCheckpointTemp(path: string, checkpointId: string): Promise<void> {
  const tmp = checkpointTempPath(path, checkpointId);
  await rm(tmp, { force: true });
  await rm(`${tmp}.partial`, { force: true });
}

/** Writes the checkpoint under its temporary name and links it to `path`; ALREADY_EXISTS if `path` appeared meanwhile. */
export async function writeCheckpointFile(
  artifacts: { templateFile: string; deviceState: string },
  path: string,
  checkpointId: string,
  memoryBytes: number,
  metadata: CheckpointMetadata,
  onProgress?: (p: WriteProgress) => void,
  signal?: AbortSignal,
): Promise<{ fileBytes: number; storedPages: number; timings: WriteTimings }> {
  const tmp = checkpointTempPath(path, checkpointId);
  try {
    const written = await writeFrozenMemory(artifacts, tmp, memoryBytes, { ...metadata, checkpointId }, onProgress, signal);
    signal?.throwIfAborted();
    await link(tmp, path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') throw new OffshootError('ALREADY_EXISTS', `${path} appeared while the checkpoint was written; Offshoot never overwrites a file`, { kind: 'file', name: path, path }, 409);
      throw err;
    });
    // The file was fsynced before it was renamed and linked: the folder's entries too, or a crash of the machine can lose its name.
    await syncDirectory(dirname(path));
    return written;
  } finally {
    await removeCheckpointTemp(path, checkpointId);
  }
}

/**
 * Removes a checkpoint's temporary files and its file, but the file only if it is this checkpoint (its
 * metadata names the id; files written before ids were recorded match by creation time). Returns
 * whether the file was removed.
 */
export async function removeOwnCheckpoint(checkpoint: { path: string; id: string; createdAt: string }): Promise<boolean> {
  await removeCheckpointTemp(checkpoint.path, checkpoint.id);
  const info = await lstat(checkpoint.path).catch(() => undefined);
  if (!info?.isFile()) return false;
  let metadata: Record<string, unknown>;
  try {
    const reader = await CheckpointReader.open(checkpoint.path);
    metadata = reader.metadata;
    await reader.close();
  } catch {
    return false;
  }
  const ours = metadata.checkpointId === checkpoint.id || (metadata.checkpointId === undefined && metadata.createdAt === checkpoint.createdAt);
  if (ours) await rm(checkpoint.path, { force: true });
  return ours;
}

async function writeFrozenMemory(
  artifacts: { templateFile: string; deviceState: string },
  out: string,
  memoryBytes: number,
  metadata: CheckpointMetadata,
  onProgress?: (p: WriteProgress) => void,
  signal?: AbortSignal,
): Promise<{ fileBytes: number; storedPages: number; timings: WriteTimings }> {
  const deviceState = await readFile(artifacts.deviceState);
  // Guest RAM is read in place through a read-only mapping (pread without the native addon); the
  // mapping goes only after the writer has returned, when no encoding reads it any more.
  const memory = await openGuestMemory(artifacts.templateFile, memoryBytes);
  try {
    const written = await writeCheckpoint(out, { memoryBytes, memory, metadata, deviceState, onProgress, signal });
    return { ...written, timings: { ...written.timings, readPath: memory.readPath } };
  } finally {
    await memory.close();
  }
}

/** The restored VM's disks: a new qcow2 delta in `dir` over each frozen (writable) disk of the checkpoint. */
export async function restoreDisks(dir: string, spec: VmSpec): Promise<VmDisk[]> {
  const disks: VmDisk[] = [];
  for (const disk of spec.disks) {
    if (disk.readOnly) {
      disks.push({ ...disk, owned: false });
      continue;
    }
    const delta = join(dir, `${disk.id}.qcow2`);
    await createImage({ path: delta, format: 'qcow2', backing: { path: disk.path, format: disk.format } });
    disks.push({ id: disk.id, path: delta, format: 'qcow2', readOnly: false, owned: true, backing: [disk.path, ...disk.backing] });
  }
  return disks;
}

/**
 * Restores a checkpoint as VM `vmId`: disks as deltas over its frozen disks, memory loaded first (eager).
 * The memory file is created and sized first, then filled while the disk deltas are made and QEMU
 * starts (it maps the file but touches guest RAM only when it loads the device state, which waits for
 * the last page): the restore takes the longer of the two instead of their sum.
 */
export async function restoreEager(host: StagingHost, vmId: string, name: string, checkpointPath: string, spec: VmSpec): Promise<{ runtime: VmRuntime; spec: VmSpec }> {
  const reader = await CheckpointReader.open(checkpointPath);
  const files = host.layout.vmFiles(vmId);
  const deviceStateFile = join(host.layout.workDir, `${vmId}.restore.devstate`);
  let loading: Promise<void> | undefined;
  try {
    await mkdir(files.dir, { recursive: true });
    await mkdir(host.layout.memoryDir, { recursive: true });
    await mkdir(host.layout.workDir, { recursive: true });
    // The file has its size before QEMU maps it (QEMU would size it itself, racing a later truncate).
    const memory = await open(files.memoryFile, 'w', 0o600);
    try {
      await memory.truncate(reader.memoryBytes);
    } catch (err) {
      await memory.close();
      throw err;
    }
    loading = reader.restoreInto(memory).finally(() => memory.close());
    loading.catch(() => undefined);
    const restored: VmSpec = { ...spec, disks: await restoreDisks(files.dir, spec) };
    await writeFile(deviceStateFile, reader.deviceState);
    const { vm, runtime } = await host.launch(vmId, name, restored, { memory: { mode: 'owned', file: files.memoryFile, templateId: null }, incoming: true, paused: true });
    try {
      await loading;
      await loadDeviceState(vm.qmp, deviceStateFile, host.layout.vmFiles(vmId, vm.instance).migrationSocket);
      await vm.qmp.cont();
    } catch (err) {
      await host.discard(vm);
      throw err;
    }
    host.track(vm);
    return { runtime, spec: restored };
  } catch (err) {
    await loading?.catch(() => undefined);
    await rm(files.dir, { recursive: true, force: true });
    await rm(files.memoryFile, { force: true });
    throw err;
  } finally {
    await reader.close();
    await rm(deviceStateFile, { force: true });
  }
}
