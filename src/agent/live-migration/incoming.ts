// The destination of a live migration on this host. prepare() makes
// everything the source needs before anything moves: the target images of
// the disks that are copied (over bases already here when their content ids
// matched, else standalone), a QEMU waiting for the migration (-incoming
// defer, -S) whose RAM is an owned file in the memory folder, TLS from the
// operation's path credential, an NBD server on the path's address with a
// writable export of each target, and migrate-incoming on the path's
// address. A watcher follows QEMU's MIGRATION events: when the VM ran at the
// source, the guest is resumed here (`cont`) as soon as the migration has
// completed, or post-copy has started (the source has then handed over its
// disks and device state). Never earlier: QEMU 7.2's `cont` activates the
// block devices even while a migration is incoming (only then does it merely
// set autostart), which would take a shared disk from a source still writing
// to it. The outcome: the guest runs here (the QEMU becomes the VM's, tracked),
// or the migration failed / the QEMU ended (nothing runs here). abort() removes
// whatever of it is left: the QEMU, its RAM file, the VM's folder here (the
// target images) and the exports (they die with QEMU). Until the guest runs
// here, the source is the VM.
// A group member's destination is prepared with `holdAfter`: when its
// migration completes the QEMU stays paused (-S: QEMU sets `paused`, and with
// late-block-activate its disks stay inactive) and the entry is `held` until
// start() (startIncoming: `cont` activates the disks and runs the guest; the
// QEMU becomes the VM's) or abort(). A held QEMU that ends turns the entry
// `failed`, so a group sees it before its start.
import { readFile, rm, stat, statfs } from 'node:fs/promises';
import { OffshootError, keepAlive, sleep } from '../../common/index.ts';
import { createImage } from '../../qemu/index.ts';
import { pskObjectProperties } from '../../net/index.ts';
import { guestMemoryBytes } from '../../protocol/index.ts';
import type { RunningVm } from '../running-vm.ts';
import type { VmRuntime, VmSpec } from '../types.ts';
import type { MigrationHost } from './host.ts';
import { MIGRATION_PORT, NBD_PORT, MigrationRefusedError } from './host.ts';
import { configureDestination, eventTime, exportDisks, incomingPhases, migrationTimeline, queryMigrate, stopExports } from './qmp-steps.ts';

export interface IncomingDiskRequest {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  sizeBytes: number;
  /** The chain below the new image, nearest first; empty: a standalone image. */
  backing: Array<{ path: string; format: 'qcow2' | 'raw' }>;
}

export interface PrepareIncomingRequest {
  vmId: string;
  name: string;
  /** The VM's spec at this host (its copied disks already named at their targets). */
  spec: VmSpec;
  disks: IncomingDiskRequest[];
  pathId: string;
  postcopy: boolean;
  multifdChannels: number;
  tls: boolean;
  /** The VM ran at the source: run it here as soon as the migration completes. */
  resume: boolean;
  /** Keep the guest paused after the migration completed (disks inactive), until start() (a group's switch-over). */
  holdAfter?: boolean;
}

export interface IncomingOutcome {
  runtime: VmRuntime;
  resumedAt: string | null;
  running: boolean;
}

interface Incoming {
  vm: RunningVm;
  runtime: VmRuntime;
  exports: string[];
  /** held: the migration completed, the guest is kept paused until start() (or abort()). */
  state: 'waiting' | 'held' | 'running' | 'failed';
  outcome: Promise<IncomingOutcome>;
  /** When prepare() made it (a re-adoption leaves a just-prepared destination alone: its task may postdate the controller's view). */
  preparedAt: number;
  /** Set while the guest is being handed to this host's VMs. */
  error: OffshootError | null;
}

export class IncomingMigrations {
  private readonly incoming = new Map<string, Incoming>();

  constructor(private readonly host: MigrationHost) {}

  has(vmId: string): boolean {
    return this.incoming.has(vmId);
  }

  /** VMs with an incoming migration here (waiting, or failed and not yet removed). */
  ids(): string[] {
    return [...this.incoming.keys()];
  }

  /** When the incoming migration of `vmId` was prepared here (ms since the epoch), or null. */
  preparedAt(vmId: string): number | null {
    return this.incoming.get(vmId)?.preparedAt ?? null;
  }

