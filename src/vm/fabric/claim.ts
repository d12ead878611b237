// The hand-out: `vm claim TEMPLATE [--host H]`. A claim takes the oldest
// ready child of the template on any host it is ready on and that is
// reachable (or on H): one conditional update in the inventory across hosts,
// so concurrent claims, on one controller or several, never get the same
// child, and the pools of all hosts are drained first in first out (each
// refills behind). It renames it if asked, and hands it out in one guest step
// on its host (resumed if paused; hostname, fresh entropy, the clock unless
// the child is warm, which ran since its fill set it; the claim's script with
// its env and SSH key); it returns the child running, its guest
// agent having answered that step. The child's MAC and machine-id are its own from when it was made
// (each pool child gets new ones and has them applied before it is ready).
//
// A child that fails its hand-out (its QEMU gone, the guest agent silent) is
// removed and the next ready one tried; when the pools have none, a child is
// forked on demand from the template (the result says so) on the reachable
// host that runs the fewest of the template's children. A customisation
// script that fails is the caller's: the child is removed and the claim
// fails with the script's output (CLAIM_SCRIPT_FAILED), with no retry.
// Every claim asks the pool keeper to refill, once its hand-out is over, and
// counts as a hand-out of its pool meanwhile: the refill makes its children
// once no claim of this controller is handing out one of the pool (pool.ts),
// so its new QEMUs do not compete with the guest steps of a wave of claims.
import { randomBytes, randomUUID } from 'node:crypto';
import { AlreadyExistsError, OffshootError, toOffshootError } from '../../common/index.ts';
import type { HandOutResult } from '../../protocol/index.ts';
import { runOperation } from '../../protocol/index.ts';
import { newVmId } from '../ids.ts';
import type { VmRecord } from '../records.ts';
import { claimScript } from './claim-script.ts';
import { removeChild, spawnChild } from './children.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { ClaimFailedError, ClaimScriptFailedError, TemplateNotPlacedError } from './errors.ts';
import type { PoolKeeper } from './pool.ts';
import type { PoolMember, TemplateRecord } from './records.ts';
import { assertTemplateState } from './records.ts';
import type { ParsedClaimRequest } from './requests.ts';

/** Ready children tried before forking one on demand. */
const MAX_POOL_TRIES = 4;

export interface ClaimResult {
  vm: VmRecord;
  template: string;
  /** Where the child came from: a ready pool, or forked for this claim because the pool had none ready. */
  source: 'pool' | 'on-demand';
  host: string;
  hostname: string;
  script: HandOutResult['script'];
  /**
   * ms: the whole claim as the controller saw it; picking the child (the inventory's conditional update, and
   * for an on-demand claim the fork); the hand-out call to its host as the controller saw it, and inside it the
   * host's hand-out (resume, guest step; in the guest step, when it ran: guest-agent connection, identity, and
   * for a script its guest-exec round trip, until its exit was seen, exit polls); recording the child running.
   */
  timings: { claimMs: number; pickMs: number; callMs: number; queuedMs?: number; resumeMs: number; guestMs: number; handOutMs: number; settleMs: number; agentMs?: number; armed?: boolean; identityMs?: number; execMs?: number; exitMs?: number; polls?: number };
  /** Children that failed their hand-out and were removed before this one. */
  skipped: Array<{ vm: string; error: string }>;
}

/** Runs a claim for `template` (already resolved). */
export async function claimChild(deps: FabricDeps, keeper: PoolKeeper, template: TemplateRecord, request: ParsedClaimRequest): Promise<ClaimResult> {
  const t0 = performance.now();
  if (template.state === 'broken') throw new OffshootError('TEMPLATE_BROKEN', `template "${template.name}" is broken: ${template.stateReason ?? 'unknown reason'}`, { template: template.name, reason: template.stateReason }, 409);
  assertTemplateState(template, ['ready'], 'claim');
  const hostId = request.host ? (await deps.engine.fleet.resolve(request.host)).id : undefined;
  const placements = template.placements.filter((p) => p.state === 'ready' && (hostId === undefined || p.hostId === hostId));
  if (placements.length === 0) throw new TemplateNotPlacedError(template.name, request.host ? deps.engine.hostName(hostId ?? request.host) : 'any', 'it has no ready copy there');
  if (request.name && (await deps.inventory.findVmByName(request.name))) throw new AlreadyExistsError('VM', request.name);
  const claimId = randomUUID();
  const skipped: ClaimResult['skipped'] = [];
  const hostIds = placements.map((p) => p.hostId).filter((h) => deps.engine.fleet.hosts().find((x) => x.id === h)?.state !== 'unreachable');

  for (let i = 0; i < MAX_POOL_TRIES; i++) {
    const member = await deps.fabric.claimMember(template.id, hostIds, claimId);
    if (!member) break;
    const handedOut = keeper.handOutStarted(template.id, member.hostId);
    try {
      return await handOut(deps, template, member, request, 'pool', t0, skipped);
    } catch (err) {
      if (err instanceof ClaimScriptFailedError || (err instanceof OffshootError && err.code === 'ALREADY_EXISTS')) throw err;
      skipped.push({ vm: member.vmId, error: toOffshootError(err).message });
      deps.logger.warn({ err: toOffshootError(err).message, vm: member.vmId, template: template.name }, 'a pool child failed its hand-out: removed, trying the next');
    } finally {
      // The refill starts behind the hand-out, and makes children once no hand-out of the pool runs, so its QEMUs
      // do not compete with the guest steps of claims for the CPU.
      handedOut();
      keeper.request(template.id, member.hostId);
    }
  }

  // The pool has no ready child: fork one for this claim, on the reachable host running the fewest of its children.
  const members = await deps.fabric.listMembers({ templateId: template.id });
  const load = (hostId: string) => members.filter((m) => m.hostId === hostId).length;
  const placement = placements.filter((p) => hostIds.includes(p.hostId)).sort((a, b) => load(a.hostId) - load(b.hostId))[0];
  if (!placement) throw new ClaimFailedError(template.name, 'every host the template is placed on is unreachable', { skipped });
  const vmId = newVmId();
  const name = request.name ?? `${template.name}-${randomBytes(3).toString('hex')}`;
  const now = new Date().toISOString();
  await deps.fabric.insertMember({ vmId, templateId: template.id, hostId: placement.hostId, state: 'claimed', stateReason: 'forked on demand', createdAt: now, readyAt: null, claimedAt: now, claimId, updatedAt: now });
  try {
    await spawnChild(deps, template, placement, { vmId, name, reason: `forked on demand for a claim of template ${template.name}`, warmUp: false, pause: false });
    return await handOut(deps, template, await memberOf(deps, vmId), { ...request, name }, 'on-demand', t0, skipped);
  } catch (err) {
    await deps.fabric.deleteMember(vmId);
    if (err instanceof ClaimScriptFailedError) throw err;
    throw new ClaimFailedError(template.name, `no child was ready and forking one on demand failed: ${toOffshootError(err).message}`, { skipped, cause: toOffshootError(err).code });
  } finally {
    keeper.request(template.id, placement.hostId);
  }
}

