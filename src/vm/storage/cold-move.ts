// The cold half of `vm move` (move-vm.ts): a stopped VM goes to another host
// whose bases it finds there by content id (the move plan, content-plan.ts),
// so only each disk's own top and the base layers the destination lacks
// travel. One `vm.move` task, the VM busy meanwhile: each file is served by
// the source (openFileServer) and fetched by the destination (fetchFile, the
// copy engine's chunked, verified copy): a top into the same home locator,
// a missing base layer into the VM's own folder there (it goes with the VM);
// each is then pointed at the layer below it, down to the destination's own
// copies of the held bases (relinkDisk); then the VM record is re-homed at the
// destination in one compare-and-set inventory step, and the source's files
// of the VM go. Any failure or cancel (`task cancel`, move-vm.ts) before the
// re-home removes what came to the destination and leaves the VM at its
// source as it was; after the re-home a cancel is too late and the move ends.
// The task journals both hosts first, and each fetch's operation id before it
// starts: a controller taking over the task of one that died first stops that
// fetch on the destination and waits for it to end (it would otherwise go on
// writing into the folder being removed), then removes the files of the side
// the VM record does not name (recoverColdMove).
//
// What this slice does not do yet: put the missing base layers in a datastore
// of the destination (they land in the VM's folder), and move disks that are
// not the VM's own files (MOVE_COLD_UNSUPPORTED).
import { IllegalStateError, OffshootError } from '../../common/index.ts';
import type { VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import type { Locator } from '../../protocol/index.ts';
import { newOperationId, runOperation, waitForOperationEnd } from '../../protocol/index.ts';
import type { DiskContentPlan } from './content-plan.ts';
import { peerAddress } from './copy-file-op.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { MovePlanStaleError } from './errors.ts';

export const COLD_MOVE_TASK_KIND = 'vm.move';

export interface ColdMoveResult {
  vm: string;
  mode: 'cold';
  from: string;
  to: string;
  /** Bases the destination held (not sent), per disk. */
  skipped: Array<{ disk: string; layers: number; bytes: number }>;
  /** What was sent, per disk: its top, then the base layers the destination lacked. */
  sent: Array<{ disk: string; file: string; bytes: number; layers: number }>;
  skippedBytes: number;
  sentBytes: number;
  totalMs: number;
}

/** Refuses, before anything moves, a cold move this slice cannot do. */
export function checkColdMove(vm: VmRecord): void {
  for (const d of vm.spec.disks) {
    if (!d.file.startsWith(`home:vms/${vm.id}/`)) throw new OffshootError('MOVE_COLD_UNSUPPORTED', `disk ${d.id} of VM ${vm.name} is not the VM's own file (${d.file}); a cold move takes the VM's own disks only`, { vm: vm.name, disk: d.id }, 409);
  }
}

/** One file from the source into `to` at the destination, as operation `operationId` there; answers the bytes copied. */
async function fetchOne(deps: StorageDeps, vm: VmRecord, destId: string, from: Locator, to: Locator, operationId: string, signal: AbortSignal): Promise<number> {
  const source = agentOn(deps, vm.hostId);
  const served = await source.openFileServer({ file: from, peer: peerAddress(deps, destId, vm.hostId) });
  try {
    const copied = await runOperation(agentOn(deps, destId), 'fetchFile', { operationId, source: { url: served.url, token: served.token }, sourceName: from, target: to, ...deps.copy }, { signal });
    if (copied.state !== 'done') throw signal.aborted && signal.reason instanceof Error ? signal.reason : new OffshootError('TASK_CANCELLED', `the copy of ${from} stopped`, { vm: vm.name, file: from }, 409);
    return copied.bytesCopied;
  } finally {
    await source.closeFileServer({ serverId: served.serverId }).catch(() => undefined);
  }
}

/**
 * Before the plan: the destination installs the default guest when the VM uses it (as a migration's probe does),
 * and must have the VM's boot files (a kernel and initrd are not moved).
 */
export async function prepareColdDestination(deps: StorageDeps, vm: VmRecord, dest: { id: string; name: string }): Promise<void> {
  const bootFiles = vm.spec.boot.kind === 'kernel' ? [vm.spec.boot.kernel, ...(vm.spec.boot.initrd ? [vm.spec.boot.initrd] : [])] : [];
  const there = await agentOn(deps, dest.id).migrationProbe({ peer: null, files: bootFiles.map((file) => ({ file, contentId: false })), installDefaultGuest: vm.spec.defaultGuest });
  for (const file of bootFiles) {
    if (!there.files.find((f) => f.file === file)?.exists) throw new OffshootError('MOVE_COLD_UNSUPPORTED', `the boot file ${file} of VM "${vm.name}" is not on host ${dest.name}`, { vm: vm.name, file }, 409);
  }
}

/** What a cold move's task records before it sends anything, for the controller that takes it over if this one dies. */
export interface ColdMoveJournal {
  vmId: string;
  sourceHostId: string;
  destinationHostId: string;
  /** The fetch running (or last run) on the destination, journaled before it starts. */
  fetchOperationId?: string;
}

/** How long recovery waits for a dead controller's fetch to stop (it stops after its chunk in flight). */
const FETCH_STOP_WAIT_MS = 120_000;

/** Stops a dead controller's fetch on the destination and waits until it has ended (however it ends). */
async function stopFetch(deps: StorageDeps, hostId: string, operationId: string): Promise<void> {
  const agent = agentOn(deps, hostId);
  try {
    await agent.cancelOperation({ operationId });
  } catch (error) {
    if (error instanceof OffshootError && error.code === 'OPERATION_NOT_FOUND') return;
    throw error;
  }
  if (await waitForOperationEnd(agent, operationId, FETCH_STOP_WAIT_MS)) return;
  throw new OffshootError('TIMEOUT', `the copy ${operationId} on host ${deps.engine.hostName(hostId)} did not stop within ${FETCH_STOP_WAIT_MS / 1000} s; its files are left for the next recovery`, { operationId, host: hostId }, 504);
}

/**
 * A cold move whose controller died: the VM record says where it is. Re-homed (the one step that moves it): the
 * source's files go, as the move would have done; not re-homed: what reached the destination goes, and the VM stays
 * at its source as it was. Answers what was done (the task then fails with TASK_INTERRUPTED and it).
 */
export async function recoverColdMove(deps: StorageDeps, journal: ColdMoveJournal | undefined): Promise<string> {
  if (!journal?.vmId) return 'nothing was recorded: nothing to clean up';
  if (journal.sourceHostId === journal.destinationHostId) return 'the move named one host as both ends: nothing was removed';
  const vm = await deps.inventory.getVm(journal.vmId);
  const rehomed = vm?.hostId === journal.destinationHostId;
  const leftover = rehomed ? journal.sourceHostId : journal.destinationHostId;
  const where = deps.engine.hostName(leftover);
  if (!rehomed && journal.fetchOperationId) await stopFetch(deps, journal.destinationHostId, journal.fetchOperationId);
  await agentOn(deps, leftover).deleteVmFiles({ vmId: journal.vmId });
  return rehomed ? `the VM had been re-homed at ${deps.engine.hostName(journal.destinationHostId)}: its files at ${where} were removed` : `the move was rolled back: the VM stays at its source; what reached ${where} was removed`;
}

/** A move's cancel (`task cancel`): the reason its signal aborts with. */
export function moveCancelled(vm: string): OffshootError {
  return new OffshootError('TASK_CANCELLED', `the move of VM "${vm}" was cancelled; it stays at its source`, { vm }, 409);
}

/** `cancel`: aborted by `task cancel` (before the re-home; after it the move finishes). */
export async function runColdMove(deps: StorageDeps, vm: VmRecord, dest: { id: string; name: string }, plan: DiskContentPlan[], ctx: TaskContext, cancel: AbortSignal): Promise<ColdMoveResult> {
  const started = Date.now();
  const signal = AbortSignal.any([ctx.signal, cancel]);
  const stopIfCancelled = () => {
    if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : moveCancelled(vm.name);
  };
  // Never a move onto the host it is on (its files are the VM's only copy), nor one without a plan for a layered disk.
  if (vm.hostId === dest.id) throw new MovePlanStaleError(vm.name, `it is on host ${dest.name} already`);
  const unplanned = vm.spec.disks.find((d) => d.backing.length > 0 && !plan.some((p) => p.diskId === d.id));
  if (unplanned) throw new MovePlanStaleError(vm.name, `its disk ${unplanned.id} is not in the move plan`);
  const source = agentOn(deps, vm.hostId);
  const target = agentOn(deps, dest.id);
  const journal: ColdMoveJournal = { vmId: vm.id, sourceHostId: vm.hostId, destinationHostId: dest.id };
  await ctx.journal(journal);
  const sent: ColdMoveResult['sent'] = [];
  const backings = new Map<string, Locator[]>();
  let moved: VmRecord;
  try {
    for (const [i, d] of vm.spec.disks.entries()) {
      stopIfCancelled();
      await ctx.progress((0.9 * i) / vm.spec.disks.length, `sending disk ${d.id}`);
      const p = plan.find((x) => x.diskId === d.id);
      const missing = d.backing.length > 0 ? (p?.send ?? []) : [];
      const copies = [{ from: d.file, to: d.file, format: d.format }, ...missing.map((l, j) => ({ from: l.file, to: `home:vms/${vm.id}/${d.id}-base${j}.${l.format}` as Locator, format: l.format }))];
      let bytes = 0;
      for (const c of copies) {
        const operationId = newOperationId();
        await ctx.journal({ ...journal, fetchOperationId: operationId } satisfies ColdMoveJournal);
        bytes += await fetchOne(deps, vm, dest.id, c.from, c.to, operationId, signal);
        await deps.faults?.('move.sent-file');
        stopIfCancelled();
      }
      sent.push({ disk: d.id, file: d.file, bytes, layers: copies.length });
      // Each layer over the next: the sent ones, then the destination's copies of the held bases.
      const chain = [...copies, ...(d.backing.length > 0 ? (p?.destBacking ?? []).map((b) => ({ to: b.file, format: b.format })) : [])];
      for (let j = 0; j < copies.length; j++) {
        const [layer, below] = [chain[j], chain[j + 1]];
        if (layer && below && layer.format === 'qcow2') await target.relinkDisk({ file: layer.to, backing: { file: below.to, format: below.format } });
      }
      backings.set(d.id, chain.slice(1).map((c) => c.to));
    }
    await deps.faults?.('move.before-rehome');
    stopIfCancelled();
    await ctx.progress(0.95, `re-homing the VM at ${dest.name}`);
    const disks = vm.spec.disks.map((d) => ({ ...d, backing: backings.get(d.id) ?? d.backing }));
    const current = await deps.engine.resolve(vm.id);
    if (current.state !== 'stopped' && current.state !== 'created') throw new IllegalStateError(`VM "${vm.name}"`, current.state, ['stopped', 'created'], 'cold-move');
    moved = await deps.inventory.updateVm(vm.id, { hostId: dest.id, spec: { ...current.spec, disks } }, current.version === undefined ? {} : { expectVersion: current.version });
  } catch (err) {
    // Nothing of the VM stays at the destination; the source is untouched. A controller that lost the task (its
    // lease) undoes nothing: the one that took the task over does (recoverColdMove).
    if (ctx.signal.aborted) throw err;
    await target.deleteVmFiles({ vmId: vm.id }).catch((e: unknown) => deps.logger.warn({ err: e, vm: vm.name }, 'cannot remove the files a failed move left at the destination'));
    throw err;
  }
  await source.deleteVmFiles({ vmId: moved.id }).catch((err: unknown) => deps.logger.warn({ err, vm: vm.name }, "cannot remove the source's files of a moved VM"));
  const skipped = plan.filter((p) => p.heldLayers > 0).map((p) => ({ disk: p.diskId, layers: p.heldLayers, bytes: p.skippedBytes }));
  return { vm: vm.name, mode: 'cold', from: deps.engine.hostName(vm.hostId), to: dest.name, skipped, sent, skippedBytes: skipped.reduce((n, s) => n + s.bytes, 0), sentBytes: sent.reduce((n, s) => n + s.bytes, 0), totalMs: Date.now() - started };
}
