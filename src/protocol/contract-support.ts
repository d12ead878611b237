// What the contract suites share (contract.ts and its parts: -fabric,
// -mobility, -migration, -group), and the orchestration tests with them: the
// stable code a call fails with; the targets (one agent, or a source and a
// destination); and for the two-host suites, the tuning of their migrations,
// the VM booted at the source, the paths opened between the hosts as the
// controller does, and the clean-up of both hosts at the end.
import { OffshootError } from '../common/index.ts';
import { newPskKey, planDataPath } from '../net/index.ts';
import type { DataPathPlanData, MigrationTuning } from './calls-migration.ts';
import type { AgentClient } from './client.ts';
import { newOperationId, runOperation } from './client.ts';
import type { VmSpec } from './schemas.ts';

/** The stable code a promise rejects with; 'no error' when it resolves. */
export async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return err instanceof OffshootError ? err.code : `not an OffshootError: ${(err as Error).message}`;
  }
  return 'no error';
}

/** What every contract target has besides its clients. */
export interface ContractTargetBase {
  /** How long a boot may take here. */
  bootTimeoutMs: number;
  dispose(): Promise<void>;
}

/** Two hosts, for the migration and group contracts. */
export interface MigrationContractTarget extends ContractTargetBase {
  /** The source's and the destination's agents, attached. */
  source: AgentClient;
  destination: AgentClient;
  /** The address each host's peer reaches it at (its management address, as the fleet knows it). */
  sourceAddress: string;
  destinationAddress: string;
  /**
   * A real guest: starts a loop in it that keeps rewriting a few MiB of its memory, and answers a function that stops
   * it (a migration whose timing depends on what the guest dirties needs it; a fake's does not).
   */
  keepDirtying?: (agent: AgentClient, vmId: string) => Promise<() => Promise<void>>;
}

/** The tuning of the contracts' migrations. */
export const CONTRACT_TUNING: MigrationTuning = { maxBandwidthBytesPerSecond: 2 ** 30, downtimeLimitMs: 300, postcopy: 'never', autoConverge: false, multifdChannels: 2, timeoutMs: 120_000, tls: true };

/** Prepares and boots a default-guest VM at the source; resolves with its spec once its guest agent answers. */
export async function bootAtSource(t: MigrationContractTarget, vmId: string, name: string): Promise<VmSpec> {
  const spec = await t.source.prepareVm({ vmId, name, vcpus: 1, memoryMiB: 160, boot: { kind: 'default-guest' }, disks: [], network: 'user' });
  await runOperation(t.source, 'startVm', { vmId, name, spec });
  await runOperation(t.source, 'waitForGuestAgent', { vmId, timeoutMs: t.bootTimeoutMs });
  return spec;
}

/** Plans and opens a path between the two hosts (as the controller does), its id added to `opened` first. */
export async function openContractPath(t: MigrationContractTarget, opened: string[], options: { installDefaultGuest: boolean }): Promise<DataPathPlanData> {
  const [s, d] = await Promise.all([t.source.migrationProbe({ peer: t.destinationAddress, files: [], installDefaultGuest: false }), t.destination.migrationProbe({ peer: t.sourceAddress, files: [], installDefaultGuest: options.installDefaultGuest })]);
  const plan = planDataPath({ operationId: newOperationId(), serverManagementAddress: d.managementAddress ?? '', clientManagementAddress: s.managementAddress ?? '', inUse: [...s.slotsInUse, ...d.slotsInUse] });
  const key = newPskKey();
  opened.push(plan.operationId);
  await t.destination.openPath({ plan, role: 'server', pskKey: key });
  await t.source.openPath({ plan, role: 'client', pskKey: key });
  return plan;
}

/** Closes a path at the source, then at the destination. */
export async function closeContractPath(t: MigrationContractTarget, operationId: string): Promise<void> {
  await t.source.closePath({ operationId });
  await t.destination.closePath({ operationId });
}

/** After a two-host suite: on both hosts, every path it opened, the VM's incoming migration, QEMU and files; then the target. */
export async function cleanUpBothHosts(t: MigrationContractTarget, vmId: string, opened: string[]): Promise<void> {
  for (const a of [t.source, t.destination]) {
    for (const operationId of opened) await a.closePath({ operationId }).catch(() => undefined);
    await a.abortIncoming({ vmId }).catch(() => undefined);
    await a.killVm({ vmId }).catch(() => undefined);
    await a.deleteVmFiles({ vmId }).catch(() => undefined);
  }
  await t.dispose();
}
