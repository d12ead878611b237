// The in-process host agent: runs QEMU processes for this host's VMs, keeps
// their QMP and guest-agent connections, re-adopts QEMUs that outlived a
// daemon restart, and reaps QEMUs that no VM owns. The pre-staged fork lives in
// fork-stager.ts; live migrations between hosts in live-migration/ (paths,
// incoming, outgoing). It works with host paths; agent-service.ts serves it through the agent protocol. This is the only
// implementation today.
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readdir, readFile, rename, rm, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { hostname } from 'node:os';
import { OffshootError, isProcessAlive, keepAlive, silentLogger, withTimeout } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { loadDefaultGuest } from '../guest/index.ts';
import type { QemuLaunchSpec, QmpClient } from '../qemu/index.ts';
import { DEFAULT_QEMU_BINARY, DEFAULT_VCPU_NICE, adoptQemu, bootCacheFile, findOffshootQemus, killAndWait, probeAccelerator, qemuVersion, setAutogroupNice, setVcpuNice, spawnQemu } from '../qemu/index.ts';
import { TemplateStore, processMemoryStats } from '../memory/index.ts';
import type { CheckpointMetadata, WriteProgress } from '../memory/index.ts';
import { customizeGuest } from './customize.ts';
import { undoForkDisks, undoRenameLog } from './fork-disks.ts';
import { migrateLocally } from './migration.ts';
import { HostLayout } from './layout.ts';
import { prepareVmFiles } from './prepare-vm.ts';
import { ForkStager } from './fork-stager.ts';
import { HostTemplates } from './fabric-templates.ts';
import type { StagingHost } from './fork-stager.ts';
import { removeOwnCheckpoint, restoreEager, writeCheckpointFile } from './checkpoint-files.ts';
import { PathPolicy, TargetExistsError } from './path-policy.ts';
import { QemuAccess } from './qemu-access.ts';
import { SANDBOX_OPTIONS, kvmGroups, probeConfinement, runAsPrefix } from './confinement.ts';
import type { Confinement } from './confinement.ts';
import { restoreLazy } from './lazy-restore.ts';
import type { LazyRestore, LazyStreamResult } from './lazy-restore.ts';
import { inspectCheckpointFile } from './checkpoint-inspect.ts';
import { RunningVm } from './running-vm.ts';
import { streamDisk } from './live-disk-ops.ts';
import { IncomingMigrations } from './live-migration/incoming.ts';
import { OutgoingMigrations } from './live-migration/outgoing.ts';
import { migrationTimeline } from './live-migration/qmp-steps.ts';
import { MigrationPaths } from './live-migration/paths.ts';
import type { MigrationHost } from './live-migration/host.ts';
import type { CheckpointInspection } from './types.ts';
import type { Accelerator, CustomizeResult, ExecRequest, ExecResult, ForkDisksRequest, ForkDisksResult, ForkSwitch, HostInfo, Identity, PrepareForkRequest, PreparedFork, PrepareVmRequest, VmExitEvent, VmMemory, VmMemoryStats, VmRuntime, VmSpec } from './types.ts';

export interface LocalHostAgentOptions {
  home: string;
  memoryDir?: string;
  /** Folders whose files may be attached as they are (besides the home and the datastores); see path-policy.ts. */
  allowImages?: string[];
  qemuBinary?: string;
  logger?: Logger;
  /** The nice value of its guests' vCPU threads (qemu/vcpu-priority.ts; default DEFAULT_VCPU_NICE, 0: unchanged). */
  vcpuNice?: number;
}

/** Extra guest RAM of a VM prepared on a TCG host: its RAM block is then no multiple of 256 KiB (see qemu/argv.ts). */
export const TCG_MEMORY_EXTRA_KIB = 8;

/** How long closing the agent waits for lazy restore streams before killing their VMs. */
const CLOSE_STREAM_TIMEOUT_MS = 120_000;

/** A destination of a migration younger than this is never reaped as unknown (see reapOrphans). */
const INCOMING_REAP_GRACE_MS = 10_000;

/**
 * How long re-adoption waits for a live QEMU's monitor to greet. Under load (seen at load 30–40) a
 * greeting can take over 5 s; giving up sooner killed running guests. Within the agent call's 60 s.
 * A controller adopts a host's VMs one after another, so each slow monitor delays its start by as much.
 */
const ADOPT_MONITOR_PATIENCE_MS = 30_000;
/** A greeting later than this is logged (the old limit, where such a QEMU used to be killed). */
const ADOPT_MONITOR_SLOW_MS = 5_000;

/** The VM has no QEMU running on this host. HTTP 409. */
export class VmNotRunningError extends OffshootError {
  constructor(vmId: string) {
    super('VM_NOT_RUNNING', `VM ${vmId} has no running QEMU on this host`, { vmId }, 409);
  }
}

/** The guest agent did not answer. HTTP 504. */
export class GuestAgentUnavailableError extends OffshootError {
  constructor(vmId: string, cause: unknown) {
    super('GUEST_AGENT_UNAVAILABLE', `the guest agent of VM ${vmId} did not answer: ${(cause as Error)?.message ?? cause}`, { vmId }, 504, { cause });
  }
}