  state(vmId: string): { state: Incoming['state']; pid: number } | null {
    const i = this.incoming.get(vmId);
    return i ? { state: i.state, pid: i.vm.process.pid } : null;
  }

  async prepare(request: PrepareIncomingRequest): Promise<{ runtime: VmRuntime; migration: { host: string; port: number }; nbd: { host: string; port: number } | null; exports: string[]; phasesMs: Record<string, number> }> {
    const { vmId } = request;
    if (this.host.tracked(vmId) || this.incoming.has(vmId)) throw new MigrationRefusedError(`VM ${vmId} already has a QEMU on this host`, { vmId });
    const end = this.host.paths.end(request.pathId, 'server');
    // Where the preparation's time goes (ms since the epoch), logged with it.
    const steps = migrationTimeline(20, 'prepare');
    const files = this.host.layout.vmFiles(vmId);
    if (await stat(files.dir).then(() => true, () => false)) throw new MigrationRefusedError(`files of VM ${vmId} are already on this host (${files.dir}); they go when the host is next reconciled`, { vmId });
    await this.checkRoom(request);
    let launched: { vm: RunningVm; runtime: VmRuntime } | undefined;
    try {
      await this.host.access.ownedDir(files.dir);
      for (const disk of request.disks) {
        const [below] = disk.backing;
        await createImage({ path: disk.path, format: disk.format, sizeBytes: disk.sizeBytes, ...(below ? { backing: below } : {}) });
      }
      steps.mark('disks-created');
      await rm(files.memoryFile, { force: true });
      // A post-copy destination needs userfaultfd (see confinement.ts).
      launched = await this.host.launch(vmId, request.name, request.spec, { memory: { mode: 'owned', file: files.memoryFile, templateId: null }, incoming: true, paused: true, userfaultfd: request.postcopy });
      const { vm } = launched;
      steps.mark('qemu-launched');
      const tls = request.tls ? { objectId: end.credential.id } : null;
      if (tls) await vm.qmp.execute('object-add', pskObjectProperties(end.credential));
      steps.mark('tls-added');
      await configureDestination(vm.qmp, { postcopy: request.postcopy, multifdChannels: request.multifdChannels, tls });
      steps.mark('capabilities-set');
      const exports = request.disks.map((d) => d.id);
      const nbd = exports.length ? { host: end.localAddress, port: NBD_PORT } : null;
      if (nbd) await exportDisks(vm.qmp, nbd, exports, tls);
      steps.mark('exported');
      const events = vm.qmp.events(['MIGRATION', 'RESUME']);
      await vm.qmp.execute('migrate-incoming', { uri: `tcp:${end.localAddress}:${MIGRATION_PORT}` });
      steps.mark('listening');
      const entry: Incoming = { vm, runtime: launched.runtime, exports, state: 'waiting', outcome: Promise.resolve(null as never), error: null, preparedAt: Date.now() };
      entry.outcome = this.watch(vmId, entry, events, request.resume, request.holdAfter ?? false);
      entry.outcome.catch(() => undefined);
      this.incoming.set(vmId, entry);
      this.host.logger.info({ vmId, pid: vm.process.pid, listen: `${end.localAddress}:${MIGRATION_PORT}`, nbd, postcopy: request.postcopy, timeline: steps.entries }, 'waiting for an incoming migration');
      return { runtime: launched.runtime, migration: { host: end.localAddress, port: MIGRATION_PORT }, nbd, exports, phasesMs: incomingPhases(steps.entries) };
    } catch (err) {
      if (launched) await this.host.discard(launched.vm).catch(() => undefined);
      await rm(files.dir, { recursive: true, force: true });
      await rm(files.memoryFile, { force: true });
      throw err;
    }
  }

  /** Room for the VM's RAM in the memory folder and for the disk images (their virtual size, at most) here. */
  private async checkRoom(request: PrepareIncomingRequest): Promise<void> {
    const free = async (path: string) => {
      const s = await statfs(path).catch(() => undefined);
      return s ? s.bavail * s.bsize : Number.POSITIVE_INFINITY;
    };
    const ram = guestMemoryBytes(request.spec);
    const memoryFree = await free(this.host.layout.memoryDir);
    if (memoryFree < ram) throw new OffshootError('NO_SPACE', `the memory folder of this host has ${memoryFree} bytes free, the VM's RAM needs ${ram}`, { needed: ram, free: memoryFree, where: 'memory' }, 507);
  }

