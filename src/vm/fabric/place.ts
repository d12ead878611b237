// Carrying a template to another host (`template place NAME --host H`, and
// `template create --host H…`): the host gets its own copy of the template,
// so its pool's children fork there from local memory and disks. By phase:
//   probe, plan  (place-plan.ts) refusals before anything moves; which files
//           the destination holds by content id (used where they are) and
//           which it gets, into the host's bases
//           (home:bases/<template>-<n>-<name>): the host template keeps them
//           while it exists, a child's chain keeps them while it runs (a
//           claimed child outlives its template), and garbage collection
//           takes them once nothing uses them; a copy keeps its source's
//           content id (the id is of the bytes, the backing name left out),
//           so the host offers it by that id to later moves;
//   copy    (place-copy.ts) the files as a copy job of purpose `place` on the
//           destination, each read through a one-file server on the source;
//           meanwhile the source exports its host template (RAM and device
//           state) into a checkpoint file in its template folder, named by a
//           checkpoint id of its own, and a second `place` job carries it into
//           the destination's template folder; both copies of that file go
//           once imported (removeCheckpoint removes only a file that names
//           that id). The jobs show in `job list/show` and the task's progress
//           follows theirs; they can be paused and resumed there (a job move
//           is refused: the copies land in the destination's own folder);
//   link    each copied qcow2 layer is pointed at the destination's copy of
//           the layer below it (relinkDisk);
//   import  the destination makes its host template from the checkpoint
//           (importTemplate) with the spec as it runs there.
// A `template place` task journals the plan and its jobs (PlaceJournal): a
// controller that takes it over (its controller died) while the files travel
// goes on (resumeCarry: the jobs are taken over with their own tasks; an
// export cut short is made again); one that died after the copies (linking,
// importing: seconds) is removed. A cancel of the task cancels its jobs. On
// any failure or cancel nothing of the placement is left: its jobs cancelled
// (copies, progress files and locks removed; their rows end `cancelled`), the
// copies of finished ones discarded, the exported file removed from the
// source, then the destination's template folder (removeTemplate: checkpoint,
// the imported template) and its garbage collected. The copies are pinned
// under the task while it runs, so no garbage collection takes them midway.
import { randomUUID } from 'node:crypto';
import { OffshootError, toOffshootError } from '../../common/index.ts';
import type { Locator, VmSpec } from '../../protocol/index.ts';
import { newOperationId, runOperation, templateFolderFile } from '../../protocol/index.ts';
import type { CopyJobRecord, PlacedMemory } from '../storage/index.ts';
import type { TaskContext } from '../tasks.ts';
import { taskPinHolder } from '../tasks.ts';
import { EMPTY_POOL, specFiles } from './create-template.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { PlacementFailedError, PlacementRefusedError } from './errors.ts';
import { dropExport, dropPlaceJobs, followJobs, movedBytes, submitPlaceJob } from './place-copy.ts';
import type { PlaceJobPurpose } from './place-copy.ts';
import { planCarry } from './place-plan.ts';
import type { CarryPlan } from './place-plan.ts';
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
  /** The copy jobs that carried the files and the memory (`job show ID`). */
  copyJobs: string[];
  /** ms of each phase: planMs, exportMs (beside the files' copy), copyMs (until both jobs are done), linkMs, importMs. */
  phasesMs: Record<string, number>;
}

/** What a controller taking a placement over needs (the task's journal): plain data. */
export interface PlaceJournal {
  templateId: string;
  template: string;
  /** The source host (its copy is carried) and the destination. */
  fromHostId: string;
  hostId: string;
  /** The source VM and spec, named in the exported file's metadata. */
  source: { vmId: string; vmName: string; spec: VmSpec };
  plan: CarryPlan;
  /** copying: the jobs may run (resumed on takeover); importing: linking and importing (removed on takeover). */
  phase: 'copying' | 'importing';
  filesJobId: string | null;
  /** The exported checkpoint file (its writer's operation, whether it finished), and the job carrying it. */
  memory: (PlacedMemory & { operationId: string; exported: boolean }) | null;
  memoryJobId: string | null;
}

/** How a placement runs: its journal (a `template place` task's; none inside `template create`), and its cancel. */
export interface CarryOptions {
  journal?: (journal: PlaceJournal) => Promise<void>;
  /** Aborted by a cancel of the task: the jobs are cancelled and nothing is left. */
  cancel?: AbortSignal;
}

