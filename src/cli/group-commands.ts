// `offshoot vm migrate A B C --to HOST [--mode consistent|available]`: several
// names are one group (POST /migrations), moved with one switch-over; the
// result lists which members moved, each one's downtime and the spread. Ctrl-C
// cancels the group before its commit (every member runs on at its source).
import { OffshootError } from '../common/index.ts';
import type { OffshootClient } from '../client/index.ts';
import { MigrateClient } from '../client/index.ts';
import type { GroupMigrateRequest, GroupMigrateResult, MigrateRequest, TaskRecord } from '../vm/index.ts';
import { printJson } from './output.ts';

export interface GroupOptions {
  to: string;
  mode?: GroupMigrateRequest['mode'];
  json?: boolean;
  wait: boolean;
}

export async function migrateGroupCommand(client: OffshootClient, names: string[], o: GroupOptions, tuning: Partial<MigrateRequest>): Promise<void> {
  const { postcopy: _postcopy, to: _to, ...rest } = tuning;
  const request = { ...rest, members: names.map((vm) => ({ vm, to: o.to })), ...(o.mode ? { mode: o.mode } : {}) };
  const { task: started } = await new MigrateClient(client).migrateGroup(request);
  if (!o.wait) return o.json ? printJson(started) : void process.stdout.write(`${started.id}\n`);
  const cancel = () => void client.cancelTask(started.id).catch(() => undefined);
  process.once('SIGINT', cancel);
  const tty = process.stderr.isTTY && !o.json;
  let task: TaskRecord;
  try {
    task = await client.waitTask(started.id, tty ? (t) => process.stderr.write(`\r\x1b[K${Math.round(t.progress * 100)}% ${t.message}`) : undefined);
  } finally {
    process.off('SIGINT', cancel);
    if (tty) process.stderr.write('\n');
  }
  if (task.state !== 'succeeded') throw task.error ? new OffshootError(task.error.code, task.error.message, task.error.details, 500) : new OffshootError('GROUP_MIGRATION_FAILED', task.message, {}, 500);
  const result = task.result as GroupMigrateResult;
  if (o.json) return printJson(result);
  process.stdout.write(`moved: ${result.moved.join(', ') || '-'}${result.stayed.length ? `; stayed at their source: ${result.stayed.join(', ')}` : ''}\n`);
  for (const m of result.members) process.stderr.write(`  ${m.vm}: ${m.state} (${m.from} -> ${m.to}), downtime ${m.downtimeMs ?? '?'} ms, held ${m.heldMs ?? '?'} ms${m.error ? `, ${m.error.code}: ${m.error.message}` : ''}\n`);
  process.stderr.write(`switch-over spread ${result.spreadMs ?? '?'} ms, total ${result.totalMs} ms (${result.mode})\n`);
}
