// Host templates (the elastic fabric's part of a host; see
// protocol/calls-fabric.ts): a frozen guest children can be spawned from at
// any time, with no parent running. Each lives in <home>/fabric/<id>/:
//   template.json  its manifest: the memory template its children map, the
//                  files its spec names (kept while it exists), sizes
//   devstate       QEMU's device state saved at the freeze
//   *.ckpt         a checkpoint file of the template's memory while a
//                  controller carries it to or from this host (removed once
//                  imported; the frozen disks and boot files it copies go
//                  into the host's bases, see vm/fabric/place.ts)
// Made from a fork that switched over (keep: the fork's device state is
// copied, its memory template is the fork's) or from a checkpoint file
// (import: the checkpoint's pages written into a new memory template, zero
// pages left as holes, so the tmpfs file holds only what the guest used).
// A child (spawn) gets a qcow2 delta over each frozen disk in its VM folder,
// a QEMU mapping the memory template privately (share=off) that waits for
// the device state, loads it and runs or stays paused. While a manifest
// exists, its memory template and files are never released (kept()); remove
// drops the folder, and garbage collection takes the rest once nothing maps
// or uses it.
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, join } from 'node:path';
import PQueue from 'p-queue';
import { OffshootError, parseJsonOr, writeFileAtomic } from '../common/index.ts';
import type { CheckpointMetadata, WriteProgress } from '../memory/index.ts';
import { CheckpointReader } from '../memory/index.ts';
import { guestMemoryBytes } from '../protocol/index.ts';
import { restoreDisks, writeCheckpointFile } from './checkpoint-files.ts';
import { armHandOut, handOutInGuest, isArmedHandOut } from './fabric-hand-out.ts';
import type { ArmedHandOut, HandOutGuestRequest, HandOutGuestResult } from './fabric-hand-out.ts';

/**
 * What a hand-out gives the child: the guest step's request (fabric-hand-out.ts) without the VM id; `arm`: a pool
 * child's warm-up, armed again after it.
 */
export type HandOutRequest = Omit<HandOutGuestRequest, 'vmId'> & { arm?: boolean };

/**
 * ms of a hand-out: waiting for its turn, resume, the guest step (and inside it: the guest-agent connection, the
 * identity; for a script its guest-exec, until its exit was seen; polls); totalMs counts the wait.
 */
export interface HandOutTimings {
  queuedMs?: number;
  resumeMs: number;
  guestMs: number;
  totalMs: number;
  agentMs?: number;
  /** Whether the child's guest had a waiter armed for its hand-out. */
  armed?: boolean;
  identityMs?: number;
  execMs?: number;
  exitMs?: number;
  polls?: number;
}
import type { StagingHost } from './fork-stager.ts';
import type { RunningVm } from './running-vm.ts';
import { loadDeviceState } from './migration.ts';
import type { VmRuntime, VmSpec } from './types.ts';

/**
 * How many hand-outs (resume and guest step) run at once on this host: one per host CPU; the others wait for their
 * turn, claims before a refill's warm-ups (`arm`), each kind in order. The guest step is CPU work in the child's QEMU
 * (its vCPU serves the guest agent: ~10 ms for a warm child alone, ~17 ms each in a wave, under TCG), so hand-outs
 * started all at once share the CPUs and all end near the end of the wave: 20 warm claims at once on 2 CPUs ended at
 * p50 178 ms, p99 227 ms (sequential: 12 ms). In turn, the k-th ends after about k / CPUs guest steps. A hand-out
 * whose guest agent does not answer keeps its turn until its timeout (a pool child answered its readiness check, so
 * that is rare).
 */
const HAND_OUTS_AT_ONCE = Math.max(1, availableParallelism());

/** What a host template keeps about itself (template.json). */
interface Manifest {
  version: 1;
  templateId: string;
  memoryTemplateId: string;
  memoryBytes: number;
  deviceStateBytes: number;
  /** Host paths the template's spec names (frozen disks, their chains, kernel, initrd). */
  files: string[];
  createdAt: string;
}

export interface HostTemplateInfo {
  templateId: string;
  memoryTemplateId: string;
  memoryBytes: number;
  deviceStateBytes: number;
}

/** A host template that is not here (never made, removed, or its memory or device state gone). HTTP 409. */
export class TemplateMissingError extends OffshootError {
  constructor(templateId: string, what: string) {
    super('TEMPLATE_MISSING', `host template ${templateId} cannot be used here: ${what}`, { templateId, what }, 409);
  }
}