async function memberOf(deps: FabricDeps, vmId: string): Promise<PoolMember> {
  const member = await deps.fabric.getMember(vmId);
  if (!member) throw new OffshootError('CLAIM_FAILED', `pool child ${vmId} vanished while it was claimed`, { vm: vmId }, 503);
  return member;
}

/** Hands one claimed child out; on any failure the child and its row are removed and the error thrown. */
async function handOut(deps: FabricDeps, template: TemplateRecord, member: PoolMember, request: ParsedClaimRequest, source: ClaimResult['source'], t0: number, skipped: ClaimResult['skipped']): Promise<ClaimResult> {
  try {
    let vm = await deps.inventory.getVm(member.vmId);
    if (!vm || (vm.state !== 'paused' && vm.state !== 'running')) throw new OffshootError('VM_NOT_RUNNING', `pool child ${vm?.name ?? member.vmId} is ${vm?.state ?? 'gone'}`, { vm: member.vmId }, 409);
    if (request.name && request.name !== vm.name) vm = await rename(deps, vm, request.name);
    const hostname = request.hostname ?? vm.name;
    const script = claimScript({ env: request.env, sshKey: request.sshKey, customize: request.customize });
    const agent = agentOn(deps, vm.hostId);
    // A warm pool child ran since its warm-up set its clock; a paused one, or one forked on demand, lags.
    const setClock = vm.state === 'paused' || source === 'on-demand';
    const picked = performance.now();
    const out = await runOperation(agent, 'handOutChild', { vmId: vm.id, resume: vm.state === 'paused', setClock, hostname, ...(script !== undefined ? { script } : {}), ...(request.env ? { env: request.env } : {}), timeoutMs: request.timeoutMs });
    if (!out.ok) {
      if (out.script) throw new ClaimScriptFailedError(template.name, out.script.exitCode, out.script.stdout, out.script.stderr);
      throw new OffshootError('GUEST_AGENT_UNAVAILABLE', `child ${vm.name} failed its hand-out: ${out.error ?? 'no reason given'}`, { vm: vm.name }, 504);
    }
    const called = performance.now();
    const { totalMs, ...hostSteps } = out.timings;
    const { vm: running } = await deps.engine.states.settle(vm.id, ['paused', 'running'], 'running', `claimed from template ${template.name}`);
    if (running.state !== 'running') throw new OffshootError('VM_NOT_RUNNING', `child ${vm.name} became ${running.state} while it was handed out`, { vm: vm.name, state: running.state }, 409);
    deps.logger.info({ vm: running.name, template: template.name, source }, 'child claimed');
    return {
      vm: running,
      template: template.name,
      source,
      host: deps.engine.hostName(running.hostId),
      hostname,
      script: out.script,
      timings: { ...hostSteps, claimMs: performance.now() - t0, pickMs: picked - t0, callMs: called - picked, settleMs: performance.now() - called, handOutMs: totalMs },
      skipped,
    };
  } catch (err) {
    await removeChild(deps, member.vmId).catch((e: unknown) => deps.logger.warn({ err: e, vm: member.vmId }, 'cannot remove a child that failed its hand-out'));
    await deps.fabric.deleteMember(member.vmId);
    throw err;
  }
}

async function rename(deps: FabricDeps, vm: VmRecord, name: string): Promise<VmRecord> {
  return deps.engine.states.withVm(vm.id, async (fresh) => {
    if (await deps.inventory.findVmByName(name)) throw new AlreadyExistsError('VM', name);
    return deps.inventory.updateVm(fresh.id, { name, updatedAt: new Date().toISOString() });
  });
}

