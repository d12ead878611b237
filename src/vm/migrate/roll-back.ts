// A migration that did not reach its switch-over (it failed, timed out, or
// was cancelled) is undone: the source's migration is stopped if it still
// runs and the guest runs on there (when it ran before), the destination's
// waiting QEMU, target disks and exports go, and so does the path. Each step
// is idempotent and tolerates an agent that already did it (or restarted),
// so recovery uses the same steps.
import type { Logger } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import { closeDataPath } from './data-path.ts';
import type { MigrateJournal } from './migrate-journal.ts';

export async function rollBackMigration(agents: { source: AgentClient; destination: AgentClient }, journal: MigrateJournal, logger: Logger): Promise<string[]> {
  const did: string[] = [];
  await agents.source.cancelOperation({ operationId: journal.migrateOperationId }).catch(() => undefined);
  const status = await agents.source.abortOutgoing({ vmId: journal.vmId, resume: journal.previous === 'running' }).then(
    (r) => r.status,
    (err: unknown) => `not stopped (${(err as Error).message})`,
  );
  did.push(`source migration ${status}`);
  await agents.destination.cancelOperation({ operationId: journal.awaitOperationId }).catch(() => undefined);
  const removed = await agents.destination.abortIncoming({ vmId: journal.vmId }).then(
    (r) => r.removed,
    (err: unknown) => {
      logger.warn({ vmId: journal.vmId, err: (err as Error).message }, 'cannot remove the destination of a failed migration');
      return false;
    },
  );
  if (removed) did.push('destination removed');
  await closeDataPath(agents, journal.pathId);
  did.push('path closed');
  return did;
}