/** What host templates need of the host agent: the staging host of forks, and a switched fork's artifacts. */
export interface FabricHost extends StagingHost {
  forkArtifacts(forkId: string): { templateFile: string; deviceState: string };
}

/**
 * TCG translation buffer (MiB) of a template's child (QEMU's tb-size; KVM has none). The child's fill (device
 * state loaded, identity, the claim's guest step run once) translates about 18 MiB of code: with the 16 MiB
 * of other derived VMs the buffer was flushed 2-3 times meanwhile and the first claim translated again about
 * 4 MiB of it; with 32 MiB the fill ends unflushed and a claim finds its code translated (the buffer's pages
 * are touched only as code is written, so a child holds what it translated, not the whole buffer).
 */
export const CHILD_TCG_TB_MIB = 32;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Every file a spec names (disks, their chains, kernel and initrd). */
export function specFiles(spec: VmSpec): string[] {
  const files = spec.disks.flatMap((d) => [d.path, ...d.backing]);
  if (spec.boot.kind === 'kernel') files.push(spec.boot.kernel, ...(spec.boot.initrd ? [spec.boot.initrd] : []));
  return [...new Set(files)];
}

export class HostTemplates {
  private cache: Map<string, Manifest> | undefined;
  /**
   * What is armed in each running child's guest for its hand-out (it goes with its QEMU). Also recorded in the
   * child's folder (armedFile), where an agent that restarted finds it.
   */
  private readonly armed = new WeakMap<RunningVm, ArmedHandOut>();
  /** The hand-outs' turns on this host (HAND_OUTS_AT_ONCE; claims first). */
  private readonly handOutTurns = new PQueue({ concurrency: HAND_OUTS_AT_ONCE });

  constructor(private readonly host: FabricHost) {}

  get root(): string {
    return join(this.host.layout.home, 'fabric');
  }

  folder(templateId: string): string {
    if (!UUID.test(templateId)) throw new OffshootError('INVALID_INPUT', `"${templateId}" is not a template id`, { templateId }, 400);
    return join(this.root, templateId);
  }

  private deviceStateFile(templateId: string): string {
    return join(this.folder(templateId), 'devstate');
  }

