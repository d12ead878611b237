// Carrying a template to another host (`template place NAME --host H`, and
// `template create --host H…`): the host gets its own copy of the template,
// so its pool's children fork there from local memory and disks. By phase:
//   probe   both hosts: the same accelerator, room for the memory, which of
//           the template's files the destination holds (the default guest is
//           installed there first when the template runs it);
//   plan    each disk's chain by content id (storage/content-plan.ts): the
//           bottom layers the destination holds (same id, under any name)
//           are used where they are; the layers above them are copied; a boot
//           file is used where it is when the destination has it under the
//           same name with the same content id, else copied;
//   copy    each missing file read through a one-file server on the source
//           host (openFileServer) by the destination's copy worker
//           (fetchFile: chunked, verified) into the host's bases
//           (home:bases/<template>-<n>-<name>): the host template keeps them
//           while it exists, a child's chain keeps them while it runs (a
//           claimed child outlives its template), and garbage collection
//           takes them once nothing uses them; a copy keeps its source's
//           content id (the id is of the bytes, the backing name left out),
//           so the host offers it by that id to later moves;
//   memory  the source exports its host template (RAM and device state) into
//           a checkpoint file in its template folder, named by a checkpoint
//           id of its own, the destination fetches it the same way, and both
//           copies of that file go once imported (removeCheckpoint, which
//           removes only a file that names that id);
//   link    each copied qcow2 layer is pointed at the destination's copy of
//           the layer below it (relinkDisk);
//   import  the destination makes its host template from the checkpoint
//           (importTemplate) with the spec as it runs there.
// On any failure the copies go (discardCopy: the file, its progress file and
// lock), then the destination's template folder (removeTemplate: checkpoint,
// the imported template) and its garbage is collected; the source's exported
// file goes too: nothing of the placement is left. The copies are pinned
// under the task while it runs, so no garbage collection takes them midway.
import { randomUUID } from 'node:crypto';
import { OffshootError, toOffshootError } from '../../common/index.ts';
import type { AgentClient, Locator, VmSpec } from '../../protocol/index.ts';
import { guestMemoryBytes, newOperationId, runOperation, templateFolderFile } from '../../protocol/index.ts';
import { peerAddress, planByContent } from '../storage/index.ts';
import type { TaskContext } from '../tasks.ts';
import { taskPinHolder } from '../tasks.ts';
import { EMPTY_POOL, specFiles } from './create-template.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { PlacementFailedError, PlacementRefusedError } from './errors.ts';
import type { TemplatePlacement, TemplateRecord } from './records.ts';

/** What a placement carried, for the task's result. */
export interface CarryReport {
  host: string;
  /** Files copied (source reference on the source host, copy on the destination, bytes moved). */
  copied: Array<{ from: string; to: string; bytes: number }>;
  /** Files the destination held already (by content id), and the file used there. */
  held: Array<{ file: string; as: string }>;
  /** The checkpoint file that carried the memory (bytes moved). */
  memoryFileBytes: number;
  /** ms of each phase: planMs, filesCopyMs, exportMs, memoryCopyMs, linkMs, importMs. */
  phasesMs: Record<string, number>;
}

function baseName(locator: string): string {
  return locator.slice(Math.max(locator.lastIndexOf('/'), locator.indexOf(':')) + 1);
}

/** Copies one file of the source host into `target` on the destination (one-file server there, copy worker here). */
async function fetchOne(deps: FabricDeps, hosts: { source: string; destination: string }, file: Locator, target: Locator, ctx: TaskContext, onBytes: (fraction: number) => void): Promise<number> {
  const source = agentOn(deps, hosts.source);
  const served = await source.openFileServer({ file, peer: peerAddress(deps, hosts.destination, hosts.source) });
  try {
    const result = await runOperation(
      agentOn(deps, hosts.destination),
      'fetchFile',
      { operationId: newOperationId(), source: { url: served.url, token: served.token }, sourceName: file, target },
      { signal: ctx.signal, onProgress: (event) => onBytes(event.progress) },
    );
    if (result.state !== 'done') throw new OffshootError('TASK_CANCELLED', `the copy of ${file} stopped before its end`, { file }, 409);
    return result.bytesCopied;
  } finally {
    await source.closeFileServer({ serverId: served.serverId }).catch((err: unknown) => deps.logger.warn({ err, file }, 'cannot close a file server (it closes by itself when idle)'));
  }
}

/** Refusals before anything moves: the destination ready, another host, the same accelerator, room for the memory. */
type Probe = Awaited<ReturnType<AgentClient['migrationProbe']>>;

