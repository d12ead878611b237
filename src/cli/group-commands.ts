// `offshoot vm migrate A B C --to HOST [--mode consistent|available]`: several
// names are one group (POST /migrations), moved with one switch-over; `--to
// A=h1,B=h2` gives each member its own destination (a bare host in the list is
// the destination of the members not named). The result lists which members
// moved, each one's downtime (QEMU's, and its whole stop until the group's
// start), and the spread. Ctrl-C cancels the group before its commit (every
// member runs on at its source).
import { InvalidInputError, OffshootError } from '../common/index.ts';
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

/** The destination of each member from `--to`: `HOST`, or `A=h1,B=h2` (with at most one bare HOST for the others). */
export function destinationsOf(names: string[], to: string): Array<{ vm: string; to: string }> {
  const named = new Map<string, string>();
  const bare: string[] = [];
  for (const part of to.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq < 0) {
      bare.push(part);
      continue;
    }
    const vm = part.slice(0, eq).trim();
    const host = part.slice(eq + 1).trim();
    if (!vm || !host) throw new InvalidInputError(`--to: "${part}" is not VM=HOST`, { to });
    if (!names.includes(vm)) throw new InvalidInputError(`--to names ${vm}, which is not among the VMs to migrate (${names.join(', ')})`, { to, vm });
    if (named.has(vm)) throw new InvalidInputError(`--to names ${vm} twice`, { to, vm });
    named.set(vm, host);
  }
  if (bare.length > 1) throw new InvalidInputError(`--to gives ${bare.length} hosts without a VM (${bare.join(', ')}): at most one, for the VMs not named`, { to });
  return names.map((vm) => {
    const host = named.get(vm) ?? bare[0];
    if (!host) throw new InvalidInputError(`--to gives no destination for ${vm}: add ${vm}=HOST`, { to, vm });
    return { vm, to: host };
  });
}

export async function migrateGroupCommand(client: OffshootClient, names: string[], o: GroupOptions, tuning: Partial<MigrateRequest>): Promise<void> {
  const { postcopy: _postcopy, to: _to, ...rest } = tuning;
  const request = { ...rest, members: destinationsOf(names, o.to), ...(o.mode ? { mode: o.mode } : {}) };
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
  for (const m of result.members) process.stderr.write(`  ${m.vm}: ${m.state} (${m.from} -> ${m.to}), downtime ${m.downtimeMs ?? '?'} ms (stopped ${m.stoppedMs ?? '?'} ms until the group's start), held ${m.heldMs ?? '?'} ms, braked ${m.brakedMs} ms${m.error ? `, ${m.error.code}: ${m.error.message}` : ''}\n`);
  process.stderr.write(`switch-over spread ${result.spreadMs ?? '?'} ms, total ${result.totalMs} ms (${result.mode})\n`);
}
