// The one identity step of every new VM made from another: a fork child, a
// restored checkpoint and every clone (linked, instant, full). The new VM's
// spec gets its name as hostname (on the embedded guest's kernel command
// line), a new MAC per NIC and a new machine-id, recorded as pending; then,
// once the VM runs and its guest agent answers, the agent sets the hostname,
// the MAC, /etc/machine-id, mixes fresh entropy into the kernel's pool and
// runs an optional script (agent/customize.ts), and the identity is recorded
// as applied. Forks and restores apply it as soon as the VM runs (it continues
// from the source's memory); a clone boots from its disk, so it applies it at
// its first start (VmEngine.start). A guest without an agent (guestAgent:
// false) gets the new MACs and hostname argument only.
import { randomBytes } from 'node:crypto';
import type { CustomizeResult, HostAgent, Identity, VmSpec } from '../agent/index.ts';
import { newMac } from '../agent/index.ts';
import type { StateKeeper } from './state-keeper.ts';

const HOSTNAME_ARG = /offshoot\.hostname=\S+/;

export function withHostname(cmdline: string, name: string): string {
  return HOSTNAME_ARG.test(cmdline) ? cmdline.replace(HOSTNAME_ARG, `offshoot.hostname=${name}`) : `${cmdline} offshoot.hostname=${name}`;
}

export function hasGuestAgent(spec: VmSpec): boolean {
  return spec.guestAgent !== false;
}

/** The spec of a new VM named `name` made from `spec`: new MACs, its hostname, a new machine-id (pending). */
export function withNewIdentity(spec: VmSpec, name: string): VmSpec {
  return {
    ...spec,
    boot: spec.boot.kind === 'kernel' && (spec.defaultGuest || HOSTNAME_ARG.test(spec.boot.cmdline)) ? { ...spec.boot, cmdline: withHostname(spec.boot.cmdline, name) } : spec.boot,
    nics: spec.nics.map((n) => ({ ...n, mac: newMac() })),
    identity: { machineId: randomBytes(16).toString('hex'), pending: true },
  };
}

/** What the guest agent is asked to set for a VM whose identity is pending. */
export function identityOf(spec: VmSpec, name: string, options: { script?: string; timeoutMs: number }): Identity {
  return { name, mac: spec.nics[0]?.mac ?? null, machineId: spec.identity?.machineId ?? randomBytes(16).toString('hex'), ...(options.script !== undefined ? { script: options.script } : {}), timeoutMs: options.timeoutMs };
}

/**
 * Applies a running VM's pending identity through its guest agent and records it as applied. A VM without
 * a guest agent has nothing to apply in the guest (ok). Never throws; the result says what happened.
 */
export async function applyIdentity(agent: HostAgent, states: StateKeeper, vm: { id: string; name: string; spec: VmSpec }, options: { script?: string; timeoutMs: number }): Promise<CustomizeResult> {
  if (!hasGuestAgent(vm.spec)) return { ok: true, error: 'skipped: the guest has no guest agent', script: null, ms: 0 };
  const identity = identityOf(vm.spec, vm.name, options);
  const result = await agent.customize(vm.id, identity);
  if (result.ok) await states.updateSpec(vm.id, (spec) => ({ ...spec, identity: { machineId: identity.machineId, pending: false } })).catch(() => undefined);
  return result;
}
