// The agent's handlers of the migration calls (protocol/calls-migration.ts),
// spread into AgentService.handlers(): file references become host paths
// here (Locations), and the work goes to the local agent's migration parts
// (paths.ts, incoming.ts, outgoing.ts).
import { stat, statfs } from 'node:fs/promises';
import { freemem } from 'node:os';
import type { AgentHandlers, MIGRATION_CALLS, OperationContext, VmRuntime, VmSpec } from '../../protocol/index.ts';
import { qemuVersion } from '../../qemu/index.ts';
import { readQcow2Header } from '../../storage/index.ts';
import type { LocalHostAgent } from '../local-agent.ts';
import type { LocalStorageAgent } from '../local-storage-agent.ts';
import type { Locations } from '../locations.ts';
import { installDefaultGuest } from '../prepare-vm.ts';
import type * as Host from '../types.ts';

export interface MigrationHandlerDeps {
  host: LocalHostAgent;
  storage: LocalStorageAgent;
  locations: Locations;
  specIn(spec: VmSpec): Host.VmSpec;
  runtimeOut(runtime: Host.VmRuntime): VmRuntime;
}

type MigrationHandlers = Pick<AgentHandlers, keyof typeof MIGRATION_CALLS>;

async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path).catch(() => undefined);
  return s ? s.bavail * s.bsize : 0;
}

export function migrationHandlers(deps: MigrationHandlerDeps): MigrationHandlers {
  const { host, storage, locations: L } = deps;
  return {
    migrationProbe: async (r) => {
      if (r.installDefaultGuest) await installDefaultGuest(host.layout);
      const { managementAddress, slotsInUse } = await host.migrationPaths.probe(r.peer);
      // The files at once.
      const files = await Promise.all(
        r.files.map(async (f) => {
          let path: string | null = null;
          try {
            path = L.path(f.file);
          } catch {
            path = null; // a datastore this host does not see
          }
          const info = path ? await stat(path).catch(() => null) : null;
          if (!path || !info?.isFile()) return { file: f.file, exists: false, contentId: null, virtualSize: null, allocatedBytes: null };
          // Sizes read here, no qemu-img (a process each was most of a probe's time): a qcow2's virtual size from its
          // header, a raw file's is its length; allocated: the blocks the host gave the file (qemu-img's actual-size).
          const virtualSize = f.sizes ? await readQcow2Header(path).then((h) => h.virtualSize, () => info.size) : null;
          return { file: f.file, exists: true, contentId: f.contentId ? await storage.baseContentId(path) : null, virtualSize, allocatedBytes: f.sizes ? info.blocks * 512 : null };
        }),
      );
      const { accel } = await host.accelerator();
      return {
        managementAddress,
        slotsInUse,
        accel,
        qemuVersion: await qemuVersion(),
        memoryFreeBytes: Math.min(freemem(), await freeBytes(host.layout.memoryDir)),
        diskFreeBytes: await freeBytes(host.layout.home),
        files,
      };
    },
    openPath: async (r) => {
      const { credential: _secretless, ...end } = await host.migrationPaths.open(r.plan, r.role, r.pskKey);
      return end;
    },
    closePath: (r) => host.migrationPaths.close(r.operationId),
    pathCounters: (r) => host.migrationPaths.counters(r.operationId),
    prepareIncoming: async (r, ctx: OperationContext) => {
      ctx.progress(0.1, 'creating the target disks and a QEMU waiting for the migration');
      const prepared = await host.incoming.prepare({
        vmId: r.vmId,
        name: r.name,
        spec: deps.specIn(r.spec),
        disks: r.disks.map((d) => ({ id: d.id, path: L.path(d.file), format: d.format, sizeBytes: d.sizeBytes, backing: d.backing.map((b) => ({ path: L.path(b.file), format: b.format })) })),
        pathId: r.pathId,
        postcopy: r.postcopy,
        multifdChannels: r.multifdChannels,
        tls: r.tls,
        resume: r.resume,
        holdAfter: r.holdAfter,
      });
      return { ...prepared, runtime: deps.runtimeOut(prepared.runtime) };
    },
    awaitIncoming: async (r, ctx) => {
      ctx.progress(0.1, 'waiting for the migration to complete');
      const outcome = await host.incoming.await(r.vmId, ctx.signal);
      return { ...outcome, runtime: deps.runtimeOut(outcome.runtime) };
    },
    abortIncoming: async (r) => ({ removed: await host.incoming.abort(r.vmId) }),
    migrateOut: (r, ctx) => host.outgoing.run(r, { signal: ctx.signal, progress: (fraction, message, data) => ctx.progress(fraction, message, { ...data }) }),
    setMigrationSpeed: async (r) => {
      await host.outgoing.setSpeed(r.vmId, r.maxBandwidthBytesPerSecond);
      return {};
    },
    continueMigration: async (r) => {
      host.outgoing.continue(r.vmId);
      return {};
    },
    abortOutgoing: async (r) => ({ status: await host.outgoing.abort(r.vmId, r.resume) }),
    finishOutgoing: async (r) => {
      await host.finishOutgoing(r.vmId);
      return {};
    },
    migrationState: (r) => host.migrationState(r.vmId),
  };
}