  /** Follows the incoming QEMU until the guest runs here, or the migration fails or the QEMU ends. */
  private async watch(vmId: string, entry: Incoming, events: ReturnType<RunningVm['qmp']['events']>, runAfter: boolean, holdAfter: boolean): Promise<IncomingOutcome> {
    const { vm } = entry;
    // Held: QEMU (started with -S) completes the migration and stays paused, its disks inactive (late-block-activate).
    const resume = runAfter && !holdAfter;
    let resumedAt: string | null = null;
    let completed = false;
    let contSent = false;
    // When each step happened (ms since the epoch; QEMU's events at their own timestamps), logged with the outcome.
    const timeline = migrationTimeline(50);
    const mark = timeline.mark;
    const resumeNow = async () => {
      if (!resume || contSent) return;
      contSent = true;
      mark('cont-sent');
      await vm.qmp.cont();
      mark('cont-done');
    };
    const ended = vm.exited.then((e) => e);
    try {
      while (true) {
        const next = await Promise.race([events.next(), ended.then(() => 'exited' as const)]);
        if (next === 'exited' || next.done) {
          const exit = await ended;
          throw new OffshootError('MIGRATION_FAILED', `the destination QEMU of VM ${vmId} ended before the guest ran here: ${exit.reason}`, { vmId, step: 'incoming' }, 500);
        }
        const event = next.value;
        timeline.event(event);
        if (event.event === 'RESUME') resumedAt = eventTime(event);
        const status = (event.data as { status?: string } | undefined)?.status;
        if (status === 'failed') {
          // QEMU says why (e.g. a section it could not load): kept in the error so a failure can be told apart.
          const why = (await queryMigrate(vm.qmp).catch(() => null))?.errorDesc ?? (await qemuLogTail(this.host.layout.vmFiles(vmId).qemuLog));
          throw new OffshootError('MIGRATION_FAILED', `the incoming migration of VM ${vmId} failed on this host${why ? `: ${why}` : ''}`, { vmId, step: 'incoming', ...(why ? { qemuError: why } : {}) }, 500);
        }
        // Post-copy: the guest runs here while its remaining pages arrive on demand.
        if (status === 'postcopy-active') await resumeNow();
        if (status === 'completed') {
          completed = true;
          await resumeNow();
        }
        if (completed && (!resume || resumedAt)) break;
      }
    } catch (err) {
      entry.state = 'failed';
      entry.error = err as OffshootError;
      throw err;
    } finally {
      events.close();
    }
    await stopExports(vm.qmp, entry.exports);
    mark('exports-stopped');
    if (holdAfter) {
      entry.state = 'held';
      // A held QEMU that ends (killed) can no longer be started: the group sees it failed before its start.
      void vm.exited.then(() => {
        if (entry.state === 'held') entry.state = 'failed';
      });
      this.host.logger.info({ vmId, pid: vm.process.pid }, 'incoming migration completed; the guest is held paused until started');
      return { runtime: entry.runtime, resumedAt: null, running: false };
    }
    // The guest runs here (or stays paused, as it was): this QEMU is the VM's now.
    entry.state = 'running';
    this.host.track(vm);
    mark('tracked');
    this.host.logger.info({ vmId, pid: vm.process.pid, resumedAt, timeline: timeline.entries }, 'incoming migration completed; the VM runs here');
    return { runtime: entry.runtime, resumedAt, running: resume };
  }

