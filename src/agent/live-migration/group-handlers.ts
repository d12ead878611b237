// The agent's handlers of a group migration's switch-over calls
// (protocol/calls-group.ts), spread into AgentService.handlers(): the work
// goes to the local agent's migration parts (outgoing.ts, incoming.ts).
import type { AgentHandlers, GROUP_CALLS, VmRuntime } from '../../protocol/index.ts';
import type { LocalHostAgent } from '../local-agent.ts';
import type * as Host from '../types.ts';

type GroupHandlers = Pick<AgentHandlers, keyof typeof GROUP_CALLS>;

export function groupHandlers(deps: { host: LocalHostAgent; runtimeOut(runtime: Host.VmRuntime): VmRuntime }): GroupHandlers {
  const { host } = deps;
  return {
    setMigrationParameters: ({ vmId, ...change }) => host.outgoing.setParameters(vmId, change),
    startIncoming: async (r) => {
      const outcome = await host.incoming.start(r.vmId);
      return { ...outcome, runtime: deps.runtimeOut(outcome.runtime) };
    },
    revertOutgoing: async (r) => ({ status: await host.outgoing.revert(r.vmId, r.resume) }),
  };
}
