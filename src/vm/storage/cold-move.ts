// The cold half of `vm move` (move-vm.ts): a stopped VM goes to another host
// whose bases it finds there by content id (the move plan, content-plan.ts),
// so only each disk's own top travels. One `vm.move` task, the VM busy
// meanwhile: each top file is served by the source (openFileServer) and
// fetched by the destination into the same home locator (fetchFile, the
// copy engine's chunked, verified copy), then pointed at the destination's
// copy of its chain (relinkDisk); then the VM record is re-homed at the
// destination in one compare-and-set inventory step, and the source's files
// of the VM go. Any failure or cancel before the re-home removes what came
// to the destination and leaves the VM at its source as it was.
//
// What this slice does not do yet: send base layers the destination lacks
// (refused with MOVE_BASES_MISSING: seed them first with `disk seed`), and
// move disks that are not the VM's own files (MOVE_COLD_UNSUPPORTED).
import { IllegalStateError, OffshootError } from '../../common/index.ts';
import type { VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import { runOperation } from '../../protocol/index.ts';
import type { DiskContentPlan } from './content-plan.ts';
import { peerAddress } from './copy-file-op.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';

export const COLD_MOVE_TASK_KIND = 'vm.move';

export interface ColdMoveResult {
  vm: string;
  mode: 'cold';
  from: string;
  to: string;
  /** Bases the destination held (not sent), per disk. */
  skipped: Array<{ disk: string; layers: number; bytes: number }>;
  /** What was sent, per disk (its top layer). */
  sent: Array<{ disk: string; file: string; bytes: number }>;
  skippedBytes: number;
  sentBytes: number;
  totalMs: number;
}

/** Refuses, before anything moves, a cold move this slice cannot do. */
export function checkColdMove(vm: VmRecord, plan: DiskContentPlan[]): void {
  for (const d of vm.spec.disks) {
    if (!d.file.startsWith(`home:vms/${vm.id}/`)) throw new OffshootError('MOVE_COLD_UNSUPPORTED', `disk ${d.id} of VM ${vm.name} is not the VM's own file (${d.file}); a cold move takes the VM's own disks only`, { vm: vm.name, disk: d.id }, 409);
    const p = plan.find((x) => x.diskId === d.id);
    if (d.backing.length > 0 && !p?.skipAll) {
      throw new OffshootError('MOVE_BASES_MISSING', `the destination lacks ${p?.send.length ?? d.backing.length} base layer(s) of disk ${d.id} of VM ${vm.name}; seed them first (offshoot disk seed)`, { vm: vm.name, disk: d.id, missing: (p?.send ?? []).map((l) => l.file) }, 409);
    }
  }
}

export async function runColdMove(deps: StorageDeps, vm: VmRecord, dest: { id: string; name: string }, plan: DiskContentPlan[], ctx: TaskContext): Promise<ColdMoveResult> {
  const started = Date.now();
  const source = agentOn(deps, vm.hostId);
  const target = agentOn(deps, dest.id);
  const sent: ColdMoveResult['sent'] = [];
  let moved: VmRecord;
  try {
    for (const [i, d] of vm.spec.disks.entries()) {
      if (ctx.signal.aborted) throw new OffshootError('TASK_CANCELLED', 'the move was cancelled', { vm: vm.name }, 409);
      await ctx.progress((0.9 * i) / vm.spec.disks.length, `sending disk ${d.id}`);
      const served = await source.openFileServer({ file: d.file, peer: peerAddress(deps, dest.id, vm.hostId) });
      try {
        const copied = await runOperation(target, 'fetchFile', { source: { url: served.url, token: served.token }, sourceName: d.file, target: d.file, ...deps.copy }, { signal: ctx.signal });
        if (copied.state !== 'done') throw new OffshootError('TASK_CANCELLED', `the copy of disk ${d.id} stopped`, { vm: vm.name, disk: d.id }, 409);
        sent.push({ disk: d.id, file: d.file, bytes: copied.bytesCopied });
      } finally {
        await source.closeFileServer({ serverId: served.serverId }).catch(() => undefined);
      }
      const below = plan.find((p) => p.diskId === d.id)?.destBacking[0];
      if (d.backing.length > 0 && below) await target.relinkDisk({ file: d.file, backing: below });
    }
    await deps.faults?.('move.before-rehome');
    await ctx.progress(0.95, `re-homing the VM at ${dest.name}`);
    const disks = vm.spec.disks.map((d) => ({ ...d, backing: d.backing.length > 0 ? (plan.find((p) => p.diskId === d.id)?.destBacking ?? []).map((b) => b.file) : d.backing }));
    const current = await deps.engine.resolve(vm.id);
    if (current.state !== 'stopped' && current.state !== 'created') throw new IllegalStateError(`VM "${vm.name}"`, current.state, ['stopped', 'created'], 'cold-move');
    moved = await deps.inventory.updateVm(vm.id, { hostId: dest.id, spec: { ...current.spec, disks } }, current.version === undefined ? {} : { expectVersion: current.version });
  } catch (err) {
    // Nothing of the VM stays at the destination; the source is untouched.
    await target.deleteVmFiles({ vmId: vm.id }).catch((e: unknown) => deps.logger.warn({ err: e, vm: vm.name }, 'cannot remove the files a failed move left at the destination'));
    throw err;
  }
  await source.deleteVmFiles({ vmId: moved.id }).catch((err: unknown) => deps.logger.warn({ err, vm: vm.name }, "cannot remove the source's files of a moved VM"));
  const skipped = plan.filter((p) => p.heldLayers > 0).map((p) => ({ disk: p.diskId, layers: p.heldLayers, bytes: p.skippedBytes }));
  return { vm: vm.name, mode: 'cold', from: deps.engine.hostName(vm.hostId), to: dest.name, skipped, sent, skippedBytes: skipped.reduce((n, s) => n + s.bytes, 0), sentBytes: sent.reduce((n, s) => n + s.bytes, 0), totalMs: Date.now() - started };
}