async function probe(deps: FabricDeps, template: TemplateRecord, from: TemplatePlacement, hostId: string, spec: VmSpec): Promise<{ here: Probe; there: Probe }> {
  const name = deps.engine.hostName(hostId);
  const host = deps.engine.fleet.hosts().find((h) => h.id === hostId);
  if (!host || host.state !== 'ready') throw new PlacementRefusedError(template.name, name, `the host is ${host?.state ?? 'unknown'}`);
  const files = specFiles(spec).map((file) => ({ file, contentId: true }));
  const [here, there] = await Promise.all([agentOn(deps, from.hostId).migrationProbe({ peer: null, files, installDefaultGuest: false }), agentOn(deps, hostId).migrationProbe({ peer: null, files, installDefaultGuest: spec.defaultGuest })]);
  if (here.accel !== there.accel) throw new PlacementRefusedError(template.name, name, `it runs QEMU with ${there.accel} and the template was frozen under ${here.accel}`);
  if (there.memoryFreeBytes < guestMemoryBytes(spec)) throw new PlacementRefusedError(template.name, name, `it has ${Math.floor(there.memoryFreeBytes / 2 ** 20)} MiB free for guest memory; the template needs ${spec.memoryMiB} MiB`);
  return { here, there };
}

/**
 * Carries the template from its copy `from` to host `hostId` (see the header); returns the new placement, ready, and
 * what moved. On failure nothing of it is left at the destination (PlacementFailedError with the phase).
 */
