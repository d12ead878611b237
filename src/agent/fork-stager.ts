// The pre-staged fork on one host (see src/vm/fork/run-fork.ts for the phases):
// prepare while the source runs (disks split, RAM file hard-linked as the
// template, a QEMU per VM waiting for device state with its disks inactive),
// the switch-over (the only stun), children loading the state, and abort,
// which undoes whatever has not happened yet. It works through StagingHost,
// the narrow part of the host agent it needs.
import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { OffshootError, keepAlive, withTimeout } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { TemplateStore } from '../memory/index.ts';
import { killAndWait } from '../qemu/index.ts';
import { forkDisks, undoForkDisks } from './fork-disks.ts';
import type { HostLayout } from './layout.ts';
import type { QemuAccess } from './qemu-access.ts';
import { loadDeviceState, saveDeviceState } from './migration.ts';
import type { RunningVm } from './running-vm.ts';
import type { ForkDisksRequest, ForkDisksResult, ForkSwitch, PrepareForkRequest, PreparedFork, VmMemory, VmRuntime, VmSpec } from './types.ts';

export interface StagingHost {
  readonly layout: HostLayout;
  /** Files shared with a confined QEMU (sockets it connects to, bases it reads). */
  readonly access: QemuAccess;
  readonly templates: TemplateStore;
  readonly logger: Logger;
  running(vmId: string): RunningVm;
  /** `userfaultfd`: the QEMU will need userfaultfd (a lazy restore), which may keep it from running confined. */
  launch(vmId: string, name: string, spec: VmSpec, options: { memory: VmMemory; incoming?: boolean; paused?: boolean; userfaultfd?: boolean; tcgTranslationMiB?: number }): Promise<{ vm: RunningVm; runtime: VmRuntime }>;
  discard(vm: RunningVm): Promise<void>;
  track(vm: RunningVm): void;
  untrack(vmId: string): void;
}

/** QEMUs started at once while a fork is prepared (each waits on its QMP socket for part of its start). */
const INCOMING_SPAWN_CONCURRENCY = 4;

/** A fork being staged on this host (see prepareFork). */
interface StagedFork {
  sourceId: string;
  templateId: string;
  disksRequest: ForkDisksRequest | undefined;
  disks: ForkDisksResult | undefined;
  incoming: Map<string, { vm: RunningVm; runtime: VmRuntime }>;
  switched: boolean;
  wasRunning: boolean;
  deviceState: string;
  /** After the switch-over: the old QEMU's end and the template's freeze (never rejects). */
  cleanup: Promise<void>;
}

export class ForkStager {
  private readonly forks = new Map<string, StagedFork>();

  constructor(private readonly host: StagingHost) {}

  /** Whether a fork is staged: its templates and bases are not yet named by any record. */
  get active(): boolean {
    return this.forks.size > 0;
  }

