// This host's side of the agent protocol: every call of protocol/calls.ts,
// served by the local agents (LocalHostAgent: QEMU, memory, fork and
// checkpoints; LocalStorageAgent: disk files and block jobs). It is the
// boundary where references become host paths and back (locations.ts), where
// long calls become operations (progress and cancel), and where QEMU exits
// become events in the host's event log. Nothing but plain data leaves it.
// The same service answers in process (the controller's own host) and over
// HTTP (`offshoot agent serve`).
import { randomUUID } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { freemem, hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import { OffshootError, parseJsonOr, silentLogger, writeFileAtomic } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { AGENT_CAPABILITIES, AgentEndpoint, EventLog, OperationTable, PROTOCOL_VERSION } from '../protocol/index.ts';
import type { AgentHandlers, CallResult, EpochKeeper, Locator, OperationContext, VmDisk, VmRuntime, VmSpec } from '../protocol/index.ts';
import { CHECKPOINT_METADATA_SCHEMA, hostSpecOf, protocolSpecOf, readCheckpointMetadata } from './checkpoint-meta.ts';
import { fabricHandlers } from './fabric-handlers.ts';
import type { LocalHostAgent } from './local-agent.ts';
import type { LocalStorageAgent } from './local-storage-agent.ts';
import { Locations } from './locations.ts';
import { groupHandlers } from './live-migration/group-handlers.ts';
import { migrationHandlers } from './live-migration/handlers.ts';
import { MobilityHandlers } from './mobility-handlers.ts';
import type * as Host from './types.ts';

/** What the agent keeps about itself across restarts (<home>/agent.json). */
interface AgentState {
  hostId: string | null;
  epoch: number;
}

export const AGENT_VERSION = '0.2.0';

export interface AgentServiceOptions {
  host: LocalHostAgent;
  storage: LocalStorageAgent;
  logger?: Logger;
}

export class AgentService implements EpochKeeper {
  readonly locations: Locations;
  readonly endpoint: AgentEndpoint;
  readonly events = new EventLog();
  private readonly host: LocalHostAgent;
  private readonly storage: LocalStorageAgent;
  private readonly logger: Logger;
  private readonly stateFile: string;
  private state: AgentState = { hostId: null, epoch: 0 };
  /** Changes every time this process starts. */
  readonly instance = randomUUID();
  private unsubscribe: (() => void) | undefined;
  /** Copies between hosts and content ids (mobility-handlers.ts). */
  private readonly mobility: MobilityHandlers;

  constructor(options: AgentServiceOptions) {
    this.host = options.host;
    this.storage = options.storage;
    this.logger = options.logger ?? silentLogger;
    this.locations = new Locations(this.host.layout.home, this.host.policy);
    this.stateFile = join(this.host.layout.home, 'agent.json');
    this.mobility = new MobilityHandlers(this.host.layout, this.locations, this.storage);
    this.endpoint = new AgentEndpoint(this.handlers(), this, { operations: new OperationTable(join(this.host.layout.home, 'operations')) });
  }

  /** Loads what the agent remembers, marks operations a previous process left as interrupted, and starts reporting QEMU exits. */
  async start(): Promise<void> {
    this.state = { ...this.state, ...parseJsonOr<Partial<AgentState>>(await readFile(this.stateFile, 'utf8').catch(() => '{}'), {}) };
    await this.locations.load();
    const interrupted = await this.endpoint.operations.recover();
    if (interrupted.length) this.logger.warn({ operations: interrupted }, 'operations interrupted by the restart of this agent');
    this.unsubscribe = this.host.onVmExit((e) => this.events.append({ type: 'vm.exit', vmId: e.vmId, instance: e.instance, clean: e.clean, reason: e.reason, at: new Date().toISOString() }));
  }

  current(): number {
    return this.state.epoch;
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    await this.mobility.close();
  }

  private async saveState(): Promise<void> {
    await writeFileAtomic(this.stateFile, `${JSON.stringify(this.state, null, 2)}\n`);
  }

  // References <-> the local agents' path-based types.

  private diskIn(d: VmDisk): Host.VmDisk {
    return { id: d.id, path: this.locations.path(d.file), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map((b) => this.locations.path(b)) };
  }

  private diskOut(d: Host.VmDisk): VmDisk {
    return { id: d.id, file: this.locations.locator(d.path), format: d.format, readOnly: d.readOnly, owned: d.owned, backing: d.backing.map((b) => this.locations.locator(b)) };
  }

  specIn(spec: VmSpec): Host.VmSpec {
    return hostSpecOf(this.locations, spec);
  }

  specOut(spec: Host.VmSpec): VmSpec {
    return protocolSpecOf(this.locations, spec);
  }

  private runtimeOut(r: Host.VmRuntime): VmRuntime {
    return { hostId: this.state.hostId ?? r.hostId, pid: r.pid, accel: r.accel, instance: r.instance, memory: { mode: r.memory.mode, templateId: r.memory.templateId }, startedAt: r.startedAt };
  }

  private runtimeIn(vmId: string, r: VmRuntime): Host.VmRuntime {
    const files = this.host.layout.vmFiles(vmId, r.instance);
    const file = r.memory.mode === 'owned' ? files.memoryFile : this.host.templatePath(r.memory.templateId ?? '');
    return { hostId: r.hostId, pid: r.pid, accel: r.accel, dir: files.dir, instance: r.instance, memory: { mode: r.memory.mode, file, templateId: r.memory.templateId }, startedAt: r.startedAt };
  }

  private forkDisksOut(d: Host.ForkDisksResult): CallResult<'prepareFork'>['disks'] {
    return {
      source: d.source.map((x) => this.diskOut(x)),
      children: Object.fromEntries(Object.entries(d.children).map(([id, disks]) => [id, disks.map((x) => this.diskOut(x))])),
      frozen: d.frozen.map((f) => ({ from: this.locations.locator(f.from), to: this.locations.locator(f.to) })),
      streams: d.streams.map((s) => ({ vmId: s.vmId, diskId: s.diskId, base: this.locations.locator(s.base) })),
    };
  }

  private forkDisksIn(d: CallResult<'prepareFork'>['disks']): Host.ForkDisksResult {
    return {
      source: d.source.map((x) => this.diskIn(x)),
      children: Object.fromEntries(Object.entries(d.children).map(([id, disks]) => [id, disks.map((x) => this.diskIn(x))])),
      frozen: d.frozen.map((f) => ({ from: this.locations.path(f.from), to: this.locations.path(f.to) })),
      streams: d.streams.map((s) => ({ vmId: s.vmId, diskId: s.diskId, base: this.locations.path(s.base) })),
    };
  }

  private async hostInfo(): Promise<CallResult<'hostInfo'>> {
    const info = await this.host.hostInfo();
    const templates = await this.host.templateBytes();
    return {
      hostId: this.state.hostId ?? info.hostId,
      hostname: hostname(),
      protocolVersion: PROTOCOL_VERSION,
      capabilities: [...AGENT_CAPABILITIES],
      agentVersion: AGENT_VERSION,
      agentInstance: this.instance,
      epoch: this.state.epoch,
      accel: info.accel,
      accelReason: info.accelReason,
      qemuVersion: info.qemuVersion,
      memory: { totalBytes: totalmem(), freeBytes: freemem(), templatesBytes: templates },
      confinement: { user: info.confinement.user, sandbox: info.confinement.sandbox, reason: info.confinement.reasons.length ? info.confinement.reasons.join('; ') : null },
      vms: await this.host.runningVms(),
    };
  }

  private handlers(): AgentHandlers {
    const host = this.host;
    const storage = this.storage;
    const L = this.locations;
    const progressOf = (ctx: OperationContext, label: string) => (done: number, total: number) => ctx.progress(total ? done / total : 0, `${label}: ${done} of ${total}`, { done, total });
    return {
      hostInfo: () => this.hostInfo(),
      attach: async (r) => {
        if (r.epoch > this.state.epoch || this.state.hostId !== r.hostId) {
          this.state = { hostId: r.hostId, epoch: Math.max(r.epoch, this.state.epoch) };
          await this.saveState();
          this.logger.info({ hostId: r.hostId, epoch: this.state.epoch }, 'attached to a control plane');
        }
        return this.hostInfo();
      },
      events: (r) => this.events.since(r.afterSeq, r.waitMs),

      prepareVm: async (r) => {
        const boot: Host.PrepareVmRequest['boot'] =
          r.boot.kind === 'default-guest'
            ? { kind: 'default-guest' }
            : r.boot.kind === 'kernel'
              ? { kind: 'kernel', kernel: await L.source('kernel.path', r.boot.kernel), ...(r.boot.initrd ? { initrd: await L.source('kernel.initrd', r.boot.initrd) } : {}), ...(r.boot.cmdline !== undefined ? { cmdline: r.boot.cmdline } : {}) }
              : { kind: 'disk', path: await L.source('bootDisk', r.boot.disk) };
        const disks = await Promise.all(r.disks.map(async (d, i) => ({ path: await L.source(`disks.${i}.path`, d.source), readOnly: d.readOnly })));
        const spec = await host.prepareVm(r.vmId, { name: r.name, vcpus: r.vcpus, memoryMiB: r.memoryMiB, boot, disks, network: r.network, ...(r.guestAgent !== undefined ? { guestAgent: r.guestAgent } : {}) });
        return this.specOut(spec);
      },
      startVm: async (r, ctx) => {
        ctx.progress(0.1, 'starting QEMU');
        return this.runtimeOut(await host.startVm(r.vmId, r.name, this.specIn(r.spec)));
      },
      waitForGuestAgent: async (r, ctx) => {
        ctx.progress(0.1, 'waiting for the guest agent');
        await abortable(ctx, host.waitForGuestAgent(r.vmId, r.timeoutMs));
        return {};
      },
      adoptVm: async (r) => ({ status: (await host.adoptVm(r.vmId, this.runtimeIn(r.vmId, r.runtime))) ?? null }),
      vmStatus: async (r) => ({ status: (await host.vmStatus(r.vmId)) ?? null }),
      pauseVm: async (r) => {
        await host.pauseVm(r.vmId);
        return {};
      },
      resumeVm: async (r) => {
        await host.resumeVm(r.vmId);
        return {};
      },
      stopVm: async (r, ctx) => {
        ctx.progress(0.1, 'waiting for the guest to power off');
        return host.stopVm(r.vmId, r.timeoutMs);
      },
      killVm: async (r) => {
        await host.killVm(r.vmId);
        return {};
      },
      killStray: async (r) => ({ killed: await host.killStray(r.vmId, this.runtimeIn(r.vmId, r.runtime)) }),
      deleteVmFiles: async (r) => {
        await host.deleteVmFiles(r.vmId);
        return {};
      },
      exec: (r) => host.exec(r.vmId, { path: r.path, args: r.args, ...(r.input !== undefined ? { input: r.input } : {}), ...(r.env ? { env: r.env } : {}), ...(r.timeoutMs ? { timeoutMs: r.timeoutMs } : {}) }),
      readConsole: async (r) => ({ text: await host.readConsole(r.vmId, r.maxBytes) }),
      memoryStats: (r) => host.memoryStats(r.vmId),
      customize: (r) => host.customize(r.vmId, r.identity),
      reapOrphans: (r) => host.reapOrphans(new Set(r.live), new Set(r.known)),
      releaseUnused: async (r) => {
        const templates = await host.releaseTemplates(new Set(r.templates));
        const inUse = new Set<string>();
        for (const f of r.files) {
          try {
            inUse.add(L.path(f));
          } catch {
            // A reference this host cannot resolve names nothing here.
          }
        }
        const files = await host.releaseBases(inUse);
        return { templates, files: files.map((f) => L.locator(f)) };
      },

      startOwnedTarget: async (r, ctx) => {
        ctx.progress(0.1, 'starting a QEMU with a RAM file of its own');
        return this.runtimeOut(await host.startOwnedTarget(r.vmId, r.name, this.specIn(r.spec)));
      },
      migrateToOwnedTarget: async (r, ctx) => {
        ctx.progress(0.1, 'copying the memory into a file of its own');
        return host.migrateToOwnedTarget(r.vmId);
      },
      switchToOwnedTarget: async (r) => this.runtimeOut(await host.switchToOwnedTarget(r.vmId)),
      abortOwnedTarget: async (r) => {
        await host.abortOwnedTarget(r.vmId);
        return {};
      },
      prepareFork: async (r, ctx) => {
        ctx.progress(0.1, `preparing ${r.children.length} children`);
        const prepared = await host.prepareFork({
          forkId: r.forkId,
          source: { vmId: r.source.vmId, name: r.source.name, spec: this.specIn(r.source.spec) },
          children: r.children.map((c) => ({ vmId: c.vmId, name: c.name, spec: this.specIn(c.spec) })),
          maxDepth: r.maxDepth,
        });
        return { forkId: prepared.forkId, templateId: prepared.templateId, disks: this.forkDisksOut(prepared.disks), incoming: Object.fromEntries(Object.entries(prepared.incoming).map(([id, rt]) => [id, this.runtimeOut(rt)])) };
      },
      switchFork: async (r) => {
        const sw = await host.switchFork(r.forkId);
        return { ...sw, runtime: this.runtimeOut(sw.runtime) };
      },
      completeForkChild: async (r) => this.runtimeOut(await host.completeForkChild(r.forkId, r.childId)),
      abortFork: async (r) => {
        await host.abortFork(r.forkId);
        return {};
      },
      finishFork: async (r) => {
        await host.finishFork(r.forkId);
        return {};
      },
      undoForkDisks: async (r) => {
        await host.undoForkDisks({ sourceId: r.sourceId, sourceDisks: r.sourceDisks.map((d) => this.diskIn(d)), childIds: r.childIds, maxDepth: 0 }, this.forkDisksIn(r.result));
        return {};
      },
      undoForkRenames: async (r) => ({ moved: await host.undoForkRenames(r.forkId) }),
      removeForkFiles: async (r) => {
        await host.removeOperationFiles(r.forkId);
        return {};
      },
      streamDisk: async (r, ctx) => {
        ctx.progress(0.1, `flattening disk ${r.diskId}`);
        await host.streamDisk(r.vmId, r.diskId, L.path(r.base));
        return {};
      },

      planCheckpointFile: async (r) => {
        const path = await host.checkpointTarget(r.name, r.hostPath);
        return { file: L.locator(path), hostPath: path };
      },
      writeCheckpoint: async (r, ctx) => {
        const metadata = { ...r.metadata, schema: CHECKPOINT_METADATA_SCHEMA, checkpointId: r.checkpointId };
        const onAbort = () => void host.cancelCheckpointWrite(r.forkId);
        ctx.signal.addEventListener('abort', onAbort, { once: true });
        try {
          return await host.writeCheckpoint(r.forkId, r.checkpointId, L.path(r.file), r.memoryBytes, metadata, (p) => ctx.progress(p.blockCount ? p.blocksDone / p.blockCount : 0, `written ${p.blocksDone} of ${p.blockCount} MiB`, { blocksDone: p.blocksDone, blockCount: p.blockCount, bytesWritten: p.bytesWritten }));
        } finally {
          ctx.signal.removeEventListener('abort', onAbort);
        }
      },
      inspectCheckpoint: async (r) => {
        const path = 'file' in r.source ? L.path(r.source.file) : r.source.hostPath;
        const inspected = await host.inspectCheckpoint(path, (raw) => readCheckpointMetadata(L, path, raw, this.state.hostId ?? ''), (spec) => this.specIn(spec));
        return { file: L.locator(path), hostPath: path, memoryBytes: inspected.memoryBytes, fileBytes: inspected.fileBytes, metadata: inspected.metadata as CallResult<'inspectCheckpoint'>['metadata'] };
      },
      removeCheckpoint: async (r) => {
        let path: string;
        try {
          path = L.path(r.file);
        } catch {
          return { removed: false };
        }
        return { removed: await host.removeCheckpointFile({ path, id: r.checkpointId, createdAt: r.createdAt }) };
      },
      restoreVm: async (r, ctx) => {
        ctx.progress(0.1, r.mode === 'lazy' ? 'starting the VM before its memory' : 'loading the memory');
        const restored = await host.restoreVm(r.vmId, r.name, L.path(r.checkpoint), this.specIn(r.spec), r.mode);
        let streamOperationId: string | null = null;
        if (r.mode === 'lazy') {
          streamOperationId = r.streamOperationId ?? randomUUID();
          await this.endpoint.operations.start('restoreStream', streamOperationId, (stream) => this.followStream(r.vmId, stream));
        }
        return { runtime: this.runtimeOut(restored.runtime), spec: this.specOut(restored.spec), streamOperationId };
      },

      restoreStream: (r, ctx) => this.followStream(r.vmId, ctx),

      registerDatastore: async (r) => {
        const known = L.listDatastores().find((d) => d.id === r.datastoreId);
        if (known) return { hostPath: known.path };
        const { path } = r.hostPath ? await storage.initDatastore(r.hostPath, r.name) : await storage.initDefaultDatastore(r.name);
        await L.addDatastore({ id: r.datastoreId, name: r.name, path });
        return { hostPath: path };
      },
      forgetDatastore: async (r) => {
        const ds = L.listDatastores().find((d) => d.id === r.datastoreId);
        if (!ds) return {};
        await storage.forgetDatastore(ds.path);
        await L.removeDatastore(r.datastoreId);
        return {};
      },
      datastoreUsage: async (r) => {
        const u = await storage.datastoreUsage(L.datastore(r.datastoreId).path);
        return { capacityBytes: u.capacityBytes, freeBytes: u.freeBytes, usedBytes: u.usedBytes, disks: u.diskCount };
      },
      scanDatastore: async (r) => {
        const scanned = await storage.scanDatastore(L.datastore(r.datastoreId).path);
        return { disks: scanned.disks.map((d) => ({ file: L.locator(d.path), meta: d.meta })), problems: scanned.problems.map((p) => ({ file: p.path, reason: p.reason })) };
      },
      createDisk: async (r) => {
        const path = join(L.datastore(r.datastoreId).path, 'disks', `${r.diskId}.${r.format}`);
        await storage.createDisk(path, r.format, r.sizeBytes);
        return { file: L.locator(path) };
      },
      importDisk: async (r, ctx) => {
        ctx.progress(0.1, `importing ${r.source}`);
        const path = join(L.datastore(r.datastoreId).path, 'disks', `${r.diskId}.${r.format}`);
        const imported = await storage.importDisk(r.source, path, r.format);
        return { file: L.locator(path), ...imported };
      },
      resizeDisk: async (r) => {
        await storage.resizeDisk(L.path(r.file), r.sizeBytes);
        return {};
      },
      diskChain: async (r) => ({ chain: (await storage.diskChain(L.path(r.file))).map((e) => ({ file: this.tryLocator(e.path), format: e.format, virtualSize: e.virtualSize, actualSize: e.actualSize })) }),
      writeDiskMeta: async (r) => {
        await storage.writeDiskMeta(L.path(r.file), r.meta);
        return {};
      },
      removeDisk: async (r) => {
        await storage.removeDisk(L.path(r.file));
        return {};
      },
      hashDisk: async (r, ctx) => {
        ctx.progress(0.1, 'hashing');
        return { hash: await storage.hashDisk(L.path(r.file)) };
      },
      contentId: async (r) => ({ contentId: await storage.baseContentId(L.path(r.file)) }),
      freezeDisks: async (r) => {
        const result = await storage.freezeDisks(r.vmId, r.disks.map((d) => this.diskIn(d)), r.running);
        return {
          disks: result.disks.map((d) => this.diskOut(d)),
          frozen: result.frozen.map((f) => ({ ...f, chain: f.chain.map((c) => L.locator(c)) })),
          moves: result.moves.map((m) => ({ from: L.locator(m.from), to: L.locator(m.to) })),
          deltas: result.deltas.map((d) => L.locator(d)),
        };
      },
      undoFreeze: async (r) => {
        await storage.undoFreeze({
          disks: r.result.disks.map((d) => this.diskIn(d)),
          frozen: r.result.frozen.map((f) => ({ ...f, chain: f.chain.map((c) => L.path(c)) })),
          moves: r.result.moves.map((m) => ({ from: L.path(m.from), to: L.path(m.to) })),
          deltas: r.result.deltas.map((d) => L.path(d)),
        });
        return {};
      },
      createDelta: async (r) => {
        const path = join(host.layout.vmDir(r.vmId), `${r.diskId}.qcow2`);
        await storage.createDelta(path, { path: L.path(r.backing.file), format: r.backing.format });
        return { file: L.locator(path) };
      },
      relinkDisk: async (r) => {
        const path = L.path(r.file);
        // A copied chain sits in one folder: its files name each other by file name (relative), so the set can move together.
        const backing = r.backing ? { path: relativeIfSibling(path, L.path(r.backing.file)), format: r.backing.format } : null;
        await storage.relinkDisk(path, backing);
        return {};
      },
      takePoolSlot: async (r) => {
        const root = L.datastore(r.datastoreId).path;
        for (const move of r.disks) {
          const from = this.inDatastore(r.datastoreId, move.from, `pools/${r.poolId}/${r.slotId}/`);
          const to = this.inDatastore(r.datastoreId, move.to, 'disks/');
          await storage.moveFile(from, to);
        }
        await storage.removeFolder(join(root, 'pools', r.poolId, r.slotId));
        return {};
      },
      removePoolSlot: async (r) => {
        await storage.removeFolder(join(L.datastore(r.datastoreId).path, 'pools', r.poolId, r.slotId));
        return {};
      },
      copyFile: async (r, ctx) => {
        const result = await storage.runCopy({ source: L.path(r.source), target: L.path(r.target), ...(r.chunkMiB ? { chunkMiB: r.chunkMiB } : {}), ...(r.maxMiBPerSecond ? { maxMiBPerSecond: r.maxMiBPerSecond } : {}) }, (p) => ctx.progress(p.bytesTotal ? p.bytesDone / p.bytesTotal : 0, `copied ${p.chunksDone} of ${p.chunksTotal} chunks`, { ...p }), ctx.signal);
        return { state: result.state, contentHash: result.contentHash, chunksCopied: result.chunksCopied, chunksSkipped: result.chunksSkipped, bytesCopied: result.bytesCopied, elapsedMs: result.elapsedMs };
      },
      discardCopy: async (r) => {
        await storage.cancelCopy(L.path(r.target));
        return {};
      },
      streamWholeChain: async (r, ctx) => {
        await storage.streamWholeChain(r.vmId, r.diskId, (p) => progressOf(ctx, `streaming disk ${r.diskId}`)(p.offset, p.length));
        return {};
      },
      ...fabricHandlers({ templates: host.fabric, locations: L, specIn: (s) => this.specIn(s), specOut: (s) => this.specOut(s), runtimeOut: (rt) => this.runtimeOut(rt) }),
      ...migrationHandlers({ host, storage, locations: L, specIn: (s) => this.specIn(s), runtimeOut: (r) => this.runtimeOut(r) }),
      ...groupHandlers({ host, runtimeOut: (r) => this.runtimeOut(r) }),
      ...this.mobility.handlers(),
    };
  }

  private async followStream(vmId: string, ctx: OperationContext): Promise<Record<string, unknown> | null> {
    const result = await this.host.waitForRestoreStream(vmId, (done, count) => ctx.progress(count ? done / count : 0, `memory streamed: ${done} of ${count} blocks`, { blocksDone: done, blockCount: count }));
    return result ? { ...result } : null;
  }

  private tryLocator(path: string): Locator | null {
    try {
      return this.locations.locator(path);
    } catch {
      return null;
    }
  }

  /** A reference that must name a file under `prefix` of one datastore (pool slots and disks only). */
  private inDatastore(datastoreId: string, locator: Locator, prefix: string): string {
    if (!locator.startsWith(`ds.${datastoreId}:${prefix}`)) throw new OffshootError('INVALID_INPUT', `${locator} is not under ${prefix} of datastore ${datastoreId}`, { locator, datastoreId }, 400);
    return this.locations.path(locator);
  }

  /** Makes the folders the agent keeps its own state in. */
  async ensureFolders(): Promise<void> {
    await mkdir(join(this.host.layout.home, 'operations'), { recursive: true, mode: 0o700 });
  }
}

function relativeIfSibling(path: string, backing: string): string {
  const slash = path.lastIndexOf('/');
  return backing.startsWith(path.slice(0, slash + 1)) && !backing.slice(slash + 1).includes('/') ? backing.slice(slash + 1) : backing;
}

/** Runs `work`, ending early with the cancel's reason when the operation is cancelled. */
async function abortable<T>(ctx: OperationContext, work: Promise<T>): Promise<T> {
  if (ctx.signal.aborted) throw ctx.signal.reason;
  let off: () => void = () => undefined;
  const cancelled = new Promise<never>((_, reject) => {
    const onAbort = () => reject(ctx.signal.reason);
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    off = () => ctx.signal.removeEventListener('abort', onAbort);
  });
  try {
    return await Promise.race([work, cancelled]);
  } finally {
    off();
  }
}