  /** A switched-over fork's frozen RAM and device state, kept as host template `templateId`. */
  async keep(forkId: string, templateId: string, spec: VmSpec): Promise<HostTemplateInfo> {
    const artifacts = this.host.forkArtifacts(forkId);
    const memoryTemplateId = basename(artifacts.templateFile).replace(/\.ram$/, '');
    const dir = this.folder(templateId);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    try {
      await copyFile(artifacts.deviceState, this.deviceStateFile(templateId));
      // memoryMiB plus memoryExtraKiB (8 KiB more on a TCG host, see qemu/argv.ts): the RAM file's size.
      const memoryBytes = guestMemoryBytes(spec);
      const deviceStateBytes = (await stat(this.deviceStateFile(templateId))).size;
      return await this.write({ version: 1, templateId, memoryTemplateId, memoryBytes, deviceStateBytes, files: specFiles(spec), createdAt: new Date().toISOString() });
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * A host template from a checkpoint file: its pages written into a new memory template (frozen), its
   * device state kept. `spec` is the template as this host runs it (its files here).
   */
  async import(templateId: string, checkpointPath: string, spec: VmSpec): Promise<HostTemplateInfo> {
    const reader = await CheckpointReader.open(checkpointPath);
    const memoryTemplateId = randomUUID();
    const ram = this.host.templates.path(memoryTemplateId);
    const dir = this.folder(templateId);
    try {
      if (reader.memoryBytes !== guestMemoryBytes(spec)) throw new OffshootError('INVALID_INPUT', `checkpoint ${checkpointPath} holds ${reader.memoryBytes} bytes of memory, but the template's spec has ${guestMemoryBytes(spec)} bytes (${spec.memoryMiB} MiB)`, { checkpoint: checkpointPath }, 400);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await this.host.access.ownedDir(this.host.templates.dir);
      await reader.restoreInto(ram);
      await this.host.templates.freeze(memoryTemplateId);
      await writeFile(this.deviceStateFile(templateId), reader.deviceState, { mode: 0o600 });
      return await this.write({ version: 1, templateId, memoryTemplateId, memoryBytes: reader.memoryBytes, deviceStateBytes: reader.deviceState.length, files: specFiles(spec), createdAt: new Date().toISOString() });
    } catch (err) {
      await rm(ram, { force: true });
      await rm(dir, { recursive: true, force: true });
      throw err;
    } finally {
      await reader.close();
    }
  }

  /**
   * Writes a host template's RAM and device state into a new checkpoint file (never over an existing one), named by
   * the metadata's checkpointId when it has one (so its writer can remove it, and a copy of it, with removeCheckpoint).
   */
  async export(templateId: string, path: string, metadata: CheckpointMetadata, onProgress?: (p: WriteProgress) => void, signal?: AbortSignal): Promise<{ fileBytes: number; storedPages: number }> {
    const manifest = await this.usable(templateId);
    return writeCheckpointFile({ templateFile: this.host.templates.path(manifest.memoryTemplateId), deviceState: this.deviceStateFile(templateId) }, path, typeof metadata.checkpointId === 'string' ? metadata.checkpointId : randomUUID(), manifest.memoryBytes, metadata, onProgress, signal);
  }

  /**
   * Starts a child of the template: deltas over the frozen disks in its VM folder, a QEMU mapping the
   * memory template copy-on-write that loads the device state; running if `run`, else paused. Nothing is
   * left if it fails.
   */
  async spawn(templateId: string, vmId: string, name: string, spec: VmSpec, run: boolean): Promise<{ runtime: VmRuntime; spec: VmSpec }> {
    const manifest = await this.usable(templateId);
    const dir = this.host.layout.vmDir(vmId);
    const t0 = performance.now();
    try {
      await mkdir(dir, { recursive: true });
      const child: VmSpec = { ...spec, disks: await restoreDisks(dir, spec) };
      const memory = { mode: 'derived' as const, file: this.host.templates.path(manifest.memoryTemplateId), templateId: manifest.memoryTemplateId };
      const { vm, runtime } = await this.host.launch(vmId, name, child, { memory, incoming: true, paused: true, tcgTranslationMiB: CHILD_TCG_TB_MIB });
      const started = performance.now();
      try {
        await loadDeviceState(vm.qmp, this.deviceStateFile(templateId), this.host.layout.vmFiles(vmId, vm.instance).migrationSocket);
        if (run) await vm.qmp.cont();
      } catch (err) {
        await this.host.discard(vm);
        throw err;
      }
      this.host.track(vm);
      this.host.logger.info({ vmId, templateId, run, launchMs: Math.round(started - t0), loadMs: Math.round(performance.now() - started) }, 'spawned a child of a host template');
      return { runtime, spec: child };
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Readies a child for its claimer: resumed if paused, then the guest step (hostname, clock, entropy,
   * the customisation script; see fabric-hand-out.ts), through what is armed in its guest when it is armed
   * (known to this agent, or recorded by the one before it). With `arm` (a pool child's warm-up), the step
   * itself goes the armed way, and the child is armed again for the next hand-out. A guest agent that does
   * not answer is a failed hand-out (ok: false), never a thrown error.
   */
  async handOut(vmId: string, resume: boolean, request: HandOutRequest): Promise<Omit<HandOutGuestResult, 'steps'> & { timings: HandOutTimings }> {
    const queued = performance.now();
    return this.handOutTurns.add(() => this.handOutNow(vmId, resume, request, queued), { priority: request.arm ? 0 : 1 });
  }

  /** A hand-out in its turn (HAND_OUTS_AT_ONCE); `queued` is when it was asked for. */
  private async handOutNow(vmId: string, resume: boolean, request: HandOutRequest, queued: number): Promise<Omit<HandOutGuestResult, 'steps'> & { timings: HandOutTimings }> {
    const t0 = performance.now();
    const vm = this.host.running(vmId);
    // Taken for this hand-out whatever its outcome (a record read back is used once, like the one in memory).
    let armed = this.armed.get(vm) ?? (await this.recordedArmed(vmId));
    this.armed.delete(vm);
    // The record goes beside the guest step, not before it (awaited before a new one is written).
    const forgotten = armed ? rm(this.armedFile(vmId), { force: true }).catch(() => undefined) : undefined;
    if (resume) await vm.qmp.cont();
    const resumed = performance.now();
    let result: Omit<HandOutGuestResult, 'steps'>;
    let steps: HandOutGuestResult['steps'] | undefined;
    let agentMs = 0;
    const { arm, ...guestRequest } = request;
    try {
      const qga = await vm.guestAgent(request.timeoutMs);
      agentMs = performance.now() - resumed;
      // A warm-up goes the way its claim will (armed), so under TCG that code is translated by then.
      if (arm && !armed) armed = await armHandOut(qga, vmId, request.timeoutMs);
      ({ steps, ...result } = await handOutInGuest(qga, { ...guestRequest, vmId }, armed));
      if (arm && result.ok) {
        const next = await armHandOut(qga, vmId, request.timeoutMs);
        await forgotten;
        await writeFileAtomic(this.armedFile(vmId), `${JSON.stringify(next)}\n`);
        this.armed.set(vm, next);
      }
    } catch (err) {
      vm.dropGuestAgent();
      result = { ok: false, error: `the guest agent did not answer: ${(err as Error).message}`, script: null };
    }
    await forgotten;
    const done = performance.now();
    return { ...result, timings: { queuedMs: t0 - queued, resumeMs: resumed - t0, guestMs: done - resumed, totalMs: done - queued, ...(steps ? { agentMs, ...steps } : {}) } };
  }

  /** Where a child's armed hand-out is recorded (qemu-ga's handles and the waiter's pid: they outlive this process). */
  private armedFile(vmId: string): string {
    return join(this.host.layout.vmDir(vmId), 'hand-out.json');
  }

  /** The armed hand-out recorded for a child by this agent or one before it, if any. */
  private async recordedArmed(vmId: string): Promise<ArmedHandOut | undefined> {
    const recorded = parseJsonOr<unknown>(await readFile(this.armedFile(vmId), 'utf8').catch(() => ''), null);
    return isArmedHandOut(recorded) ? recorded : undefined;
  }

  /** Whether the template, its memory and device state, and the given files (host paths) are there. */
  async status(templateId: string, files: string[]): Promise<{ present: boolean; missing: string[]; memoryBytes: number | null }> {
    const missing: string[] = [];
    const manifest = await this.manifest(templateId);
    if (!manifest) return { present: false, missing: [`host template ${templateId}`], memoryBytes: null };
    const ram = await stat(this.host.templates.path(manifest.memoryTemplateId)).catch(() => undefined);
    if (!ram) missing.push(`memory template ${manifest.memoryTemplateId}`);
    if (!(await exists(this.deviceStateFile(templateId)))) missing.push('device state');
    for (const f of files) if (!(await exists(f))) missing.push(f);
    return { present: true, missing, memoryBytes: ram ? ram.blocks * 512 : null };
  }

  /** Forgets the template: its folder goes (its memory template and files are released by garbage collection once unused). */
  async remove(templateId: string): Promise<void> {
    await rm(this.folder(templateId), { recursive: true, force: true });
    this.cache?.delete(templateId);
  }

  /** What the host's templates need kept: their memory templates and the files their specs name. */
  async kept(): Promise<{ templates: Set<string>; files: Set<string> }> {
    const manifests = await this.all();
    return { templates: new Set(manifests.map((m) => m.memoryTemplateId)), files: new Set(manifests.flatMap((m) => m.files)) };
  }

  private async usable(templateId: string): Promise<Manifest> {
    const manifest = await this.manifest(templateId);
    if (!manifest) throw new TemplateMissingError(templateId, 'it is not on this host');
    if (!(await exists(this.host.templates.path(manifest.memoryTemplateId)))) throw new TemplateMissingError(templateId, `its memory (template ${manifest.memoryTemplateId}) is gone`);
    if (!(await exists(this.deviceStateFile(templateId)))) throw new TemplateMissingError(templateId, 'its device state is gone');
    return manifest;
  }

  private async manifest(templateId: string): Promise<Manifest | undefined> {
    return (await this.load()).get(templateId);
  }

  private async all(): Promise<Manifest[]> {
    return [...(await this.load()).values()];
  }

  private async load(): Promise<Map<string, Manifest>> {
    if (this.cache) return this.cache;
    const found = new Map<string, Manifest>();
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!UUID.test(name)) continue;
      const manifest = parseJsonOr<Manifest | null>(await readFile(join(this.root, name, 'template.json'), 'utf8').catch(() => ''), null);
      if (manifest?.version === 1 && manifest.templateId === name) found.set(name, manifest);
    }
    this.cache = found;
    return found;
  }

  private async write(manifest: Manifest): Promise<HostTemplateInfo> {
    await writeFileAtomic(join(this.folder(manifest.templateId), 'template.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    (await this.load()).set(manifest.templateId, manifest);
    return { templateId: manifest.templateId, memoryTemplateId: manifest.memoryTemplateId, memoryBytes: manifest.memoryBytes, deviceStateBytes: manifest.deviceStateBytes };
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