  /** Waits for the outcome (the guest runs here, or why not); the entry stays until abort() or forget(). */
  async await(vmId: string, signal: AbortSignal): Promise<IncomingOutcome> {
    const entry = this.incoming.get(vmId);
    if (!entry) throw new MigrationRefusedError(`no incoming migration of VM ${vmId} on this host`, { vmId });
    const aborted = new Promise<never>((_, reject) => {
      if (signal.aborted) reject(signal.reason);
      signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
    aborted.catch(() => undefined);
    const outcome = await Promise.race([entry.outcome, aborted]);
    if (entry.state !== 'held') this.incoming.delete(vmId);
    return outcome;
  }

  /** startIncoming: a held guest (its migration completed, kept paused) runs here now; this QEMU becomes the VM's. */
  async start(vmId: string): Promise<IncomingOutcome> {
    const entry = this.incoming.get(vmId);
    if (!entry || entry.state !== 'held') throw new MigrationRefusedError(`no incoming migration of VM ${vmId} is held on this host${entry ? ` (it is ${entry.state})` : ''}`, { vmId, state: entry?.state ?? null });
    const { vm } = entry;
    const events = vm.qmp.events(['RESUME']);
    const askedAt = Date.now();
    try {
      // cont activates the disks (late-block-activate) and runs the guest.
      await vm.qmp.cont();
      const contAnsweredAt = Date.now();
      const resumed = await Promise.race([events.next(), vm.exited.then(() => 'exited' as const), sleep(10_000).then(() => 'timeout' as const)]);
      if (resumed === 'exited' || resumed === 'timeout' || resumed.done) throw new OffshootError('MIGRATION_FAILED', `the held guest of VM ${vmId} did not run here (${typeof resumed === 'string' ? resumed : 'no RESUME event'})`, { vmId, step: 'start' }, 500);
      entry.state = 'running';
      this.incoming.delete(vmId);
      this.host.track(vm);
      const resumedAt = eventTime(resumed.value);
      // Where a group's start went (its destinations resume about together): the call, cont's answer, the guest's RESUME.
      this.host.logger.info({ vmId, pid: vm.process.pid, resumedAt, askedAt: new Date(askedAt).toISOString(), contMs: contAnsweredAt - askedAt, resumeMs: Date.parse(resumedAt) - askedAt }, 'held incoming guest started; the VM runs here');
      return { runtime: entry.runtime, resumedAt, running: true };
    } catch (err) {
      if (err instanceof OffshootError) throw err;
      throw new OffshootError('MIGRATION_FAILED', `the held guest of VM ${vmId} could not be started: ${(err as Error).message}`, { vmId, step: 'start' }, 500);
    } finally {
      events.close();
    }
  }

  /** Removes an incoming migration that did not make the guest run here: its QEMU, RAM file and files. */
  async abort(vmId: string): Promise<boolean> {
    const entry = this.incoming.get(vmId);
    if (entry?.state === 'running' || (!entry && this.host.tracked(vmId))) {
      throw new OffshootError('ILLEGAL_STATE', `VM ${vmId} already runs on this host: its migration completed`, { vmId, state: 'running', required: ['waiting', 'failed'] }, 409);
    }
    const files = this.host.layout.vmFiles(vmId);
    let removed = false;
    if (entry) {
      this.incoming.delete(vmId);
      entry.vm.handOver();
      await this.host.discard(entry.vm).catch(() => undefined);
      await keepAlive(entry.vm.exited);
      removed = true;
    }
    // Files of a destination whose agent restarted (the QEMU, if it still ran, is an orphan to reap).
    if (await stat(files.dir).then(() => true, () => false)) removed = true;
    await rm(files.dir, { recursive: true, force: true });
    await rm(files.memoryFile, { force: true });
    return removed;
  }

  /** A waiting QEMU's run state (recovery). */
  async runState(vmId: string): Promise<string | null> {
    const entry = this.incoming.get(vmId);
    if (!entry) return null;
    return (await entry.vm.qmp.queryStatus().catch(() => undefined))?.status ?? null;
  }

  /** Incoming migrations still waiting (kept from garbage collection and orphan reaping). */
  busy(vmId: string): boolean {
    const state = this.incoming.get(vmId)?.state;
    return state === 'waiting' || state === 'held';
  }

  /** At agent close: nothing to do (a waiting QEMU is an orphan for the next agent, which reaps it). */
  async close(): Promise<void> {
    await sleep(0);
  }
}

/** The last lines QEMU wrote to its log (QEMU 7.2 reports why an incoming migration failed only there), or undefined. */
async function qemuLogTail(path: string): Promise<string | undefined> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const lines = text.split('\n').filter((l) => l.trim() && !l.startsWith('---'));
  return lines.length > 0 ? lines.slice(-8).join(' | ').slice(0, 1200) : undefined;
}