/**
 * Carries the template from its copy `from` to host `hostId` (see the header); returns the new placement, ready, and
 * what moved. On failure nothing of it is left at the destination (PlacementFailedError with the phase).
 */
export async function carryTemplate(deps: FabricDeps, template: TemplateRecord, from: TemplatePlacement, hostId: string, ctx: TaskContext, options: CarryOptions = {}): Promise<{ placement: TemplatePlacement; report: CarryReport }> {
  const spec = from.spec;
  if (!spec || from.state !== 'ready') throw new PlacementRefusedError(template.name, deps.engine.hostName(hostId), `its copy on host ${deps.engine.hostName(from.hostId)} is not ready to be carried`);
  const t0 = performance.now();
  const plan = await planCarry(deps, template, from, spec, hostId);
  const journal: PlaceJournal = { templateId: template.id, template: template.name, fromHostId: from.hostId, hostId, source: { vmId: template.sourceVmId, vmName: template.sourceVmName, spec }, plan, phase: 'copying', filesJobId: null, memory: null, memoryJobId: null };
  return carry(deps, journal, ctx, options, { planMs: Math.round(performance.now() - t0) });
}

/** Goes on with a placement a controller took over (its journal in the copying phase): see the header. */
export function resumeCarry(deps: FabricDeps, journal: PlaceJournal, ctx: TaskContext, options: CarryOptions = {}): Promise<{ placement: TemplatePlacement; report: CarryReport }> {
  return carry(deps, journal, ctx, options, {});
}

async function carry(deps: FabricDeps, j: PlaceJournal, ctx: TaskContext, options: CarryOptions, times: Record<string, number>): Promise<{ placement: TemplatePlacement; report: CarryReport }> {
  const hostName = deps.engine.hostName(j.hostId);
  const source = agentOn(deps, j.fromHostId);
  const destination = agentOn(deps, j.hostId);
  const record = async () => options.journal?.(j);
  const cancel = options.cancel ?? new AbortController().signal;
  const signal = AbortSignal.any([ctx.signal, cancel]);
  const checkpoint = templateFolderFile(j.templateId, 'memory.ckpt') as Locator;
  const purpose = (memory: PlacedMemory | null): PlaceJobPurpose => ({ kind: 'place', templateId: j.templateId, template: j.template, taskId: ctx.taskId, memory });
  const made = [...j.plan.copies.map((c) => c.to), checkpoint];
  let phase = 'copying the template files';
  let mark = performance.now();
  const lap = (name: string) => {
    const now = performance.now();
    times[name] = Math.round(now - mark);
    mark = now;
  };
  try {
    if (signal.aborted) throw signal.reason;
    // copy: the files' job at once (its copies pinned under the task until the placement's record names them).
    await deps.engine.coordinator.store.pins.add(taskPinHolder(ctx.taskId), made, null);
    if (!j.filesJobId && j.plan.copies.length > 0) {
      j.filesJobId = (await submitPlaceJob(deps, purpose(null), j.hostId, j.fromHostId, j.plan.copies)).id;
      await record();
    }
    // ... and meanwhile the memory: exported (again, when an export was cut short) into a file a second job carries.
    if (!j.memoryJobId) {
      phase = 'carrying the template memory';
      if (j.memory && !j.memory.exported) await dropExport(deps, j.memory, true).catch(() => undefined);
      if (!j.memory?.exported) {
        const checkpointId = randomUUID();
        j.memory = { hostId: j.fromHostId, file: templateFolderFile(j.templateId, `carry-${checkpointId.slice(0, 8)}.ckpt`) as Locator, checkpointId, createdAt: new Date().toISOString(), operationId: newOperationId(), exported: false };
        await record();
        await ctx.progress(0.05, `writing the template memory into a checkpoint file on host ${deps.engine.hostName(j.fromHostId)}`);
        const metadata = { schema: 2 as const, checkpointId, vm: { id: j.source.vmId, name: j.source.vmName }, spec: j.source.spec, createdAt: j.memory.createdAt, hostId: j.fromHostId };
        await runOperation(source, 'exportTemplate', { operationId: j.memory.operationId, templateId: j.templateId, file: j.memory.file, metadata }, { signal });
        j.memory.exported = true;
        lap('exportMs');
      }
      const { operationId: _op, exported: _done, ...memory } = j.memory;
      j.memoryJobId = (await submitPlaceJob(deps, purpose(memory), j.hostId, j.fromHostId, [{ from: memory.file, to: checkpoint }])).id;
      await record();
    }
    await deps.faults?.('template.copying');
    phase = 'copying the template files';
    const ids = [j.filesJobId, j.memoryJobId].filter((id): id is string => id !== null);
    const jobs: CopyJobRecord[] = await followJobs(deps, ids, j.plan, hostName, signal, (f, message, detail) => void ctx.progress(0.05 + 0.85 * f, message, detail).catch(() => undefined));
    lap('copyMs');
    if (j.memory) await dropExport(deps, j.memory, false).catch((err: unknown) => deps.logger.warn({ err }, 'cannot remove the exported template file; it goes with the template'));
    j.phase = 'importing';
    await record();
    await deps.faults?.('template.importing');

    // link: each copied qcow2 layer over the destination's copy of the layer below it.
    phase = 'linking the copied disks';
    for (const link of j.plan.links) await destination.relinkDisk(link);
    lap('linkMs');
    // import: the host template there, from the checkpoint, with the spec as that host runs it.
    phase = 'loading the template memory on the host';
    await ctx.progress(0.92, `loading the template memory on host ${hostName}`);
    const kept = await runOperation(destination, 'importTemplate', { templateId: j.templateId, checkpoint, spec: j.plan.spec }, { signal });
    lap('importMs');
    await (j.memory ? destination.removeCheckpoint({ file: checkpoint, checkpointId: j.memory.checkpointId, createdAt: j.memory.createdAt }) : Promise.resolve()).catch((err: unknown) => deps.logger.warn({ err, host: hostName }, 'cannot remove the carried checkpoint file; it goes with the template'));
    const placement: TemplatePlacement = { hostId: j.hostId, state: 'ready', stateReason: null, spec: j.plan.spec, memoryTemplateId: kept.memoryTemplateId, files: specFiles(j.plan.spec), pool: { ...EMPTY_POOL }, poolNote: null, placedAt: new Date().toISOString(), taskId: null };
    const moved = movedBytes(jobs, j.plan);
    return { placement, report: { host: hostName, ...moved, held: j.plan.held, copyJobs: ids, phasesMs: times } };
  } catch (err) {
    // This controller lost the task: its new owner goes on with it or removes it.
    if (ctx.signal.aborted) throw err;
    await undoPlacement(deps, j, ctx.taskId);
    await deps.engine.coordinator.store.pins.remove(taskPinHolder(ctx.taskId), made).catch(() => undefined);
    const cause = toOffshootError(cancel.aborted ? cancel.reason : err);
    throw cause instanceof PlacementRefusedError || cause.code === 'TASK_CANCELLED' ? cause : new PlacementFailedError(j.template, hostName, phase, cause);
  }
}