  /**
   * Pre-staged fork, step 1, while the source runs: a derived source is made owned; its disks are
   * split (renamed to bases, new deltas); its RAM file is hard-linked as the template; and a QEMU
   * for the source's replacement and for every child starts, waiting for the device state with its
   * disks inactive (QEMU re-reads them when the migration completes). Nothing here stops the source.
   */
  async prepare(request: PrepareForkRequest): Promise<PreparedFork> {
    const { forkId, source } = request;
    const vm = this.host.running(source.vmId);
    if (vm.memory.mode !== 'owned') throw new OffshootError('FORK_NEEDS_OWNED_MEMORY', `VM ${source.vmId} maps a template; make its memory owned first (startOwnedTarget, migrateToOwnedTarget, switchToOwnedTarget)`, { vmId: source.vmId }, 409);
    const stage: StagedFork = { sourceId: source.vmId, templateId: '', disksRequest: undefined, disks: undefined, incoming: new Map(), switched: false, wasRunning: true, deviceState: join(this.host.layout.workDir, forkId, 'devstate'), cleanup: Promise.resolve() };
    this.forks.set(forkId, stage);
    const t0 = performance.now();
    const msSince = (t: number) => Math.round(performance.now() - t);
    try {
      await mkdir(join(this.host.layout.workDir, forkId), { recursive: true });
      stage.disksRequest = { sourceId: source.vmId, sourceDisks: source.spec.disks, childIds: request.children.map((c) => c.vmId), maxDepth: request.maxDepth, renameLog: join(this.host.layout.workDir, forkId, 'renames.json') };
      stage.disks = await forkDisks(this.host.layout, this.host.access, stage.disksRequest);
      const disksMs = msSince(t0);
      const linking = performance.now();
      stage.templateId = (await this.host.templates.link(vm.memory.file)).templateId;
      const templateMs = msSince(linking);
      const t1 = performance.now();
      const memory: VmMemory = { mode: 'derived', file: this.host.templates.path(stage.templateId), templateId: stage.templateId };
      const targets = [
        { vmId: source.vmId, name: source.name, spec: { ...source.spec, disks: stage.disks.source } },
        ...request.children.map((c) => ({ vmId: c.vmId, name: c.name, spec: { ...c.spec, disks: stage.disks?.children[c.vmId] ?? [] } })),
      ];
      const queue = [...targets];
      const failures: unknown[] = [];
      await Promise.all(
        Array.from({ length: Math.min(INCOMING_SPAWN_CONCURRENCY, queue.length) }, async () => {
          for (let next = queue.shift(); next && failures.length === 0; next = queue.shift()) {
            try {
              stage.incoming.set(next.vmId, await this.host.launch(next.vmId, next.name, next.spec, { memory, incoming: true, paused: true }));
            } catch (err) {
              failures.push(err);
            }
          }
        }),
      );
      if (failures.length > 0) throw failures[0];
      this.host.logger.debug({ forkId, vmId: source.vmId, disksMs, templateMs, launchMs: msSince(t1), children: request.children.length }, 'fork prepared');
      return { forkId, templateId: stage.templateId, disks: stage.disks, incoming: Object.fromEntries([...stage.incoming].map(([id, i]) => [id, i.runtime])) };
    } catch (err) {
      await this.abort(forkId);
      throw err;
    }
  }

  /**
   * Pre-staged fork, step 2, the switch-over: stop the source, save its device state, load it into
   * the source's replacement and run it. If loading fails, the old QEMU (paused, RAM intact) runs on.
   */
  async switchOver(forkId: string): Promise<ForkSwitch> {
    const stage = this.stage(forkId);
    const old = this.host.running(stage.sourceId);
    const replacement = stage.incoming.get(stage.sourceId);
    if (!replacement) throw new OffshootError('FORK_NOT_PREPARED', `fork ${forkId} has no replacement QEMU for its source`, { forkId }, 409);
    stage.wasRunning = (await old.qmp.queryStatus()).running;
    const stoppedAt = performance.now();
    await old.qmp.stop();
    const saveSocket = join(this.host.layout.vmDir(stage.sourceId), `save-${replacement.runtime.instance}.sock`);
    const loadSocket = this.host.layout.vmFiles(stage.sourceId, replacement.runtime.instance).migrationSocket;
    try {
      await saveDeviceState(old.qmp, stage.deviceState, saveSocket, (path) => this.host.access.writableFile(path));
      await loadDeviceState(replacement.vm.qmp, stage.deviceState, loadSocket);
      if (stage.wasRunning) await replacement.vm.qmp.cont();
    } catch (err) {
      if (stage.wasRunning) await old.qmp.cont().catch(() => undefined);
      throw err;
    }
    const stunMs = performance.now() - stoppedAt;
    stage.switched = true;
    stage.incoming.delete(stage.sourceId);
    old.handOver();
    this.host.untrack(stage.sourceId);
    this.host.track(replacement.vm);
    // The switch has happened: what follows is cleanup and must not fail the fork. The old QEMU is
    // paused after a completed migration and writes nothing more. It is told to quit before the switch
    // reports (acknowledged, it ends even if this agent does not live to see it); its end (killed after
    // 5 s), the RAM file's old name (the template holds the same inode) and the template's freeze
    // follow in the background, beside the children's loads or a checkpoint's write (bench checkpoint,
    // quiet, before: a switch-over of 61-69 ms around a 27-32 ms stun). finish() and abort() wait for them.
    const quit = await old.qmp.quit().then(
      () => true,
      () => false,
    );
    stage.cleanup = this.cleanUpOld(stage, old, quit);
    const deviceStateBytes = (await stat(stage.deviceState).catch(() => ({ size: 0 }))).size;
    return { runtime: replacement.runtime, wasRunning: stage.wasRunning, stunMs, deviceStateBytes };
  }