export class LocalHostAgent {
  readonly hostId: string;
  readonly layout: HostLayout;
  /** Which host files may be used (shared with the storage agent, which registers datastores in it). */
  readonly policy: PathPolicy;
  private readonly vms = new Map<string, RunningVm>();
  private readonly exits = new EventEmitter();
  private readonly logger: Logger;
  private readonly templates: TemplateStore;
  private readonly stager: ForkStager;
  private readonly stagingHost: StagingHost;
  /** Host templates of the elastic fabric (fabric-templates.ts). */
  readonly fabric: HostTemplates;
  private accel: Promise<{ accel: Accelerator; reason: string }> | undefined;
  /** Checkpoint writes in progress, by fork id (so they can be cancelled). */
  private readonly checkpointWrites = new Map<string, AbortController>();
  /** Lazy restores whose background stream is still running, by VM id. */
  private readonly lazyRestores = new Map<string, LazyRestore>();
  /** QEMUs started to make a derived VM's memory its own (fork of a fork), by VM id, until they take over. */
  private readonly ownedTargets = new Map<string, { target: RunningVm; runtime: VmRuntime; wasRunning: boolean; migrated: boolean }>();
  /** Why a VM's QEMU was killed by the agent itself (reported with its exit). */
  private readonly killReasons = new Map<string, string>();
  /** Which files QEMU may open, and as whom it runs (set by prepareHost). */
  private access: QemuAccess;
  /** This host's ends of per-operation data paths, and its incoming and outgoing live migrations. */
  readonly migrationPaths: MigrationPaths;
  readonly incoming: IncomingMigrations;
  readonly outgoing: OutgoingMigrations;
  private confinementState: Confinement = { user: null, confined: false, sandbox: false, lazyRestoreConfined: false, reasons: ['the host has not been prepared (prepareHost)'] };

  constructor(private readonly options: LocalHostAgentOptions) {
    this.hostId = hostname();
    this.layout = new HostLayout(options.home, options.memoryDir);
    this.policy = new PathPolicy(options.home, options.allowImages ?? []);
    this.logger = options.logger ?? silentLogger;
    this.templates = new TemplateStore(this.layout.memoryDir);
    this.access = new QemuAccess(null, this.layout, this.policy);
    this.stagingHost = {
      layout: this.layout,
      access: this.access,
      templates: this.templates,
      logger: this.logger,
      running: (vmId) => this.running(vmId),
      launch: (vmId, name, spec, options) => this.launch(vmId, name, spec, options),
      discard: (vm) => this.discard(vm),
      track: (vm) => this.track(vm),
      untrack: (vmId) => void this.vms.delete(vmId),
    };
    // The stager always sees the current sharing rules (they change once prepareHost has probed the host).
    Object.defineProperty(this.stagingHost, 'access', { get: () => this.access, enumerable: true });
    this.stager = new ForkStager(this.stagingHost);
    // The staging host (its live `access` getter included, through the prototype) plus a fork's artifacts.
    this.fabric = new HostTemplates(Object.assign(Object.create(this.stagingHost) as StagingHost, { forkArtifacts: (forkId: string) => this.stager.artifacts(forkId) }));
    this.migrationPaths = new MigrationPaths(options.home, () => this.access, this.logger);
    const migrationHost: MigrationHost = {
      layout: this.layout,
      access: this.access,
      logger: this.logger,
      paths: this.migrationPaths,
      tracked: (vmId) => this.vms.get(vmId),
      running: (vmId) => this.running(vmId),
      launch: (vmId, name, spec, options) => this.launch(vmId, name, spec, options),
      discard: (vm) => this.discard(vm),
      track: (vm) => this.track(vm),
      untrack: (vmId) => void this.vms.delete(vmId),
    };
    Object.defineProperty(migrationHost, 'access', { get: () => this.access, enumerable: true });
    this.incoming = new IncomingMigrations(migrationHost);
    this.outgoing = new OutgoingMigrations(migrationHost);
  }

  /**
   * At start: finds how QEMU can be confined here (its own user, its seccomp sandbox; see confinement.ts),
   * logs what is missing, and makes the home and the memory folder private (shared with the QEMU user
   * as it needs; see qemu-access.ts).
   */
  async prepareHost(): Promise<Confinement> {
    const confinement = await probeConfinement({ folders: [this.layout.home, this.layout.memoryDir], binary: this.options.qemuBinary ?? DEFAULT_QEMU_BINARY });
    this.confinementState = confinement;
    this.access = new QemuAccess(confinement.user, this.layout, this.policy);
    await this.access.prepareHome();
    // Migrations of a previous agent process ended with it: their paths (links, keys) go.
    await this.migrationPaths.reapAll().catch((err: unknown) => this.logger.warn({ err }, 'cannot remove the data paths of a previous agent'));
    const summary = { user: confinement.user?.name ?? null, confined: confinement.confined, sandbox: confinement.sandbox, lazyRestoreConfined: confinement.lazyRestoreConfined };
    if (confinement.reasons.length > 0) this.logger.warn({ ...summary, reasons: confinement.reasons }, 'QEMU is not fully confined on this host');
    else this.logger.info(summary, 'QEMU runs confined');
    return confinement;
  }

  confinement(): Confinement {
    return this.confinementState;
  }

  /** The accelerator, probed once (and cached on disk across restarts) by a real trial boot. */
  accelerator(): Promise<{ accel: Accelerator; reason: string }> {
    this.accel ??= (async () => {
      const guest = await loadDefaultGuest();
      const result = await probeAccelerator({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, binary: this.options.qemuBinary, cacheFile: this.layout.accelCacheFile, bootCacheFile: bootCacheFile() });
      this.logger.info({ accel: result.accel, reason: result.reason }, 'accelerator chosen');
      return result;
    })();
    return this.accel;
  }

  async hostInfo(): Promise<HostInfo> {
    const { accel, reason } = await this.accelerator();
    const c = this.confinementState;
    return {
      hostId: this.hostId,
      accel,
      accelReason: reason,
      qemuVersion: await qemuVersion(this.options.qemuBinary),
      memoryDir: this.layout.memoryDir,
      vmsDir: this.layout.vmsDir,
      allowedRoots: this.policy.roots(),
      confinement: { user: c.user?.name ?? null, confined: c.confined, sandbox: c.sandbox, lazyRestoreConfined: c.lazyRestoreConfined, reasons: c.reasons },
    };
  }