/** The error a cancel of a placement task aborts it with. */
export function placementCancelled(taskId: string, template: string, host: string): OffshootError {
  return new OffshootError('TASK_CANCELLED', `the placement of template "${template}" on host ${host} was cancelled by request; nothing of it was left there`, { id: taskId, kind: 'template.place' }, 409);
}

/** Removes all a placement made from its journal: its jobs and copies, the exported file, its host's template folder. */
export async function undoPlacement(deps: FabricDeps, j: PlaceJournal, taskId: string): Promise<void> {
  await dropPlaceJobs(deps, j.templateId, j.hostId, taskId);
  if (j.memory) await dropExport(deps, j.memory, !j.memory.exported).catch((err: unknown) => deps.logger.warn({ err, file: j.memory?.file }, 'cannot remove the exported template file; it goes with the template'));
  await undoCarry(deps, j.templateId, j.hostId);
}

/**
 * Removes what a placement made on the host: its copy jobs (those of task `taskId`, or any unfinished one), its
 * template folder (copies, checkpoint, host template), then its garbage.
 */
export async function undoCarry(deps: FabricDeps, templateId: string, hostId: string, taskId: string | null = null): Promise<void> {
  await dropPlaceJobs(deps, templateId, hostId, taskId).catch((err: unknown) => deps.logger.warn({ err: toOffshootError(err).message, templateId, host: hostId }, 'cannot cancel the copy jobs of a failed placement'));
  await agentOn(deps, hostId)
    .removeTemplate({ templateId })
    .catch((err: unknown) => deps.logger.warn({ err: toOffshootError(err).message, templateId, host: hostId }, 'cannot remove a failed placement from its host; it goes when the host answers'));
  await deps.engine.collectGarbage(hostId).catch(() => undefined);
}