  /** After a switch-over: the old QEMU ends (killed if it did not quit within 5 s), then its RAM file's old name goes and the template is frozen. Never rejects. */
  private async cleanUpOld(stage: StagedFork, old: RunningVm, quit: boolean): Promise<void> {
    try {
      if (quit) await withTimeout(old.process.exited, 5_000, 'QEMU quit').catch(() => killAndWait(old.process.pid, { graceMs: 0 }));
      else await killAndWait(old.process.pid, { graceMs: 0 });
      await keepAlive(old.exited);
      await rm(old.memory.file, { force: true });
      await this.host.templates.freeze(stage.templateId);
    } catch (err) {
      this.host.logger.warn({ vmId: stage.sourceId, err: (err as Error).message }, 'cleanup after a fork switch-over failed');
    }
  }

  /** Pre-staged fork, step 3: a child loads the device state and runs (or stays paused, like the source was). */
  async completeChild(forkId: string, childId: string): Promise<VmRuntime> {
    const stage = this.stage(forkId);
    const child = stage.incoming.get(childId);
    if (!stage.switched || !child) throw new OffshootError('FORK_NOT_PREPARED', `fork ${forkId} has no waiting QEMU for child ${childId}`, { forkId, childId }, 409);
    await loadDeviceState(child.vm.qmp, stage.deviceState, this.host.layout.vmFiles(childId, child.runtime.instance).migrationSocket);
    if (stage.wasRunning) await child.vm.qmp.cont();
    stage.incoming.delete(childId);
    this.host.track(child.vm);
    return child.runtime;
  }

  /** Ends a pre-staged fork: QEMUs still waiting are discarded; before the switch, disks and template are undone. */
  async abort(forkId: string): Promise<void> {
    const stage = this.forks.get(forkId);
    if (!stage) return;
    await stage.cleanup;
    for (const { vm } of stage.incoming.values()) await this.host.discard(vm).catch(() => undefined);
    stage.incoming.clear();
    if (!stage.switched) {
      if (stage.disks && stage.disksRequest) await undoForkDisks(this.host.layout, this.host.access, stage.disksRequest, stage.disks);
      if (stage.templateId) await this.host.templates.remove(stage.templateId);
    }
    await rm(join(this.host.layout.workDir, forkId), { recursive: true, force: true });
    this.forks.delete(forkId);
  }

  /** The frozen RAM and the device state of a fork that has switched over (what a checkpoint writes). */
  artifacts(forkId: string): { templateFile: string; deviceState: string } {
    const stage = this.stage(forkId);
    if (!stage.switched) throw new OffshootError('FORK_NOT_SWITCHED', `fork ${forkId} has not switched over yet`, { forkId }, 409);
    return { templateFile: this.host.templates.path(stage.templateId), deviceState: stage.deviceState };
  }

  /** Forgets a finished pre-staged fork. */
  async finish(forkId: string): Promise<void> {
    await this.abort(forkId);
  }

  private stage(forkId: string): StagedFork {
    const stage = this.forks.get(forkId);
    if (!stage) throw new OffshootError('FORK_NOT_PREPARED', `no prepared fork ${forkId} on this host`, { forkId }, 409);
    return stage;
  }
}
