// The metadata inside a checkpoint file: which VM it froze, its spec (with
// its frozen disks named by reference, not by path), when, on which host.
// Typed and versioned (protocol checkpointMetadataSchema, `schema: 2`).
//
// Compatibility rule: a reader accepts schema 2, and the untyped metadata of
// files written before it (no `schema` field: a VmSpec whose disks carry
// absolute `path`s and whose kernel and initrd are paths). Such a file is read
// by turning each path into a reference on this host; a path outside the
// places this host may use makes the file unusable here
// (CHECKPOINT_DISK_UNAVAILABLE). Newer schemas are refused (CHECKPOINT_VERSION).
import { OffshootError } from '../common/index.ts';
import { CheckpointFormatError } from '../memory/index.ts';
import type { CheckpointMetadata, VmSpec } from '../protocol/index.ts';
import { checkpointMetadataSchema } from '../protocol/index.ts';
import type { Locations } from './locations.ts';
import type { VmSpec as HostSpec } from './types.ts';

export const CHECKPOINT_METADATA_SCHEMA = 2;

interface LegacyDisk {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  owned: boolean;
  backing: string[];
}

function legacyToSpec(locations: Locations, file: string, spec: Record<string, unknown>): VmSpec {
  const boot = spec.boot as { kind: 'kernel'; kernel: string; initrd?: string; cmdline: string } | { kind: 'disk' } | undefined;
  if (!boot || typeof boot !== 'object' || !Array.isArray(spec.disks) || !Number.isInteger(spec.memoryMiB)) throw new CheckpointFormatError(file, 'metadata', 'no VM spec in the metadata');
  const locate = (path: string, what: string) => {
    try {
      return locations.locator(path);
    } catch (err) {
      throw new OffshootError('CHECKPOINT_DISK_UNAVAILABLE', `checkpoint ${file}: ${what} ${path} is not a file this host may use`, { file, path }, 409, { cause: err });
    }
  };
  return {
    vcpus: spec.vcpus as number,
    memoryMiB: spec.memoryMiB as number,
    boot: boot.kind === 'kernel' ? { kind: 'kernel', kernel: locate(boot.kernel, 'kernel'), ...(boot.initrd ? { initrd: locate(boot.initrd, 'initrd') } : {}), cmdline: boot.cmdline } : { kind: 'disk' },
    disks: (spec.disks as LegacyDisk[]).map((d) => ({ id: d.id, file: locate(d.path, `disk ${d.id}`), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map((b) => locate(b, `disk ${d.id}'s backing file`)) })),
    nics: (spec.nics as VmSpec['nics']) ?? [],
    defaultGuest: Boolean(spec.defaultGuest),
  };
}

/** Reads a checkpoint's metadata under the compatibility rule above. */
export function readCheckpointMetadata(locations: Locations, file: string, raw: Record<string, unknown>, hostId: string): CheckpointMetadata {
  const schema = raw.schema;
  if (schema === undefined) {
    const vm = (raw.vm ?? {}) as { id?: string; name?: string };
    const candidate = {
      schema: 2,
      checkpointId: typeof raw.checkpointId === 'string' ? raw.checkpointId : undefined,
      vm: { id: typeof vm.id === 'string' && /^[0-9a-f-]{36}$/i.test(vm.id) ? vm.id : '00000000-0000-4000-8000-000000000000', name: typeof vm.name === 'string' ? vm.name : 'restored' },
      spec: legacyToSpec(locations, file, (raw.spec ?? {}) as Record<string, unknown>),
      createdAt: typeof raw.createdAt === 'string' ? raw.createdAt : '',
      hostId,
    };
    const parsed = checkpointMetadataSchema.safeParse(candidate);
    if (!parsed.success) throw new CheckpointFormatError(file, 'metadata', `it (written before schema 2) does not describe a VM: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    return parsed.data;
  }
  if (typeof schema !== 'number' || schema > CHECKPOINT_METADATA_SCHEMA) throw new CheckpointFormatError(file, 'metadata', `metadata schema ${String(schema)} is newer than this agent reads (${CHECKPOINT_METADATA_SCHEMA})`, 'CHECKPOINT_VERSION');
  const parsed = checkpointMetadataSchema.safeParse(raw);
  if (!parsed.success) throw new CheckpointFormatError(file, 'metadata', `it does not match schema 2: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** A VM spec with file references, as host paths (for the local agents). */
export function hostSpecOf(locations: Locations, spec: VmSpec): HostSpec {
  const disk = (d: VmSpec['disks'][number]): HostSpec['disks'][number] => ({ id: d.id, path: locations.path(d.file), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map((b) => locations.path(b)) });
  const boot: HostSpec['boot'] = spec.boot.kind === 'kernel' ? { kind: 'kernel', kernel: locations.path(spec.boot.kernel), ...(spec.boot.initrd ? { initrd: locations.path(spec.boot.initrd) } : {}), cmdline: spec.boot.cmdline } : { kind: 'disk' };
  return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, ...(spec.memoryExtraKiB ? { memoryExtraKiB: spec.memoryExtraKiB } : {}), boot, disks: spec.disks.map(disk), nics: spec.nics, defaultGuest: spec.defaultGuest, ...(spec.guestAgent !== undefined ? { guestAgent: spec.guestAgent } : {}), ...(spec.identity ? { identity: { ...spec.identity } } : {}) };
}

/** A host spec (paths) with file references instead (for the protocol). */
export function protocolSpecOf(locations: Locations, spec: HostSpec): VmSpec {
  const disk = (d: HostSpec['disks'][number]): VmSpec['disks'][number] => ({ id: d.id, file: locations.locator(d.path), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map((b) => locations.locator(b)) });
  const boot: VmSpec['boot'] = spec.boot.kind === 'kernel' ? { kind: 'kernel', kernel: locations.locator(spec.boot.kernel), ...(spec.boot.initrd ? { initrd: locations.locator(spec.boot.initrd) } : {}), cmdline: spec.boot.cmdline } : { kind: 'disk' };
  return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, ...(spec.memoryExtraKiB ? { memoryExtraKiB: spec.memoryExtraKiB } : {}), boot, disks: spec.disks.map(disk), nics: spec.nics, defaultGuest: spec.defaultGuest, ...(spec.guestAgent !== undefined ? { guestAgent: spec.guestAgent } : {}), ...(spec.identity ? { identity: { ...spec.identity } } : {}) };
}
