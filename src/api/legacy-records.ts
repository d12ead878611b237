// Records written before hosts existed (an inventory from an earlier
// Offshoot): VMs, checkpoints and datastores with no host, and files named by
// host path instead of by reference. They all lived on this machine, so the
// daemon makes them its own host's at start: host ids filled in, datastores
// given ids and registered with this host's agent, every path turned into a
// reference by the agent (which refuses a path outside the places it may
// use). Idempotent: an upgraded record is left alone.
import type { Logger } from '../common/index.ts';
import type { AgentService } from '../agent/index.ts';
import type { Locator, VmSpec } from '../protocol/index.ts';
import type { CheckpointRecord, CopyJobRecord, DiskRecord, Inventory, PoolRecord, StorageInventory, VmRecord } from '../vm/index.ts';
import { newDatastoreId } from '../vm/index.ts';

interface LegacyDisk {
  id: string;
  path?: string;
  file?: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  owned: boolean;
  backing: string[];
}

function isLegacySpec(spec: VmSpec): boolean {
  const boot = spec.boot as { kind: string; kernel?: string };
  return spec.disks.some((d) => (d as LegacyDisk).file === undefined) || (boot.kind === 'kernel' && typeof boot.kernel === 'string' && boot.kernel.startsWith('/'));
}

export async function upgradeLegacyRecords(deps: { inventory: Inventory; storageInventory: StorageInventory; hostId: string; service: AgentService; logger: Logger }): Promise<number> {
  const { inventory, storageInventory, hostId, service, logger } = deps;
  const locate = (path: string): Locator => (path.startsWith('/') ? service.locations.locator(path) : path);
  const spec = (s: VmSpec): VmSpec => {
    if (!isLegacySpec(s)) return s;
    const boot = s.boot as { kind: 'kernel'; kernel: string; initrd?: string; cmdline: string } | { kind: 'disk' };
    return {
      ...s,
      boot: boot.kind === 'kernel' ? { kind: 'kernel', kernel: locate(boot.kernel), ...(boot.initrd ? { initrd: locate(boot.initrd) } : {}), cmdline: boot.cmdline } : { kind: 'disk' },
      disks: (s.disks as LegacyDisk[]).map((d) => ({ id: d.id, file: d.file ?? locate(d.path as string), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map(locate) })),
    };
  };
  let upgraded = 0;
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
      upgraded++;
    } catch (err) {
      logger.warn({ what, err: (err as Error).message }, 'cannot upgrade a record from before hosts; it is left as it was');
    }
  };

  for (const ds of await storageInventory.listDatastores()) {
    if (ds.hosts.some((h) => h.hostId)) continue;
    const path = ds.hosts[0]?.path ?? '';
    await attempt(`datastore ${ds.name}`, async () => {
      const id = newDatastoreId();
      const { hostPath } = await service.endpoint.dispatch('registerDatastore', { datastoreId: id, name: ds.name, hostPath: path }, { epoch: service.current() }) as { hostPath: string };
      await storageInventory.updateDatastore(ds.name, { id, hosts: [{ hostId, path: hostPath }] });
    });
  }
  for (const disk of await storageInventory.listDisks()) {
    if (!disk.file.startsWith('/')) continue;
    await attempt(`disk ${disk.datastore}/${disk.name}`, async () => {
      await storageInventory.updateDisk(disk.id, { file: locate(disk.file) } as Partial<DiskRecord>);
    });
  }
  for (const vm of await inventory.listVms()) {
    if (vm.hostId && !isLegacySpec(vm.spec)) continue;
    await attempt(`VM ${vm.name}`, async () => {
      await inventory.updateVm(vm.id, { hostId: vm.hostId || hostId, spec: spec(vm.spec) } as Partial<VmRecord>);
    });
  }
  for (const c of await inventory.listCheckpoints()) {
    if (c.hostId && !c.file.startsWith('/') && !isLegacySpec(c.spec)) continue;
    await attempt(`checkpoint ${c.name}`, async () => {
      await inventory.updateCheckpoint(c.id, { hostId: c.hostId || hostId, file: locate(c.file), spec: spec(c.spec) } as Partial<CheckpointRecord>);
    });
  }
  for (const job of await storageInventory.listCopyJobs()) {
    if (job.hostId && !job.files.some((f) => f.source.startsWith('/') || f.target.startsWith('/'))) continue;
    await attempt(`copy job ${job.id}`, async () => {
      const files = job.files.map((f) => ({ source: locate(f.source), target: locate(f.target), ...(f.disk ? { disk: { ...f.disk, file: f.disk.file ?? locate((f.disk as unknown as { path: string }).path) } } : {}) }));
      await storageInventory.updateCopyJob(job.id, { hostId: job.hostId || hostId, history: job.history ?? [], files } as Partial<CopyJobRecord>);
    });
  }
  for (const pool of await storageInventory.listPools()) {
    if (pool.hostId) continue;
    await attempt(`pool ${pool.name}`, async () => {
      const disk = (d: DiskRecord): DiskRecord => ({ ...d, file: d.file ?? locate((d as unknown as { path: string }).path) });
      await storageInventory.updatePool(pool.id, { hostId, sourceFiles: pool.sourceFiles.map((s) => ({ ...s, chain: s.chain.map(disk) })), slots: pool.slots.map((s) => ({ ...s, disks: s.disks.map(disk) })) } as Partial<PoolRecord>);
    });
  }
  if (upgraded) logger.info({ upgraded }, 'records from before hosts now belong to this host and name their files by reference');
  return upgraded;
}