  /**
   * Lays out a new VM. On a TCG host its RAM gets 8 KiB beyond its MiB (memoryExtraKiB), so that QEMU
   * 7.2's TCG dirty tracking loses no guest write when the VM is live-migrated (see qemu/argv.ts).
   */
  async prepareVm(vmId: string, request: PrepareVmRequest): Promise<VmSpec> {
    const memoryExtraKiB = request.memoryExtraKiB ?? ((await this.accelerator()).accel === 'tcg' ? TCG_MEMORY_EXTRA_KIB : 0);
    return prepareVmFiles(this.layout, this.policy, vmId, { ...request, memoryExtraKiB });
  }

  async startVm(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime> {
    if (this.vms.has(vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${vmId} already has a QEMU process`, { vmId }, 409);
    const files = this.layout.vmFiles(vmId);
    await rm(files.memoryFile, { force: true });
    const { runtime } = await this.launch(vmId, name, spec, { memory: { mode: 'owned', file: files.memoryFile, templateId: null } });
    return runtime;
  }

  /** Its vCPU threads yield to QEMU's own threads, and its QEMU's scheduler group to this agent, when the CPUs are short (qemu/vcpu-priority.ts); a refusal is logged, the VM runs on. */
  private async deprioritizeVcpus(vm: RunningVm): Promise<void> {
    const nice = this.options.vcpuNice ?? DEFAULT_VCPU_NICE;
    if (nice === 0) return;
    await setVcpuNice(vm.qmp, nice).catch((err: unknown) => this.logger.warn({ vmId: vm.vmId, nice, err: (err as Error).message }, "cannot lower the priority of the guest's vCPU threads"));
    await setAutogroupNice(vm.process.pid, nice).catch((err: unknown) => this.logger.warn({ vmId: vm.vmId, nice, err: (err as Error).message }, "cannot lower the priority of the QEMU's scheduler group"));
  }

  /** Starts one QEMU for the VM (not yet tracked as the VM's QEMU); kills it and cleans up if it does not come up. */
  private async launch(vmId: string, name: string, spec: VmSpec, options: { memory: VmMemory; incoming?: boolean; paused?: boolean; userfaultfd?: boolean; tcgTranslationMiB?: number }): Promise<{ vm: RunningVm; runtime: VmRuntime }> {
    const { accel } = await this.accelerator();
    const instance = randomBytes(4).toString('hex');
    const files = this.layout.vmFiles(vmId, instance);
    await this.access.prepareLaunch(files.dir, spec, options.memory);
    const confinement = this.confinementState;
    // A lazy restore's QEMU needs userfaultfd, which QEMU 7.2 cannot open as an unprivileged user unless the sysctl allows it.
    const user = options.userfaultfd && !confinement.lazyRestoreConfined ? null : this.access.user;
    if (options.userfaultfd && this.access.user && !user) this.logger.warn({ vmId, reason: 'vm.unprivileged_userfaultfd is 0' }, 'the QEMU of a lazy restore runs as root (sandboxed)');
    const launch: QemuLaunchSpec = {
      vmId,
      name,
      accel,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      ...(spec.memoryExtraKiB ? { memoryExtraKiB: spec.memoryExtraKiB } : {}),
      memory: { path: options.memory.file, share: options.memory.mode === 'owned' },
      boot: spec.boot.kind === 'kernel' ? { kind: 'kernel', kernel: spec.boot.kernel, initrd: spec.boot.initrd, cmdline: spec.boot.cmdline } : { kind: 'disk' },
      disks: spec.disks.map((d) => ({ id: d.id, path: d.path, format: d.format, readOnly: d.readOnly })),
      nics: spec.nics,
      qmpSocket: files.qmpSocket,
      qgaSocket: files.qgaSocket,
      consoleLog: files.consoleLog,
      pidFile: files.pidFile,
      ...(options.incoming ? { incoming: 'defer' as const } : {}),
      ...(options.paused ? { paused: true } : {}),
      ...(confinement.sandbox ? { sandbox: SANDBOX_OPTIONS } : {}),
      ...(options.tcgTranslationMiB ? { tcgTranslationMiB: options.tcgTranslationMiB } : {}),
    };
    const cleanupMemory = () => (options.memory.mode === 'owned' ? rm(options.memory.file, { force: true }) : Promise.resolve());
    let proc;
    try {
      proc = await spawnQemu(launch, { binary: this.options.qemuBinary, logFile: files.qemuLog, wrapper: user ? runAsPrefix(user, kvmGroups(accel)) : undefined });
    } catch (err) {
      await cleanupMemory();
      throw err;
    }
    let vm: RunningVm;
    try {
      vm = await RunningVm.attach(vmId, instance, proc, files, options.memory);
    } catch (err) {
      await killAndWait(proc.pid, { graceMs: 0 });
      await cleanupMemory();
      throw err;
    }
    await this.deprioritizeVcpus(vm);
    this.logger.info({ vmId, pid: proc.pid, accel, memory: options.memory.mode }, 'QEMU started');
    const runtime: VmRuntime = { hostId: this.hostId, pid: proc.pid, accel, dir: files.dir, instance, memory: options.memory, startedAt: new Date().toISOString() };
    if (!options.incoming) this.track(vm);
    return { vm, runtime };
  }

  /** Ends a QEMU that was started but never became the VM's (a failed fork step). */
  private async discard(vm: RunningVm): Promise<void> {
    vm.handOver();
    await killAndWait(vm.process.pid, { graceMs: 0 });
    await keepAlive(vm.exited);
    if (vm.memory.mode === 'owned') await rm(vm.memory.file, { force: true });
  }

  /**
   * Fork of a fork, step 1 of 3: a derived VM's RAM is a template plus private pages no file holds, so it is
   * live-migrated into a new QEMU whose RAM is an owned file (the stun is only the migration's downtime).
   * This starts that QEMU, waiting for the migration; the caller journals its runtime before step 2, so a
   * daemon killed from here on can tell the two QEMUs apart.
   */
  async startOwnedTarget(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime> {
    const source = this.running(vmId);
    if (this.ownedTargets.has(vmId)) throw new OffshootError('FORK_NOT_PREPARED', `VM ${vmId} is already being made owned`, { vmId }, 409);
    const files = this.layout.vmFiles(vmId);
    await rm(files.memoryFile, { force: true });
    const wasRunning = (await source.qmp.queryStatus()).running;
    const { vm: target, runtime } = await this.launch(vmId, name, spec, { memory: { mode: 'owned', file: files.memoryFile, templateId: null }, incoming: true, paused: true });
    this.ownedTargets.set(vmId, { target, runtime, wasRunning, migrated: false });
    return runtime;
  }

  /** Step 2: the local live migration into the target; the source ends stopped (postmigrate), the target paused. */
  async migrateToOwnedTarget(vmId: string): Promise<{ bytes: number; ms: number }> {
    const t0 = performance.now();
    const staged = this.ownedTargets.get(vmId);
    if (!staged) throw new OffshootError('FORK_NOT_PREPARED', `VM ${vmId} has no target QEMU to make it owned`, { vmId }, 409);
    const socket = this.layout.vmFiles(vmId, staged.target.instance).migrationSocket;
    try {
      const info = await migrateLocally(this.running(vmId).qmp, staged.target.qmp, socket);
      staged.migrated = true;
      return { bytes: info.ram?.transferred ?? 0, ms: performance.now() - t0 };
    } catch (err) {
      await this.abortOwnedTarget(vmId);
      throw err;
    } finally {
      await rm(socket, { force: true });
    }
  }

  /** Step 3: the target becomes the VM's QEMU (resumed if the source ran), the source ends. Returns the target's runtime. */
  async switchToOwnedTarget(vmId: string): Promise<VmRuntime> {
    const staged = this.ownedTargets.get(vmId);
    if (!staged?.migrated) throw new OffshootError('FORK_NOT_PREPARED', `VM ${vmId} has not been migrated into its owned QEMU`, { vmId }, 409);
    const source = this.running(vmId);
    source.handOver();
    await source.qmp.quit().catch(() => undefined);
    await withTimeout(source.process.exited, 5_000, 'QEMU quit').catch(() => killAndWait(source.process.pid, { graceMs: 0 }));
    await keepAlive(source.exited);
    this.ownedTargets.delete(vmId);
    this.track(staged.target);
    if (staged.wasRunning) await staged.target.qmp.cont();
    return staged.runtime;
  }

  /** Undoes steps 1-2: the target goes, and the source runs on as before (after a completed migration it takes its disks back). */
  async abortOwnedTarget(vmId: string): Promise<void> {
    const staged = this.ownedTargets.get(vmId);
    if (!staged) return;
    this.ownedTargets.delete(vmId);
    await this.discard(staged.target).catch(() => undefined);
    const source = this.vms.get(vmId);
    if (staged.wasRunning && source) await source.qmp.cont().catch((err: unknown) => this.logger.warn({ vmId, err: (err as Error).message }, 'cannot resume the source after an aborted make-owned'));
  }

  prepareFork(request: PrepareForkRequest): Promise<PreparedFork> {
    return this.stager.prepare(request);
  }

  switchFork(forkId: string): Promise<ForkSwitch> {
    return this.stager.switchOver(forkId);
  }

  completeForkChild(forkId: string, childId: string): Promise<VmRuntime> {
    return this.stager.completeChild(forkId, childId);
  }

  abortFork(forkId: string): Promise<void> {
    return this.stager.abort(forkId);
  }

  finishFork(forkId: string): Promise<void> {
    return this.stager.finish(forkId);
  }

  async checkpointTarget(name: string, out?: string): Promise<string> {
    if (out !== undefined) return this.policy.newFile('out', out);
    await mkdir(this.layout.checkpointsDir, { recursive: true, mode: 0o700 });
    const path = join(this.layout.checkpointsDir, `${name}.ckpt`);
    if (await lstat(path).catch(() => undefined)) throw new TargetExistsError('checkpoint file', path);
    return path;
  }

  writeCheckpoint(forkId: string, checkpointId: string, path: string, memoryBytes: number, metadata: CheckpointMetadata, onProgress?: (p: WriteProgress) => void): Promise<{ fileBytes: number; storedPages: number }> {
    // Registered before the first await, so a cancel can never fall between the call and the write.
    const controller = new AbortController();
    this.checkpointWrites.set(forkId, controller);
    return writeCheckpointFile(this.stager.artifacts(forkId), path, checkpointId, memoryBytes, metadata, onProgress, controller.signal)
      .then((written) => {
        this.logger.info({ forkId, path, fileBytes: written.fileBytes, ...written.timings }, 'checkpoint written');
        return written;
      })
      .finally(() => this.checkpointWrites.delete(forkId));
  }

  async restoreVm(vmId: string, name: string, checkpointPath: string, spec: VmSpec, mode: 'eager' | 'lazy' = 'eager'): Promise<{ runtime: VmRuntime; spec: VmSpec }> {
    if (mode === 'eager') return restoreEager(this.stagingHost, vmId, name, checkpointPath, spec);
    const lazy = await restoreLazy(this.stagingHost, vmId, name, checkpointPath, spec);
    this.logger.info({ vmId, ...lazy.timings }, 'lazily restored VM runs');
    // A postcopy destination without its source can never run again: when the stream fails, the VM is
    // killed (its exit reported with the cause) before anyone waiting for the stream hears of it.
    const done = lazy.done.then(
      (stats) => {
        this.logger.info({ vmId, ...stats }, 'lazy restore complete: the checkpoint is no longer needed');
        return stats;
      },
      async (err: unknown) => {
        this.logger.warn({ vmId, err: (err as Error).message }, 'lazy restore stream failed; killing the VM');
        const vm = this.vms.get(vmId);
        if (vm) {
          this.killReasons.set(vmId, `lazy restore failed: ${(err as Error).message}`);
          await killAndWait(vm.process.pid, { graceMs: 0 }).catch(() => undefined);
          await keepAlive(vm.exited);
        }
        throw err;
      },
    );
    done.catch(() => undefined);
    this.lazyRestores.set(vmId, { ...lazy, done });
    return { runtime: lazy.runtime, spec: lazy.spec };
  }

  async waitForRestoreStream(vmId: string, onProgress?: (blocksDone: number, blockCount: number) => void): Promise<LazyStreamResult | null> {
    const lazy = this.lazyRestores.get(vmId);
    if (!lazy) return null;
    const timer = onProgress ? setInterval(() => onProgress(lazy.progress().blocksDone, lazy.progress().blockCount), 500) : undefined;
    try {
      return await lazy.done;
    } finally {
      clearInterval(timer);
      if (this.lazyRestores.get(vmId) === lazy) this.lazyRestores.delete(vmId);
    }
  }

  /**
   * Validates a checkpoint file: `readMetadata` types its metadata (with disks by reference) and `diskPaths`
   * turns the frozen spec into host paths, so each frozen disk can be checked to exist and be safe.
   */
  inspectCheckpoint<M extends { spec: unknown }>(path: string, readMetadata: (raw: Record<string, unknown>) => M, hostSpec: (spec: M['spec']) => VmSpec): Promise<CheckpointInspection & { metadata: M }> {
    return inspectCheckpointFile(this.policy, path, readMetadata, hostSpec);
  }

  /** The file of a memory template. */
  templatePath(templateId: string): string {
    return this.templates.path(templateId);
  }

  /** Bytes held by memory templates (what forked VMs share). */
  async templateBytes(): Promise<number> {
    return (await this.templates.list()).reduce((sum, t) => sum + t.bytes, 0);
  }

  /** The QEMUs this agent runs, with their run state. */
  async runningVms(): Promise<Array<{ vmId: string; pid: number; instance: string; status: 'running' | 'paused' | 'other' }>> {
    return Promise.all(
      [...this.vms.values()].map(async (vm) => {
        const status = await vm.qmp.queryStatus().catch(() => undefined);
        return { vmId: vm.vmId, pid: vm.process.pid, instance: vm.instance, status: status ? (status.running ? ('running' as const) : status.status === 'paused' ? ('paused' as const) : ('other' as const)) : ('other' as const) };
      }),
    );
  }

  async cancelCheckpointWrite(forkId: string): Promise<boolean> {
    const write = this.checkpointWrites.get(forkId);
    if (!write) return false;
    write.abort(new OffshootError('TASK_CANCELLED', 'the checkpoint write was cancelled', { forkId }, 409));
    return true;
  }

  async removeCheckpointFile(checkpoint: { path: string; id: string; createdAt: string }): Promise<boolean> {
    const removed = await removeOwnCheckpoint(checkpoint);
    if (!removed) this.logger.info({ path: checkpoint.path, checkpointId: checkpoint.id }, 'checkpoint file left alone: it is missing or is not this checkpoint');
    return removed;
  }

  /** Kills a QEMU of the VM that is not its tracked one (left by an interrupted operation), if it still runs. */
  async killStray(vmId: string, runtime: VmRuntime): Promise<boolean> {
    if (this.vms.get(vmId)?.process.pid === runtime.pid) return false;
    const proc = adoptQemu(runtime.pid, vmId);
    if (!proc) return false;
    await killAndWait(runtime.pid, { graceMs: 0 });
    return true;
  }

  undoForkDisks(request: ForkDisksRequest, result: ForkDisksResult): Promise<void> {
    return undoForkDisks(this.layout, this.access, request, result);
  }

  async streamDisk(vmId: string, diskId: string, base: string): Promise<void> {
    try {
      await streamDisk(this.running(vmId).qmp, diskId, { base });
    } catch (err) {
      throw new OffshootError('DISK_STREAM_FAILED', `streaming ${base} into disk ${diskId} of VM ${vmId} failed: ${(err as Error).message}`, { vmId, diskId, base }, err instanceof OffshootError && err.status < 500 ? err.status : 500, { cause: err });
    }
  }

  async customize(vmId: string, identity: Identity): Promise<CustomizeResult> {
    const t0 = performance.now();
    let qga;
    try {
      qga = await this.running(vmId).guestAgent(identity.timeoutMs);
    } catch (err) {
      return { ok: false, error: `the guest agent did not answer within ${identity.timeoutMs} ms: ${(err as Error).message}`, script: null, ms: performance.now() - t0 };
    }
    try {
      return await customizeGuest(qga, vmId, identity);
    } catch (err) {
      this.running(vmId).dropGuestAgent();
      return { ok: false, error: (err as Error).message, script: null, ms: performance.now() - t0 };
    }
  }

  async memoryStats(vmId: string): Promise<VmMemoryStats> {
    try {
      return await processMemoryStats(this.running(vmId).process.pid);
    } catch (err) {
      // The QEMU ended between the lookup and the read (a kill racing this call).
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ESRCH') throw new VmNotRunningError(vmId);
      throw err;
    }
  }

  async releaseTemplates(inUse: ReadonlySet<string>): Promise<string[]> {
    // A fork being staged has made templates and bases no record names yet: collect nothing meanwhile.
    if (this.stager.active) return [];
    // A host template keeps its memory for as long as it exists.
    const kept = await this.fabric.kept();
    return this.templates.release(new Set([...inUse, ...kept.templates]));
  }

  async releaseBases(inUse: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    if (this.stager.active) return removed;
    const kept = (await this.fabric.kept()).files;
    for (const name of await readdir(this.layout.basesDir).catch(() => [] as string[])) {
      const path = join(this.layout.basesDir, name);
      if (inUse.has(path) || kept.has(path)) continue;
      await rm(path, { force: true });
      removed.push(path);
    }
    return removed;
  }

  async removeOperationFiles(operationId: string): Promise<void> {
    await rm(join(this.layout.workDir, operationId), { recursive: true, force: true });
  }

  private track(vm: RunningVm): void {
    this.vms.set(vm.vmId, vm);
    void vm.exited.then((event) => {
      if (this.vms.get(vm.vmId) === vm) this.vms.delete(vm.vmId);
      if (vm.handedOver) return;
      const killedBecause = this.killReasons.get(vm.vmId);
      this.killReasons.delete(vm.vmId);
      const reported = killedBecause ? { ...event, clean: false, reason: killedBecause } : event;
      this.logger.info({ ...reported }, 'QEMU exited');
      this.exits.emit('exit', reported);
    }).catch((err: unknown) => this.logger.error({ err, vmId: vm.vmId }, 'cannot report a QEMU exit'));
  }

  /** The QMP client of a running VM (for the storage agent's live disk operations). */
  qmpOf(vmId: string): QmpClient {
    return this.running(vmId).qmp;
  }

  private running(vmId: string): RunningVm {
    const vm = this.vms.get(vmId);
    if (!vm) throw new VmNotRunningError(vmId);
    return vm;
  }

  async waitForGuestAgent(vmId: string, timeoutMs: number): Promise<void> {
    const vm = this.running(vmId);
    try {
      await vm.guestAgent(timeoutMs);
    } catch (err) {
      if (err instanceof OffshootError && err.code === 'VM_CRASHED') throw err;
      throw new GuestAgentUnavailableError(vmId, err);
    }
  }

  async adoptVm(vmId: string, runtime: VmRuntime): Promise<'running' | 'paused' | undefined> {
    const tracked = this.vms.get(vmId);
    // This agent already runs the VM (it outlived its controller): only the QEMU it tracks is the VM.
    if (tracked) return tracked.process.pid === runtime.pid ? ((await tracked.qmp.queryStatus()).running ? 'running' : 'paused') : undefined;
    const proc = adoptQemu(runtime.pid, vmId);
    if (!proc) return undefined;
    const files = this.layout.vmFiles(vmId, runtime.instance);
    let vm: RunningVm;
    const attaching = Date.now();
    try {
      // A live QEMU whose monitor is slow to greet (a loaded host) is still the VM: wait for it,
      // rather than kill a running guest. A socket nobody listens on fails at once.
      vm = await RunningVm.attach(vmId, runtime.instance, proc, files, runtime.memory, ADOPT_MONITOR_PATIENCE_MS);
      const waitedMs = Date.now() - attaching;
      if (waitedMs > ADOPT_MONITOR_SLOW_MS) this.logger.warn({ vmId, pid: runtime.pid, waitedMs }, "QEMU's monitor answered late; re-adopted it anyway");
    } catch (err) {
      // A QEMU we cannot control is an orphan: kill it rather than leave it.
      this.logger.warn({ vmId, pid: runtime.pid, err: (err as Error).message }, 'cannot reconnect to QEMU; killing it');
      await killAndWait(runtime.pid, { graceMs: 2_000 });
      if (runtime.memory.mode === 'owned') await rm(runtime.memory.file, { force: true });
      return undefined;
    }
    const status = await vm.qmp.queryStatus().catch(() => undefined);
    if (!status || status.status === 'inmigrate') {
      // Waiting for device state or a migration that will never come: not the VM. An owned RAM file
      // of its own (a fork of a fork's target) goes with it; a derived one is a shared template.
      this.logger.warn({ vmId, pid: runtime.pid, status: status?.status }, 'killing a QEMU that is not the running VM');
      vm.handOver();
      await killAndWait(runtime.pid, { graceMs: 0 });
      await keepAlive(vm.exited);
      if (runtime.memory.mode === 'owned') await rm(runtime.memory.file, { force: true });
      return undefined;
    }
    const migration = await vm.qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: undefined }));
    // (The source of an outgoing post-copy migration is stopped and serves its pages itself: it stays.)
    if (migration.status?.startsWith('postcopy') && status.running) {
      // A lazy restore whose source (the previous daemon) died: its memory can never be completed.
      this.logger.warn({ vmId, pid: runtime.pid, migration: migration.status }, 'killing a lazily restored QEMU whose memory stream died with the previous daemon');
      vm.handOver();
      await killAndWait(runtime.pid, { graceMs: 0 });
      await keepAlive(vm.exited);
      if (runtime.memory.mode === 'owned') await rm(runtime.memory.file, { force: true });
      return undefined;
    }
    this.track(vm);
    this.logger.info({ vmId, pid: runtime.pid, status: status.status }, 'QEMU re-adopted');
    return status.running ? 'running' : 'paused';
  }

  async vmStatus(vmId: string): Promise<'running' | 'paused' | undefined> {
    const vm = this.vms.get(vmId);
    if (!vm) return undefined;
    const status = await vm.qmp.queryStatus().catch(() => undefined);
    return status ? (status.running ? 'running' : 'paused') : undefined;
  }

  /** Undoes the disk renames a fork logged, whatever state it stopped in (crash recovery). */
  async undoForkRenames(forkId: string): Promise<number> {
    return undoRenameLog(join(this.layout.workDir, forkId, 'renames.json'), this.access);
  }

  async pauseVm(vmId: string): Promise<void> {
    await this.running(vmId).qmp.stop();
  }

  async resumeVm(vmId: string): Promise<void> {
    await this.running(vmId).qmp.cont();
  }

  async stopVm(vmId: string, timeoutMs: number): Promise<{ forced: boolean }> {
    const vm = this.running(vmId);
    vm.expectExit('stopped by request (ACPI power-down)');
    try {
      const status = await vm.qmp.queryStatus();
      if (!status.running) await vm.qmp.cont();
      await vm.qmp.systemPowerdown();
      await withTimeout(vm.exited, timeoutMs, 'ACPI power-down');
      return { forced: false };
    } catch (err) {
      if (!(err instanceof OffshootError)) throw err; // a TimeoutError, or QMP failing as the guest powers off
      this.logger.warn({ vmId, err: (err as Error).message }, 'guest did not power off in time; killing QEMU');
      vm.expectExit('killed after the ACPI power-down timed out');
      await killAndWait(vm.process.pid, { graceMs: 2_000 });
      await keepAlive(vm.exited);
      return { forced: true };
    }
  }

  async killVm(vmId: string): Promise<void> {
    const vm = this.running(vmId);
    vm.expectExit('killed by request');
    await killAndWait(vm.process.pid, { graceMs: 0 });
    await keepAlive(vm.exited);
  }

  async exec(vmId: string, request: ExecRequest): Promise<ExecResult> {
    const vm = this.running(vmId);
    let qga;
    try {
      qga = await vm.guestAgent(10_000);
    } catch (err) {
      if (err instanceof OffshootError && err.code === 'VM_CRASHED') throw err;
      throw new GuestAgentUnavailableError(vmId, err);
    }
    try {
      const result = await qga.exec(request.path, request.args, {
        input: request.input === undefined ? undefined : Buffer.from(request.input, 'base64'),
        env: request.env,
        timeoutMs: request.timeoutMs,
      });
      return { exitCode: result.exitCode, signal: result.signal, stdout: result.stdout.toString('base64'), stderr: result.stderr.toString('base64') };
    } catch (err) {
      if (err instanceof OffshootError && (err.code === 'QGA_DISCONNECTED' || err.code === 'QGA_TIMEOUT')) vm.dropGuestAgent();
      throw err;
    }
  }

  async readConsole(vmId: string, maxBytes: number): Promise<string> {
    const path = this.layout.vmFiles(vmId).consoleLog;
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch {
      return '';
    }
    const start = Math.max(0, size - maxBytes);
    const handle = await open(path, 'r');
    try {
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      return buffer.toString('utf8');
    } finally {
      await handle.close();
    }
  }

  async deleteVmFiles(vmId: string): Promise<void> {
    const vm = this.vms.get(vmId);
    // A QEMU that ended but whose end is not seen yet (an adopted one is polled) is waited for, briefly.
    if (vm && !isProcessAlive(vm.process.pid)) await withTimeout(keepAlive(vm.exited), 5_000, 'the end of a QEMU').catch(() => undefined);
    if (this.vms.has(vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${vmId} still has a QEMU process`, { vmId }, 409);
    this.lazyRestores.delete(vmId);
    const files = this.layout.vmFiles(vmId);
    await rm(files.dir, { recursive: true, force: true });
    await rm(files.memoryFile, { force: true });
  }

  async reapOrphans(live: ReadonlySet<string>, known: ReadonlySet<string>): Promise<{ killed: number[]; removed: string[] }> {
    const killed: number[] = [];
    const removed: string[] = [];
    const mine = `${this.layout.vmsDir}/`;
    // The destination of a migration no controller knows any more (it rolled back while this host did not answer) goes.
    for (const vmId of this.incoming.ids()) {
      if (known.has(vmId)) continue;
      // Prepared moments ago: its migration's task may have started after the controller listed what it knows
      // (seen: a re-adoption racing the next migration to this host). A leftover that young goes next time.
      if (Date.now() - (this.incoming.preparedAt(vmId) ?? 0) < INCOMING_REAP_GRACE_MS) continue;
      this.logger.warn({ vmId }, 'removing the destination of a migration the inventory does not know');
      if (await this.incoming.abort(vmId).catch(() => false)) removed.push(this.layout.vmDir(vmId));
    }
    for (const found of findOffshootQemus()) {
      if (this.vms.get(found.vmId)?.process.pid === found.pid) continue;
      // A migration's destination waiting here is not an orphan (its VM lives on another host until it completes).
      if (this.incoming.state(found.vmId)?.pid === found.pid) continue;
      const cmdline = await readFile(`/proc/${found.pid}/cmdline`, 'utf8').catch(() => '');
      if (!cmdline.includes(mine)) continue; // another Offshoot home's VM
      this.logger.warn({ pid: found.pid, vmId: found.vmId }, 'killing orphan QEMU');
      await killAndWait(found.pid, { graceMs: 1_000 });
      if (!live.has(found.vmId)) await rm(this.layout.vmFiles(found.vmId).memoryFile, { force: true });
      killed.push(found.pid);
    }
    const entries = await readdir(this.layout.vmsDir).catch(() => [] as string[]);
    for (const entry of entries) {
      if (known.has(entry) || this.vms.has(entry) || this.incoming.has(entry)) continue;
      this.logger.warn({ vmId: entry }, 'removing files of a VM the inventory does not know');
      await rm(this.layout.vmDir(entry), { recursive: true, force: true });
      removed.push(this.layout.vmDir(entry));
    }
    for (const entry of await readdir(this.layout.memoryDir).catch(() => [] as string[])) {
      if (!entry.endsWith('.ram')) continue;
      const vmId = entry.replace(/\.ram$/, '');
      if (live.has(vmId) || this.vms.has(vmId) || this.incoming.has(vmId)) continue;
      await rm(`${this.layout.memoryDir}/${entry}`, { force: true });
      removed.push(`${this.layout.memoryDir}/${entry}`);
    }
    return { killed, removed };
  }

  /**
   * After a migration's switch-over: the VM's old QEMU here (stopped, its migration completed) ends, and its
   * RAM file and folder (its local disks, copied to the destination) go. Idempotent. The RAM file's name goes
   * at once; its pages are freed right after, not awaited (releaseMemoryFile).
   */
  async finishOutgoing(vmId: string): Promise<void> {
    const timeline = migrationTimeline(10, 'finish');
    const vm = this.vms.get(vmId);
    if (vm) {
      const status = await vm.qmp.queryStatus().catch(() => undefined);
      if (status?.running) throw new OffshootError('ILLEGAL_STATE', `VM ${vmId} runs on this host: its migration did not complete here`, { vmId, state: 'running', required: ['postmigrate'] }, 409);
      vm.handOver();
      this.vms.delete(vmId);
      await vm.qmp.quit().catch(() => undefined);
      timeline.mark('quit-answered');
      await withTimeout(vm.process.exited, 5_000, 'QEMU quit').catch(() => killAndWait(vm.process.pid, { graceMs: 0 }));
      await keepAlive(vm.exited);
      timeline.mark('qemu-exited');
    }
    const files = this.layout.vmFiles(vmId);
    await this.removeFolderAside(files.dir);
    timeline.mark('folder-removed');
    await releaseMemoryFile(files.memoryFile, this.logger);
    timeline.mark('memory-removed');
    this.logger.info({ vmId, timeline: timeline.entries }, 'source of a migrated VM removed');
  }

  /**
   * A VM folder's name goes at once (renamed aside, `.gone-ID-RANDOM` in the VMs folder) and its files after, not
   * awaited: removing a migrated VM's local disks (GiBs, copied to the destination) took 200-440 ms of the
   * migration's end. A removal cut short by a crash is reaped with the folders no VM owns (reapOrphans).
   */
  private async removeFolderAside(dir: string): Promise<void> {
    const aside = join(this.layout.vmsDir, `.gone-${dir.split('/').pop() ?? 'vm'}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(dir, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    void rm(aside, { recursive: true, force: true }).catch((err: unknown) => this.logger.warn({ path: aside, err: (err as Error).message }, 'cannot remove a migrated VM\'s old folder now; reaped later'));
  }

  /** What the VM's QEMU on this host is doing, and the migrations of it here (recovery). */
  async migrationState(vmId: string): Promise<{ qemu: { runState: string; migration: string } | null; outgoing: { phase: string; held: boolean; switching: boolean } | null; incoming: { state: 'waiting' | 'held' | 'running' | 'failed'; pid: number; runState: string | null } | null }> {
    const vm = this.vms.get(vmId);
    let qemu: { runState: string; migration: string } | null = null;
    if (vm) {
      const status = await vm.qmp.queryStatus().catch(() => undefined);
      const migration = await vm.qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: undefined }));
      if (status) qemu = { runState: status.status, migration: migration.status ?? 'none' };
    }
    const incoming = this.incoming.state(vmId);
    return { qemu, outgoing: this.outgoing.state(vmId), incoming: incoming ? { ...incoming, runState: await this.incoming.runState(vmId) } : null };
  }

  onVmExit(listener: (event: VmExitEvent) => void): () => void {
    this.exits.on('exit', listener);
    return () => this.exits.off('exit', listener);
  }

  async close(): Promise<void> {
    // A lazily restored VM depends on this process until its stream completes (the engine's task drain
    // normally waited for it already): give each stream time to finish, and kill the VMs whose stream
    // does not, since they could never run again without it.
    await Promise.all(
      [...this.lazyRestores.entries()].map(async ([vmId, lazy]) => {
        const finished = await withTimeout(lazy.done.then(() => true, () => false), CLOSE_STREAM_TIMEOUT_MS, 'lazy restore stream').catch(() => false);
        if (finished) return;
        lazy.abort(new OffshootError('DAEMON_CLOSING', 'the daemon closed before the lazy restore stream completed', { vmId }, 503));
        const vm = this.vms.get(vmId);
        if (!vm) return;
        this.killReasons.set(vmId, 'lazy restore failed: the daemon closed before its memory stream completed');
        await killAndWait(vm.process.pid, { graceMs: 0 }).catch(() => undefined);
        await keepAlive(vm.exited);
      }),
    );
    for (const vm of this.vms.values()) {
      vm.dropGuestAgent();
      vm.qmp.close();
    }
    this.vms.clear();
    this.exits.removeAllListeners();
    // Nothing of this home stays in the memory folder once nothing is in it (VMs that run on keep theirs).
    await rmdir(this.templates.dir).catch(() => undefined);
    await rmdir(this.layout.memoryDir).catch(() => undefined);
  }

  /** Shares files with a confined QEMU (for the storage agent: overlays it opens, bases it reads). */
  qemuAccess(): QemuAccess {
    return this.access;
  }
}

/**
 * Removes a RAM file whose pages are freed in the background: the name goes now (an open descriptor keeps
 * the inode), the last close frees the pages. A migrated VM's source RAM file is fully populated (the
 * migration read every page), and freeing 1 GiB of tmpfs took 240-260 ms in the unlink itself (bench migrate,
 * load 5-9), the largest part of a migration's clean-up.
 */
async function releaseMemoryFile(path: string, logger: Logger): Promise<void> {
  const held = await open(path, 'r').catch(() => undefined);
  await rm(path, { force: true });
  if (held) void held.close().catch((err: unknown) => logger.warn({ path, err: (err as Error).message }, 'cannot release a removed RAM file'));
}
