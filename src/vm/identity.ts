// The one identity step of every new VM made from another: a fork child, a
// restored checkpoint and every clone (linked, instant, full). The new VM's
// spec gets its name as hostname (on the embedded guest's kernel command
// line), a new MAC per NIC and a new machine-id, recorded as pending; then,
// once the VM runs and its guest agent answers, the host's agent sets the
// hostname, the MAC, /etc/machine-id, mixes fresh entropy into the kernel's
// pool and runs an optional script (the protocol's `customize` operation),
// and the identity is recorded as applied. Forks and restores apply it as
// soon as the VM runs (it continues from the source's memory); a clone boots
// from its disk, so it applies it at its first start (VmEngine.start). A
// guest without an agent (guestAgent: false) gets the new MACs and hostname
// argument only.
import { randomBytes } from 'node:crypto';
import type { AgentClient, CustomizeResult, Identity, VmSpec } from '../protocol/index.ts';
import { runOperation } from '../protocol/index.ts';
import type { StateKeeper } from './state-keeper.ts';

const HOSTNAME_ARG = /offshoot\.hostname=\S+/;

/** A random unicast, locally administered MAC in QEMU's 52:54:00 range. */
export function newMac(): string {
  return ['52', '54', '00', ...Array.from(randomBytes(3), (x) => x.toString(16).padStart(2, '0'))].join(':');
}

export function newMachineId(): string {
  return randomBytes(16).toString('hex');
}

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
    identity: { machineId: newMachineId(), pending: true },
  };
}

/** What the guest agent is asked to set for a VM whose identity is pending. */
export function identityOf(spec: VmSpec, name: string, options: { script?: string; timeoutMs: number }): Identity {
  return { name, mac: spec.nics[0]?.mac ?? null, machineId: spec.identity?.machineId ?? newMachineId(), ...(options.script !== undefined ? { script: options.script } : {}), timeoutMs: options.timeoutMs };
}

/**
 * Applies a running VM's pending identity through its guest agent and records it as applied. A VM without
 * a guest agent has nothing to apply in the guest (ok). Never throws for the guest's sake; the result says
 * what happened.
 */
export async function applyIdentity(agent: AgentClient, states: StateKeeper, vm: { id: string; name: string; spec: VmSpec }, options: { script?: string; timeoutMs: number }): Promise<CustomizeResult> {
  if (!hasGuestAgent(vm.spec)) return { ok: true, error: 'skipped: the guest has no guest agent', script: null, ms: 0 };
  const identity = identityOf(vm.spec, vm.name, options);
  const result = await runOperation(agent, 'customize', { vmId: vm.id, identity });
  if (result.ok) await states.updateSpec(vm.id, (spec) => ({ ...spec, identity: { machineId: identity.machineId, pending: false } })).catch(() => undefined);
  return result;
}
