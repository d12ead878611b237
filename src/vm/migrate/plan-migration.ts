// Phase `plan` of a migration: where the VM goes and what moves. The two
// hosts must be different, reachable agents with the migration capability
// and the same accelerator; the path between them is bound to their
// management addresses (each agent names the address it reaches the other
// from, starting from the one host whose agent url carries an address). Each
// disk is decided by the storage policy: a disk the destination sees at the
// same reference (a shared datastore) stays where it is, unless `copy`; a
// copied disk is mirrored into a new image at the destination, over its
// bases when the destination has all of them with the same content ids
// (`sync: top`, only the delta moves: the same files, or a copy of the whole
// chain found by content id under other names, storage/content-plan.ts;
// with `bases`, only copies in one datastore of the destination, and hashed
// against the source's first), else as a whole (`sync: full`). Content ids
// of same-named bases are asked only when both hosts hold the file (a host
// hashes a base the first time it is asked); a datastore file both hosts see
// is one shared file, never hashed. The
// boot files and read-only disks must be at the destination already (the
// default guest is installed there if it is missing).
import { OffshootError } from '../../common/index.ts';
import type { AgentClient, IncomingDisk, VmDisk, VmSpec } from '../../protocol/index.ts';
import { guestMemoryBytes, makeLocator, parseLocator } from '../../protocol/index.ts';
import type { HostRecord } from '../hosts/index.ts';
import { LOCAL_HOST_URL } from '../hosts/index.ts';
import type { VmRecord } from '../records.ts';
import { planByContent } from '../storage/index.ts';
import type { MigrateRequest } from './migrate-request.ts';

/** A migration this controller refuses before anything moved. HTTP 409. */
export class MigrationPlanError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('MIGRATION_REFUSED', message, details, 409);
  }
}

export interface MigrationPlan {
  source: HostRecord;
  destination: HostRecord;
  sourceAddress: string;
  destinationAddress: string;
  slotsInUse: number[];
  /** Disks the destination creates and the source mirrors into. */
  incoming: IncomingDisk[];
  mirrors: Array<{ node: string; sync: 'top' | 'full' }>;
  /** Disks that stay where they are (shared), by id. */
  shared: string[];
  /** Copied disks whose bases the destination already holds (same files, or seeded copies found by content id): not sent. */
  skipped: Array<{ disk: string; bases: string[]; destinationBases: string[]; bytes: number }>;
  destinationSpec: VmSpec;
  /** Bytes of disk data the mirrors copy at most (allocated bytes of the copied layers). */
  diskBytes: number;
}

/**
 * The destination's copy of a disk's whole backing chain found by content id (storage/content-plan.ts), or
 * null when it does not hold all of it (or a layer has no content id: the disk then moves whole).
 */
async function heldChain(agents: { source: AgentClient; destination: AgentClient }, disk: VmDisk, contentIds: Record<string, string>, bases: MigrateRequest['bases']): Promise<Array<{ file: string; format: 'qcow2' | 'raw' }> | null> {
  if (disk.backing.length === 0) return null;
  // A datastore base is known by its recorded content id (a seeded copy keeps it); other bases by their bytes' hash.
  const [plan] = await planByContent(agents.source, agents.destination, { disks: [{ id: disk.id, backing: disk.backing }], contentIds, verify: bases?.verify ?? false }).catch(() => [undefined]);
  if (!plan?.skipAll) return null;
  // Asked for one datastore's copies: a chain held elsewhere at the destination is not used.
  if (bases?.datastoreId && !plan.destBacking.every((b) => b.file.startsWith(`ds.${bases.datastoreId}:`))) return null;
  return plan.destBacking;
}

/**
 * Which backing files of the copied disks are the same at both hosts under the same name, by content id: asked
 * of both agents at once, and only for files both hold (a host hashes a base the first time it is asked, 0.3-3 s
 * for 1 GiB, then keeps its id by file identity). A datastore file both hosts see is one file of a shared
 * datastore (the same reference on every host that sees it): the same, with nothing to hash.
 */
