// The fake agent's side of a group migration's switch-over calls
// (calls-group.ts), over the fake migrations' state (fake-migration.ts): a
// destination prepared with `holdAfter` keeps its guest paused after the
// migration completed until startIncoming; a completed source whose
// destination never ran the guest runs on after revertOutgoing. It passes
// the group contract (contract-group.ts) as the real agents do.
import { OffshootError } from '../../common/index.ts';
import type { CallName } from '../calls.ts';
import type { GROUP_CALLS } from '../calls-group.ts';
import { isStaleParameterChange } from '../calls-group.ts';
import type { AgentHandlers } from '../endpoint.ts';
import type { FakeMigrationHost, FakeMigrationState } from './fake-migration.ts';

function refused(message: string, vmId: string): OffshootError {
  return new OffshootError('MIGRATION_REFUSED', message, { vmId }, 409);
}

export function fakeGroupHandlers(host: FakeMigrationHost, state: FakeMigrationState): Pick<AgentHandlers, keyof typeof GROUP_CALLS> {
  const wrap = async <T>(call: CallName, fn: () => T | Promise<T>): Promise<T> => {
    host.check(call);
    return fn();
  };
  return {
    setMigrationParameters: ({ vmId, downtimeLimitMs, maxBandwidthBytesPerSecond, pass, parkBelowBytes, parkFromPass, holdAllowed }) =>
      wrap('setMigrationParameters', () => {
        const o = state.outgoing.get(vmId);
        if (!o) throw refused(`VM ${vmId} is not being migrated from this host`, vmId);
        // The group's view of its hold is the latest whatever the pass it was decided on.
        if (holdAllowed !== undefined) o.holdAllowed = holdAllowed;
        // Decided on its first pass after it braked itself at that pass's end, or before the pass it parked at: stale, ignored.
        if (isStaleParameterChange(o, pass)) return { downtimeLimitMs: o.downtimeLimitMs, maxBandwidthBytesPerSecond: o.speed };
        o.parkBelowBytes = parkBelowBytes ?? null;
        o.parkFromPass = parkFromPass ?? 0;
        if (downtimeLimitMs !== undefined) o.downtimeLimitMs = downtimeLimitMs;
        if (maxBandwidthBytesPerSecond !== undefined) o.speed = maxBandwidthBytesPerSecond;
        return { downtimeLimitMs: o.downtimeLimitMs, maxBandwidthBytesPerSecond: o.speed };
      }),
    startIncoming: ({ vmId }) =>
      wrap('startIncoming', () => {
        const entry = state.incoming.get(vmId);
        if (!entry || entry.state !== 'held') throw refused(`no incoming migration of VM ${vmId} is held on this host${entry ? ` (it is ${entry.state})` : ''}`, vmId);
        state.incoming.delete(vmId);
        host.vms.set(vmId, { status: 'running', runtime: entry.runtime, name: host.vms.get(vmId)?.name ?? 'vm', incoming: false });
        return { runtime: entry.runtime, resumedAt: new Date().toISOString(), running: true };
      }),
    revertOutgoing: ({ vmId, resume }) =>
      wrap('revertOutgoing', () => {
        if (state.outgoing.has(vmId)) throw refused(`the migration of VM ${vmId} still runs here: stop it with abortOutgoing`, vmId);
        const vm = host.vms.get(vmId);
        if (!vm || vm.incoming) throw new OffshootError('VM_NOT_RUNNING', `VM ${vmId} has no running QEMU on this host`, { vmId }, 409);
        if (vm.status === 'running') return { status: 'running' };
        const done = state.completed.get(vmId);
        if (!done) throw new OffshootError('ILLEGAL_STATE', `the migration of VM ${vmId} is none; only a finished one can be reverted`, { vmId, state: 'none', required: ['completed', 'failed', 'cancelled'] }, 409);
        state.completed.delete(vmId);
        if (resume) vm.status = 'running';
        return { status: 'completed' };
      }),
  };
}
