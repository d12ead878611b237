// The in-process host agent: runs QEMU processes for this host's VMs, keeps
// their QMP and guest-agent connections, re-adopts QEMUs that outlived a
// daemon restart, and reaps QEMUs that no VM owns. See host-agent.ts for the
// contract; this is the only implementation today.
import { EventEmitter } from 'node:events';
import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { OffshootError, TimeoutError, silentLogger, withTimeout } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { loadDefaultGuest } from '../guest/index.ts';
import type { QemuLaunchSpec } from '../qemu/index.ts';
import { adoptQemu, findOffshootQemus, killAndWait, probeAccelerator, qemuVersion, spawnQemu } from '../qemu/index.ts';
import type { HostAgent } from './host-agent.ts';
import { HostLayout } from './layout.ts';
import { prepareVmFiles } from './prepare-vm.ts';
import { RunningVm } from './running-vm.ts';
import type { Accelerator, ExecRequest, ExecResult, HostInfo, PrepareVmRequest, VmExitEvent, VmRuntime, VmSpec } from './types.ts';

export interface LocalHostAgentOptions {
  home: string;
  memoryDir?: string;
  qemuBinary?: string;
  logger?: Logger;
}

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

export class LocalHostAgent implements HostAgent {
  readonly hostId: string;
  readonly layout: HostLayout;
  private readonly vms = new Map<string, RunningVm>();
  private readonly exits = new EventEmitter();
  private readonly logger: Logger;
  private accel: Promise<{ accel: Accelerator; reason: string }> | undefined;

  constructor(private readonly options: LocalHostAgentOptions) {
    this.hostId = hostname();
    this.layout = new HostLayout(options.home, options.memoryDir);
    this.logger = options.logger ?? silentLogger;
  }

  /** The accelerator, probed once (and cached on disk across restarts) by a real trial boot. */
  accelerator(): Promise<{ accel: Accelerator; reason: string }> {
    this.accel ??= (async () => {
      const guest = await loadDefaultGuest();
      const result = await probeAccelerator({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, binary: this.options.qemuBinary, cacheFile: this.layout.accelCacheFile });
      this.logger.info({ accel: result.accel, reason: result.reason }, 'accelerator chosen');
      return result;
    })();
    return this.accel;
  }

  async hostInfo(): Promise<HostInfo> {
    const { accel, reason } = await this.accelerator();
    return { hostId: this.hostId, accel, accelReason: reason, qemuVersion: await qemuVersion(this.options.qemuBinary), memoryDir: this.layout.memoryDir, vmsDir: this.layout.vmsDir };
  }

  prepareVm(vmId: string, request: PrepareVmRequest): Promise<VmSpec> {
    return prepareVmFiles(this.layout, vmId, request);
  }