async function contentIdsOfShared(agents: { source: AgentClient; destination: AgentClient }, disks: VmDisk[], request: MigrateRequest, atBoth: (file: string) => boolean): Promise<Map<string, { source: string; destination: string }>> {
  const backing = [...new Set(disks.filter((d) => !d.readOnly && (request.storage === 'copy' || !atBoth(d.file))).flatMap((d) => d.backing))].filter(atBoth);
  const ids = new Map<string, { source: string; destination: string }>();
  await Promise.all(
    backing.map(async (file) => {
      if (parseLocator(file).scope.kind === 'datastore') {
        ids.set(file, { source: file, destination: file });
        return;
      }
      // A file a host cannot read to the end has no id there: its disk moves whole.
      const [s, d] = await Promise.all([agents.source.contentId({ file }).catch(() => null), agents.destination.contentId({ file }).catch(() => null)]);
      if (s && d) ids.set(file, { source: s.contentId, destination: d.contentId });
    }),
  );
  return ids;
}

function addressOf(host: HostRecord): string | null {
  if (host.url === LOCAL_HOST_URL) return null;
  const name = new URL(host.url).hostname;
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(name) ? name : null;
}

export async function planMigration(vm: VmRecord, source: HostRecord, destination: HostRecord, agents: { source: AgentClient; destination: AgentClient }, request: MigrateRequest, contentIds: Record<string, string> = {}): Promise<MigrationPlan> {
  if (source.id === destination.id) throw new MigrationPlanError(`VM "${vm.name}" already runs on host ${destination.name}`, { vm: vm.name, host: destination.name });
  for (const h of [source, destination]) {
    if (h.state !== 'ready' && !(h === source && h.state === 'draining')) throw new MigrationPlanError(`host ${h.name} is ${h.state}: a migration needs both hosts ready`, { host: h.name, state: h.state });
    if (!h.capabilities.includes('migration')) throw new MigrationPlanError(`the agent of host ${h.name} cannot migrate VMs (no 'migration' capability); update it`, { host: h.name });
  }
  // Each agent names the address it reaches the other from. One round of probes (both hosts at once, with the
  // files asked about) usually settles it: the source asked for its route to the destination's agent address, the
  // destination for its route to the source's. Only when the source reaches the destination from another address
  // than its agent's (or has no address of its own) does the destination answer again, for that address.
  const dUrl = addressOf(destination);
  const sUrl = addressOf(source);
  if (!dUrl && !sUrl) throw new MigrationPlanError(`neither host ${source.name} nor ${destination.name} is reached at a network address: a migration needs hosts on a network`, { source: source.name, destination: destination.name });
  // A disk boot's disk is one of the VM's disks.
  const bootFiles = vm.spec.boot.kind === 'kernel' ? [vm.spec.boot.kernel, ...(vm.spec.boot.initrd ? [vm.spec.boot.initrd] : [])] : [];
  const asked = [...new Set([...bootFiles, ...vm.spec.disks.flatMap((d) => [d.file, ...d.backing])])];
  // No content ids in this round: a base is hashed (the first time a host is asked) only when both hosts hold it
  // (contentIdsOfShared). Sizes (a qemu-img each) only where the plan reads them: the source's writable disks and their bases.
  const sized = new Set(vm.spec.disks.filter((d) => !d.readOnly).flatMap((d) => [d.file, ...d.backing]));
  const files = (sizes: boolean) => asked.map((file) => ({ file, contentId: false, sizes: sizes && sized.has(file) }));
  const [here, there] = await Promise.all([agents.source.migrationProbe({ peer: dUrl, files: files(true), installDefaultGuest: false }), agents.destination.migrationProbe({ peer: sUrl, files: files(false), installDefaultGuest: vm.spec.defaultGuest })]);
  let sourceAddress: string | null;
  let destinationAddress: string | null;
  if (dUrl) {
    sourceAddress = here.managementAddress;
    destinationAddress = !sourceAddress ? null : sourceAddress === sUrl ? there.managementAddress : (await agents.destination.migrationProbe({ peer: sourceAddress, files: [], installDefaultGuest: false })).managementAddress;
  } else {
    destinationAddress = there.managementAddress;
    sourceAddress = destinationAddress ? (await agents.source.migrationProbe({ peer: destinationAddress, files: [], installDefaultGuest: false })).managementAddress : null;
  }
  if (!sourceAddress || !destinationAddress) throw new MigrationPlanError(`hosts ${source.name} and ${destination.name} have no route to each other`, { source: source.name, destination: destination.name });

  if (here.accel !== there.accel) throw new MigrationPlanError(`host ${source.name} runs QEMU with ${here.accel}, ${destination.name} with ${there.accel}: a VM cannot move between them`, { source: here.accel, destination: there.accel });
  const at = (list: typeof here.files, file: string) => list.find((f) => f.file === file);
  const ids = await contentIdsOfShared(agents, vm.spec.disks, request, (file) => at(here.files, file)?.exists === true && at(there.files, file)?.exists === true);
  for (const file of bootFiles) {
    if (!at(there.files, file)?.exists) throw new MigrationPlanError(`the boot file ${file} of VM "${vm.name}" is not on host ${destination.name}`, { vm: vm.name, file });
  }
  const incoming: IncomingDisk[] = [];
  const mirrors: MigrationPlan['mirrors'] = [];
  const shared: string[] = [];
  const skipped: MigrationPlan['skipped'] = [];
  const disks: VmDisk[] = [];
  let diskBytes = 0;
  for (const disk of vm.spec.disks) {
    const visible = at(there.files, disk.file)?.exists === true;
    if (disk.readOnly) {
      if (!visible) throw new MigrationPlanError(`the read-only disk ${disk.id} (${disk.file}) of VM "${vm.name}" is not on host ${destination.name}`, { vm: vm.name, disk: disk.id, file: disk.file });
      disks.push(disk);
      continue;
    }
    if (request.storage === 'shared' && !visible) throw new MigrationPlanError(`disk ${disk.id} of VM "${vm.name}" (${disk.file}) is not on storage host ${destination.name} sees (storage: shared)`, { vm: vm.name, disk: disk.id, file: disk.file });
    if (visible && request.storage !== 'copy') {
      shared.push(disk.id);
      disks.push(disk);
      continue;
    }
    // (Under the same names only inside the datastore asked, when one is: `vm move --datastore`.)
    const inAskedDatastore = (b: string) => !request.bases?.datastoreId || b.startsWith(`ds.${request.bases.datastoreId}:`);
    const sameFiles = disk.backing.length > 0 && disk.backing.every((b) => inAskedDatastore(b) && ids.has(b) && ids.get(b)?.source === ids.get(b)?.destination);
    // The same bases under the same names, or (seeded ahead, e.g. `disk seed`) the whole chain under other names there.
    const held = sameFiles ? disk.backing.map((b) => ({ file: b, format: 'qcow2' as const })) : await heldChain(agents, disk, contentIds, request.bases);
    const basesThere = held !== null;
    // The copy lives in the VM's folder at the destination under the same name.
    const file = disk.file.startsWith('home:') ? disk.file : makeLocator({ kind: 'home' }, 'vms', vm.id, `${disk.id}.${disk.format}`);
    const top = at(here.files, disk.file);
    const sizeBytes = top?.virtualSize ?? 0;
    if (!sizeBytes) throw new MigrationPlanError(`disk ${disk.id} of VM "${vm.name}" (${disk.file}) cannot be read on host ${source.name}`, { vm: vm.name, disk: disk.id });
    const baseBytes = disk.backing.reduce((s, b) => s + (at(here.files, b)?.allocatedBytes ?? 0), 0);
    diskBytes += (top?.allocatedBytes ?? 0) + (basesThere ? 0 : baseBytes);
    if (held) skipped.push({ disk: disk.id, bases: disk.backing, destinationBases: held.map((b) => b.file), bytes: baseBytes });
    incoming.push({ id: disk.id, file, format: disk.format, sizeBytes, backing: held ?? [] });
    mirrors.push({ node: disk.id, sync: basesThere ? 'top' : 'full' });
    disks.push({ ...disk, file, owned: true, backing: (held ?? []).map((b) => b.file) });
  }
  const memoryBytes = guestMemoryBytes(vm.spec);
  if (there.memoryFreeBytes < memoryBytes) throw new OffshootError('NO_SPACE', `host ${destination.name} has ${Math.floor(there.memoryFreeBytes / 2 ** 20)} MiB free for guest memory; VM "${vm.name}" needs ${vm.spec.memoryMiB} MiB`, { needed: memoryBytes, free: there.memoryFreeBytes, where: 'memory' }, 507);
  if (there.diskFreeBytes < diskBytes) throw new OffshootError('NO_SPACE', `host ${destination.name} has ${there.diskFreeBytes} bytes free; the disks of VM "${vm.name}" need ${diskBytes}`, { needed: diskBytes, free: there.diskFreeBytes, where: 'disk' }, 507);
  return { source, destination, sourceAddress, destinationAddress, slotsInUse: [...here.slotsInUse, ...there.slotsInUse], incoming, mirrors, shared, skipped, destinationSpec: { ...vm.spec, disks }, diskBytes };
}
