// A child of a template on one host: spawned from the host template (no
// parent runs; it maps the template's memory copy-on-write and continues
// where the parent was frozen), given its own identity, checked ready, and
// removed. Its VM record exists from the first step, so a controller that
// dies midway finds it (and its host reaps the QEMU no record keeps).
//
// The readiness check is the guest agent answering the identity step (new
// MAC, machine-id, entropy, hostname). With `warmUp`, the claim's own guest
// step (fabric-hand-out.ts on the agent) also runs once, and arms a waiter in
// the guest that the claim's step goes through (no process started then):
// under TCG each QEMU translates guest code on its first run, so a child that
// ran the claim's commands once answers a real claim from already translated
// code.
import { OffshootError } from '../../common/index.ts';
import { runOperation } from '../../protocol/index.ts';
import { applyIdentity, withNewIdentity } from '../identity.ts';
import type { VmRecord } from '../records.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import type { TemplatePlacement, TemplateRecord } from './records.ts';

export interface SpawnChildOptions {
  vmId: string;
  name: string;
  /** Why the VM is in its state while it is made (its stateReason). */
  reason: string;
  /** Run the claim's guest step once (see above). */
  warmUp: boolean;
  /** Pause it once ready (a cold pool child). */
  pause: boolean;
}

const READY_TIMEOUT_MS = 60_000;

/** Spawns a child, checks it is ready, leaves it running or paused; nothing of it is left if that fails. */
export async function spawnChild(deps: FabricDeps, template: TemplateRecord, placement: TemplatePlacement, options: SpawnChildOptions): Promise<VmRecord> {
  if (!placement.spec) throw new OffshootError('TEMPLATE_NOT_PLACED', `template "${template.name}" has no spec on host ${deps.engine.hostName(placement.hostId)}`, { template: template.name, host: placement.hostId, why: 'not placed' }, 409);
  const agent = agentOn(deps, placement.hostId);
  const spec = withNewIdentity(placement.spec, options.name);
  const now = new Date().toISOString();
  const record: VmRecord = { id: options.vmId, name: options.name, state: 'starting', stateReason: options.reason, hostId: placement.hostId, spec, runtime: null, createdAt: now, updatedAt: now };
  await deps.inventory.insertVm(record);
  deps.engine.events.publish({ type: 'vm.created', vm: record, at: now });
  const timeoutMs = deps.readyTimeoutMs ?? READY_TIMEOUT_MS;
  try {
    await deps.faults?.('fabric.spawn');
    const spawned = await runOperation(agent, 'spawnFromTemplate', { templateId: template.id, vmId: options.vmId, name: options.name, spec, run: true });
    const { vm, moved } = await deps.engine.states.settle(options.vmId, ['starting'], 'running', options.reason, { runtime: spawned.runtime, spec: spawned.spec });
    if (!moved) throw new OffshootError('START_INTERRUPTED', `child ${options.name} became ${vm.state} while it was made`, { vm: options.name, state: vm.state }, 409);
    await deps.faults?.('fabric.ready-check');
    const identity = await applyIdentity(agent, deps.engine.states, vm, { timeoutMs });
    if (!identity.ok) throw new OffshootError('GUEST_AGENT_UNAVAILABLE', `child ${options.name} failed its readiness check: ${identity.error}`, { vm: options.name }, 504);
    if (options.warmUp) {
      const warm = await runOperation(agent, 'handOutChild', { vmId: options.vmId, resume: false, hostname: options.name, script: ':', arm: true, timeoutMs });
      if (!warm.ok) throw new OffshootError('GUEST_AGENT_UNAVAILABLE', `child ${options.name} failed its readiness check: ${warm.error}`, { vm: options.name }, 504);
    }
    if (options.pause) {
      await agent.pauseVm({ vmId: options.vmId });
      await deps.engine.states.settle(options.vmId, ['running'], 'paused', options.reason);
    }
    return await deps.engine.resolve(options.vmId);
  } catch (err) {
    await removeChild(deps, options.vmId).catch((e: unknown) => deps.logger.warn({ err: e, vm: options.name }, 'cannot remove a child that failed'));
    throw err;
  }
}

/**
 * Removes a child: its QEMU, files and record. A host that cannot be reached keeps them until it
 * answers again; then its agent reaps the QEMU and the files no record names.
 */
export async function removeChild(deps: FabricDeps, vmId: string): Promise<void> {
  const vm = await deps.inventory.getVm(vmId);
  if (!vm) return;
  const agent = agentOn(deps, vm.hostId);
  let reachable = true;
  await deps.engine.states
    .withVm(vmId, async () => {
      try {
        await agent.killVm({ vmId });
      } catch (err) {
        if (err instanceof OffshootError && err.code === 'HOST_UNREACHABLE') reachable = false;
        else if (!(err instanceof OffshootError && err.code === 'VM_NOT_RUNNING')) throw err;
      }
      if (reachable) await agent.deleteVmFiles({ vmId }).catch((err: unknown) => deps.logger.warn({ err, vmId }, 'cannot remove the files of a child'));
      await deps.inventory.deleteVm(vmId);
      deps.engine.events.publish({ type: 'vm.deleted', vmId, name: vm.name, at: new Date().toISOString() });
    })
    .catch((err: unknown) => {
      // Deleted meanwhile by someone else: nothing left to do.
      if (!(err instanceof OffshootError && err.code === 'ILLEGAL_STATE')) throw err;
    });
  if (reachable) await deps.engine.collectGarbage(vm.hostId).catch(() => undefined);
}