  async startVm(vmId: string, name: string, spec: VmSpec): Promise<VmRuntime> {
    if (this.vms.has(vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${vmId} already has a QEMU process`, { vmId }, 409);
    const { accel } = await this.accelerator();
    const files = this.layout.vmFiles(vmId);
    await mkdir(this.layout.memoryDir, { recursive: true });
    await Promise.all([files.qmpSocket, files.qgaSocket, files.memoryFile, files.pidFile].map((f) => rm(f, { force: true })));
    const launch: QemuLaunchSpec = {
      vmId,
      name,
      accel,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      memory: { path: files.memoryFile, share: true },
      boot: spec.boot.kind === 'kernel' ? { kind: 'kernel', kernel: spec.boot.kernel, initrd: spec.boot.initrd, cmdline: spec.boot.cmdline } : { kind: 'disk' },
      disks: spec.disks.map((d) => ({ id: d.id, path: d.path, format: d.format, readOnly: d.readOnly })),
      nics: spec.nics,
      qmpSocket: files.qmpSocket,
      qgaSocket: files.qgaSocket,
      consoleLog: files.consoleLog,
      pidFile: files.pidFile,
    };
    let proc;
    try {
      proc = await spawnQemu(launch, { binary: this.options.qemuBinary, logFile: files.qemuLog });
    } catch (err) {
      await rm(files.memoryFile, { force: true });
      throw err;
    }
    let vm: RunningVm;
    try {
      vm = await RunningVm.attach(vmId, proc, files);
    } catch (err) {
      await killAndWait(proc.pid, { graceMs: 0 });
      await rm(files.memoryFile, { force: true });
      throw err;
    }
    this.track(vm);
    this.logger.info({ vmId, pid: proc.pid, accel }, 'QEMU started');
    return { hostId: this.hostId, pid: proc.pid, accel, dir: files.dir, memoryFile: files.memoryFile, startedAt: new Date().toISOString() };
  }

  private track(vm: RunningVm): void {
    this.vms.set(vm.vmId, vm);
    void vm.exited.then((event) => {
      if (this.vms.get(vm.vmId) === vm) this.vms.delete(vm.vmId);
      this.logger.info({ ...event }, 'QEMU exited');
      this.exits.emit('exit', event);
    });
  }

  private running(vmId: string): RunningVm {
    const vm = this.vms.get(vmId);
    if (!vm) throw new VmNotRunningError(vmId);
    return vm;
  }

  async waitForGuestAgent(vmId: string, timeoutMs: number): Promise<void> {
    const vm = this.running(vmId);
    const died = vm.exited.then((e) => {
      throw new OffshootError('QEMU_EXITED', `QEMU of VM ${vmId} ended while waiting for the guest agent: ${e.reason}`, { vmId, reason: e.reason }, 500);
    });
    try {
      await Promise.race([vm.guestAgent(timeoutMs), died]);
    } catch (err) {
      if (err instanceof OffshootError && err.code === 'QEMU_EXITED') throw err;
      throw new GuestAgentUnavailableError(vmId, err);
    }
  }

  async adoptVm(vmId: string, runtime: VmRuntime): Promise<'running' | 'paused' | undefined> {
    if (this.vms.has(vmId)) return (await this.running(vmId).qmp.queryStatus()).running ? 'running' : 'paused';
    const proc = adoptQemu(runtime.pid, vmId);
    if (!proc) return undefined;
    const files = this.layout.vmFiles(vmId);
    let vm: RunningVm;
    try {
      vm = await RunningVm.attach(vmId, proc, files, 5_000);
    } catch (err) {
      // A QEMU we cannot control is an orphan: kill it rather than leave it.
      this.logger.warn({ vmId, pid: runtime.pid, err: (err as Error).message }, 'cannot reconnect to QEMU; killing it');
      await killAndWait(runtime.pid, { graceMs: 2_000 });
      await rm(files.memoryFile, { force: true });
      return undefined;
    }
    this.track(vm);
    const status = await vm.qmp.queryStatus();
    this.logger.info({ vmId, pid: runtime.pid, status: status.status }, 'QEMU re-adopted');
    return status.running ? 'running' : 'paused';
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
      if (!(err instanceof TimeoutError) && !(err instanceof OffshootError)) throw err;
      this.logger.warn({ vmId, err: (err as Error).message }, 'guest did not power off in time; killing QEMU');
      vm.expectExit('killed after the ACPI power-down timed out');
      await killAndWait(vm.process.pid, { graceMs: 2_000 });
      await vm.exited;
      return { forced: true };
    }
  }

  async killVm(vmId: string): Promise<void> {
    const vm = this.running(vmId);
    vm.expectExit('killed by request');
    await killAndWait(vm.process.pid, { graceMs: 0 });
    await vm.exited;
  }

  async exec(vmId: string, request: ExecRequest): Promise<ExecResult> {
    const vm = this.running(vmId);
    let qga;
    try {
      qga = await vm.guestAgent(10_000);
    } catch (err) {
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
    if (this.vms.has(vmId)) throw new OffshootError('VM_ALREADY_RUNNING', `VM ${vmId} still has a QEMU process`, { vmId }, 409);
    const files = this.layout.vmFiles(vmId);
    await rm(files.dir, { recursive: true, force: true });
    await rm(files.memoryFile, { force: true });
  }

  async reapOrphans(live: ReadonlySet<string>, known: ReadonlySet<string>): Promise<{ killed: number[]; removed: string[] }> {
    const killed: number[] = [];
    const removed: string[] = [];
    const mine = `${this.layout.vmsDir}/`;
    for (const found of findOffshootQemus()) {
      if (live.has(found.vmId) || this.vms.has(found.vmId)) continue;
      const cmdline = await readFile(`/proc/${found.pid}/cmdline`, 'utf8').catch(() => '');
      if (!cmdline.includes(mine)) continue; // another Offshoot home's VM
      this.logger.warn({ pid: found.pid, vmId: found.vmId }, 'killing orphan QEMU');
      await killAndWait(found.pid, { graceMs: 1_000 });
      await rm(this.layout.vmFiles(found.vmId).memoryFile, { force: true });
      killed.push(found.pid);
    }
    const entries = await readdir(this.layout.vmsDir).catch(() => [] as string[]);
    for (const entry of entries) {
      if (known.has(entry) || this.vms.has(entry)) continue;
      this.logger.warn({ vmId: entry }, 'removing files of a VM the inventory does not know');
      await rm(this.layout.vmDir(entry), { recursive: true, force: true });
      removed.push(this.layout.vmDir(entry));
    }
    for (const entry of await readdir(this.layout.memoryDir).catch(() => [] as string[])) {
      const vmId = entry.replace(/\.ram$/, '');
      if (live.has(vmId) || this.vms.has(vmId)) continue;
      await rm(`${this.layout.memoryDir}/${entry}`, { force: true });
      removed.push(`${this.layout.memoryDir}/${entry}`);
    }
    return { killed, removed };
  }

  onVmExit(listener: (event: VmExitEvent) => void): () => void {
    this.exits.on('exit', listener);
    return () => this.exits.off('exit', listener);
  }

  async close(): Promise<void> {
    for (const vm of this.vms.values()) {
      vm.dropGuestAgent();
      vm.qmp.close();
    }
    this.vms.clear();
    this.exits.removeAllListeners();
  }
}
