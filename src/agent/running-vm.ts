// One running QEMU as the host agent sees it: the process, its QMP connection,
// a lazily opened guest-agent connection, and the bookkeeping that turns the
// process ending into a single VmExitEvent (clean when the guest or an
// operator powered it off, a crash otherwise). A QEMU that is handed over
// (replaced by another QEMU of the same VM, as in a fork) ends silently.
import { rm } from 'node:fs/promises';
import type { QemuProcess } from '../qemu/index.ts';
import { QgaClient, QmpClient } from '../qemu/index.ts';
import { VmCrashedError } from '../common/index.ts';
import type { VmExitEvent, VmMemory } from './types.ts';

export interface RunningVmFiles {
  qmpSocket: string;
  qgaSocket: string;
}

export class RunningVm {
  /** Set when the guest reported SHUTDOWN or we asked for the stop/kill. */
  private shutdownReason: string | undefined;
  private qga: QgaClient | undefined;
  private qgaPending: Promise<QgaClient> | undefined;
  private handedOverFlag = false;
  readonly exited: Promise<VmExitEvent>;

  constructor(
    readonly vmId: string,
    readonly instance: string,
    readonly process: QemuProcess,
    readonly qmp: QmpClient,
    readonly files: RunningVmFiles,
    readonly memory: VmMemory,
  ) {
    this.watchShutdownEvents().catch(() => undefined);
    // Never rejects: every listener of a QEMU's end relies on it settling once, with a reason.
    this.exited = this.process.exited.then(async (exit) => {
      this.qmp.close();
      this.qga?.close();
      // An owned RAM file dies with its QEMU, unless it is being turned into a template.
      if (this.memory.mode === 'owned' && !this.handedOverFlag) await rm(this.memory.file, { force: true }).catch(() => undefined);
      await Promise.all([rm(files.qmpSocket, { force: true }), rm(files.qgaSocket, { force: true })]).catch(() => undefined);
      const how = exit.signal ? `killed by ${exit.signal}` : exit.code === null ? 'exited' : `exited with code ${exit.code}`;
      const clean = this.shutdownReason !== undefined;
      return { vmId, instance, clean, reason: clean ? `${this.shutdownReason}` : `QEMU ${how} unexpectedly` };
    });
  }

  static async attach(vmId: string, instance: string, process: QemuProcess, files: RunningVmFiles, memory: VmMemory, timeoutMs = 10_000): Promise<RunningVm> {
    const qmp = await QmpClient.connect(files.qmpSocket, { timeoutMs });
    return new RunningVm(vmId, instance, process, qmp, files, memory);
  }

  get handedOver(): boolean {
    return this.handedOverFlag;
  }

  private async watchShutdownEvents(): Promise<void> {
    const events = this.qmp.events('SHUTDOWN');
    for await (const event of events) {
      const data = event.data as { guest?: boolean; reason?: string } | undefined;
      this.shutdownReason ??= data?.guest ? `guest powered off (${data.reason ?? 'shutdown'})` : `powered off (${data?.reason ?? 'host request'})`;
    }
  }

  /** Marks the coming exit as requested, so it is reported as clean. */
  expectExit(reason: string): void {
    this.shutdownReason ??= reason;
  }

  /** Marks this QEMU as replaced by another of the same VM: its exit is not an event and its RAM file is kept. */
  handOver(): void {
    this.handedOverFlag = true;
    this.expectExit('handed over');
  }

  /**
   * The guest-agent connection, opened on first use and reopened after a failure. Callers that
   * ask while it is being opened share the same attempt (the agent serves one connection). If the
   * QEMU ends meanwhile, this fails at once (VM_CRASHED) instead of waiting out the time limit.
   */
  async guestAgent(timeoutMs: number): Promise<QgaClient> {
    if (this.qga) return this.qga;
    const died = this.exited.then((e) => {
      throw new VmCrashedError(this.vmId, 'the wait for its guest agent', e.reason);
    });
    died.catch(() => undefined);
    return Promise.race([this.openGuestAgent(timeoutMs), died]);
  }

  private openGuestAgent(timeoutMs: number): Promise<QgaClient> {
    if (this.qga) return Promise.resolve(this.qga);
    this.qgaPending ??= QgaClient.waitForAgent(this.files.qgaSocket, { timeoutMs })
      .then((qga) => {
        this.qga = qga;
        void qga.closed.then(() => {
          if (this.qga === qga) this.qga = undefined;
        });
        return qga;
      })
      .finally(() => (this.qgaPending = undefined));
    return this.qgaPending;
  }

  dropGuestAgent(): void {
    this.qga?.close();
    this.qga = undefined;
  }
}