export async function carryTemplate(deps: FabricDeps, template: TemplateRecord, from: TemplatePlacement, hostId: string, ctx: TaskContext): Promise<{ placement: TemplatePlacement; report: CarryReport }> {
  const spec = from.spec;
  if (!spec || from.state !== 'ready') throw new PlacementRefusedError(template.name, deps.engine.hostName(hostId), `its copy on host ${deps.engine.hostName(from.hostId)} is not ready to be carried`);
  const hostName = deps.engine.hostName(hostId);
  const { here, there } = await probe(deps, template, from, hostId, spec);
  const source = agentOn(deps, from.hostId);
  const destination = agentOn(deps, hostId);
  const hosts = { source: from.hostId, destination: hostId };
  const report: CarryReport = { host: hostName, copied: [], held: [], memoryFileBytes: 0, phasesMs: {} };
  let phase = 'planning what to copy';
  let exported: { file: Locator; drop: () => Promise<unknown> } | undefined;
  const made: Locator[] = [];
  const times = report.phasesMs;
  let mark = performance.now();
  const lap = () => {
    const now = performance.now();
    const ms = Math.round(now - mark);
    mark = now;
    return ms;
  };
  try {
    // plan: where each file of the template will be on the destination.
    const at = new Map<Locator, Locator>();
    const copies: Array<{ from: Locator; to: Locator }> = [];
    const copy = (file: Locator) => {
      if (at.has(file)) return;
      const to = `home:bases/${template.id.slice(0, 8)}-${copies.length}-${baseName(file)}` as Locator;
      copies.push({ from: file, to });
      at.set(file, to);
    };
    const plans = await planByContent(source, destination, { disks: spec.disks.map((d) => ({ id: d.id, backing: [d.file, ...d.backing] })) });
    for (const plan of plans) {
      plan.layers.forEach((layer, i) => {
        const heldAt = i >= plan.layers.length - plan.heldLayers ? plan.destBacking[i - (plan.layers.length - plan.heldLayers)] : undefined;
        if (heldAt) {
          at.set(layer.file, heldAt.file);
          report.held.push({ file: layer.file, as: heldAt.file });
        } else copy(layer.file);
      });
    }
    const bootFiles = spec.boot.kind === 'kernel' ? [spec.boot.kernel, ...(spec.boot.initrd ? [spec.boot.initrd] : [])] : [];
    for (const file of bootFiles) {
      const mine = here.files.find((f) => f.file === file);
      const theirs = there.files.find((f) => f.file === file);
      if (theirs?.exists && theirs.contentId !== null && theirs.contentId === mine?.contentId) {
        at.set(file, file);
        report.held.push({ file, as: file });
      } else copy(file);
    }

    times.planMs = lap();
    // copy: each missing file (pinned under the task until the placement's record names it), then the memory.
    phase = 'copying the template files';
    made.push(...copies.map((c) => c.to));
    await deps.engine.coordinator.store.pins.add(taskPinHolder(ctx.taskId), made, null);
    const sizes = new Map(here.files.map((f) => [f.file, f.allocatedBytes ?? 0]));
    const total = copies.reduce((n, c) => n + (sizes.get(c.from) ?? 0), 0) + guestMemoryBytes(spec);
    let done = 0;
    const progress = (current: number, message: string) => void ctx.progress(Math.min(0.9, 0.05 + (0.85 * (done + current)) / Math.max(1, total)), message);
    for (const c of copies) {
      const bytes = sizes.get(c.from) ?? 0;
      progress(0, `copying ${baseName(c.from)} to host ${hostName}`);
      const moved = await fetchOne(deps, hosts, c.from, c.to, ctx, (f) => progress(f * bytes, `copying ${baseName(c.from)} to host ${hostName}`));
      done += bytes;
      report.copied.push({ from: c.from, to: c.to, bytes: moved });
    }
    times.filesCopyMs = lap();
    phase = 'carrying the template memory';
    const metadata = { schema: 2 as const, checkpointId: randomUUID(), vm: { id: template.sourceVmId, name: template.sourceVmName }, spec, createdAt: new Date().toISOString(), hostId: from.hostId };
    // Both copies of the file name this checkpoint id: removeCheckpoint removes them and nothing else.
    const dropFile = (agent: AgentClient, file: Locator) => agent.removeCheckpoint({ file, checkpointId: metadata.checkpointId, createdAt: metadata.createdAt });
    exported = { file: templateFolderFile(template.id, `carry-${metadata.checkpointId.slice(0, 8)}.ckpt`) as Locator, drop: () => dropFile(source, exported?.file as Locator) };
    progress(0, `writing the template memory into a checkpoint file on host ${deps.engine.hostName(from.hostId)}`);
    await runOperation(source, 'exportTemplate', { templateId: template.id, file: exported.file, metadata }, { signal: ctx.signal });
    times.exportMs = lap();
    const checkpoint = templateFolderFile(template.id, 'memory.ckpt') as Locator;
    report.memoryFileBytes = await fetchOne(deps, hosts, exported.file, checkpoint, ctx, (f) => progress(f * guestMemoryBytes(spec), `copying the template memory to host ${hostName}`));
    times.memoryCopyMs = lap();
    await exported.drop();
    exported = undefined;

    // link: each copied qcow2 layer over the destination's copy of the layer below it.
    phase = 'linking the copied disks';
    for (const plan of plans) {
      for (const [i, layer] of plan.layers.entries()) {
        const below = plan.layers[i + 1];
        const copied = copies.find((c) => c.from === layer.file);
        if (!copied || layer.format !== 'qcow2' || !below) continue;
        await destination.relinkDisk({ file: copied.to, backing: { file: at.get(below.file) as Locator, format: below.format } });
      }
    }

    times.linkMs = lap();
    // import: the host template there, from the checkpoint, with the spec as that host runs it.
    phase = 'loading the template memory on the host';
    await ctx.progress(0.92, `loading the template memory on host ${hostName}`);
    const map = (file: string) => at.get(file) ?? file;
    const destSpec: VmSpec = {
      ...spec,
      disks: spec.disks.map((d) => ({ ...d, file: map(d.file), backing: d.backing.map(map) })),
      boot: spec.boot.kind === 'kernel' ? { ...spec.boot, kernel: map(spec.boot.kernel), ...(spec.boot.initrd ? { initrd: map(spec.boot.initrd) } : {}) } : spec.boot,
    };
    const kept = await runOperation(destination, 'importTemplate', { templateId: template.id, checkpoint, spec: destSpec }, { signal: ctx.signal });
    times.importMs = lap();
    await dropFile(destination, checkpoint).catch((err: unknown) => deps.logger.warn({ err, host: hostName }, 'cannot remove the carried checkpoint file; it goes with the template'));
    const placement: TemplatePlacement = { hostId, state: 'ready', stateReason: null, spec: destSpec, memoryTemplateId: kept.memoryTemplateId, files: specFiles(destSpec), pool: { ...EMPTY_POOL }, poolNote: null, placedAt: new Date().toISOString(), taskId: null };
    return { placement, report };
  } catch (err) {
    // Copies in flight go with their progress files; finished ones are unpinned, and garbage collection takes them.
    for (const file of made) await destination.discardCopy({ target: file }).catch((e: unknown) => deps.logger.warn({ err: e, file }, 'cannot remove a copy of a failed placement; garbage collection takes it'));
    await deps.engine.coordinator.store.pins.remove(taskPinHolder(ctx.taskId), made).catch(() => undefined);
    await undoCarry(deps, template.id, hostId);
    const cause = toOffshootError(err);
    throw cause instanceof PlacementRefusedError ? cause : new PlacementFailedError(template.name, hostName, phase, cause);
  } finally {
    if (exported) await exported.drop().catch((err: unknown) => deps.logger.warn({ err }, 'cannot remove the exported template file; it goes with the template'));
  }
}

/** Removes what a placement made on the host (its template folder: copies, checkpoint, host template), then its garbage. */
export async function undoCarry(deps: FabricDeps, templateId: string, hostId: string): Promise<void> {
  await agentOn(deps, hostId)
    .removeTemplate({ templateId })
    .catch((err: unknown) => deps.logger.warn({ err: toOffshootError(err).message, templateId, host: hostId }, 'cannot remove a failed placement from its host; it goes when the host answers'));
  await deps.engine.collectGarbage(hostId).catch(() => undefined);
}
