// `offshoot vm migrate NAME --to HOST`: live migration through the typed
// client, with a progress bar of the task's live figures (pass, memory
// remaining, dirty rate, bandwidth, expected downtime, disk mirror) on a
// terminal and the result at the end; --json prints the finished task's
// result. Ctrl-C cancels the migration before its switch-over.
import type { Command } from 'commander';
import { InvalidInputError, OffshootError } from '../common/index.ts';
import { MigrateClient } from '../client/index.ts';
import type { MigrateRequest, MigrateResult, MigrationProgress, TaskRecord } from '../vm/index.ts';
import { migrateGroupCommand } from './group-commands.ts';
import { printJson } from './output.ts';
import type { CommandContext } from './vm-commands.ts';

const MiB = 2 ** 20;

function intOption(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidInputError(`${name} must be a whole number, got "${value}"`, { option: name, value });
    return n;
  };
}

function choice<T extends string>(name: string, values: readonly T[]) {
  return (value: string): T => {
    if (!(values as readonly string[]).includes(value)) throw new InvalidInputError(`${name} must be one of ${values.join(', ')}, got "${value}"`, { option: name, value });
    return value as T;
  };
}

/** One line: a bar, the phase, and the live figures of the migration task. */
export function progressLine(task: TaskRecord): string {
  const width = 24;
  const filled = Math.round(task.progress * width);
  const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${`${Math.round(task.progress * 100)}%`.padStart(4)}`;
  const p = (task.result as { progress?: MigrationProgress } | null)?.progress;
  // Queued (waiting for a host's slot): the message says its position and what it waits for.
  if (!p || task.state !== 'running' || p.phase === 'queued') return `${bar} ${task.message}`;
  const parts = [p.phase];
  if (p.diskTotalBytes > 0) parts.push(`disks ${Math.round(p.diskDoneBytes / MiB)}/${Math.round(p.diskTotalBytes / MiB)} MiB`);
  if (p.phase !== 'disks') parts.push(`pass ${p.pass}`, `${Math.round(p.remainingBytes / MiB)} MiB left`, `dirty ${Math.round(p.dirtyBytesPerSecond / MiB)} MiB/s`, `${Math.round(p.bandwidthBytesPerSecond / MiB)} MiB/s`);
  if (p.expectedDowntimeMs !== null) parts.push(`downtime ~${p.expectedDowntimeMs} ms`);
  return `${bar} ${parts.join(', ')}`;
}

export function registerMigrateCommands(program: Command, ctx: CommandContext): void {
  const vm = program.commands.find((c) => c.name() === 'vm') ?? program.command('vm');
  vm.command('migrate')
    .description('live-migrate a running VM to another host (local disks mirrored, over a network path made for it); several names move together as a group with one switch-over; Ctrl-C cancels before the switch-over')
    .argument('<names...>')
    .requiredOption('--to <host>', 'the destination host; a group may give one per VM: A=h1,B=h2')
    .option('--max-bandwidth <rate>', 'bandwidth cap, e.g. 500M (bytes per second)')
    .option('--downtime-limit <ms>', 'the longest stop at the switch-over QEMU plans for', intOption('--downtime-limit'))
    .option('--postcopy <mode>', 'auto (when pre-copy does not converge), never, always', choice('--postcopy', ['auto', 'never', 'always'] as const))
    .option('--auto-converge', "throttle the guest's vCPUs while it dirties memory too fast")
    .option('--timeout <s>', 'time budget in seconds; a migration that has not converged by then is stopped', intOption('--timeout'))
    .option('--storage <mode>', 'auto (copy disks the destination does not see), shared, copy', choice('--storage', ['auto', 'shared', 'copy'] as const))
    .option('--no-tls', 'send memory and disks without TLS (still on the isolated path)')
    .option('--mode <mode>', 'a group: consistent (all or none, the default) or available (the members that reached their switch-over move)', choice('--mode', ['consistent', 'available'] as const))
    .option('--no-wait', 'print the task and return at once')
    .option('--json', 'print JSON')
    .action((names: string[], o: { to: string; mode?: 'consistent' | 'available'; maxBandwidth?: string; downtimeLimit?: number; postcopy?: MigrateRequest['postcopy']; autoConverge?: boolean; timeout?: number; storage?: MigrateRequest['storage']; tls: boolean; wait: boolean; json?: boolean }) =>
      ctx.run(Boolean(o.json), async () => {
        const client = ctx.client();
        const request: Partial<MigrateRequest> = { to: o.to, tls: o.tls };
        if (o.maxBandwidth !== undefined) request.maxBandwidth = o.maxBandwidth;
        if (o.downtimeLimit !== undefined) request.downtimeLimitMs = o.downtimeLimit;
        if (o.postcopy) request.postcopy = o.postcopy;
        if (o.autoConverge) request.autoConverge = true;
        if (o.timeout !== undefined) request.timeoutS = o.timeout;
        if (o.storage) request.storage = o.storage;
        if (names.length > 1 || o.mode || o.to.includes('=')) return migrateGroupCommand(client, names, o, request);
        const name = names[0] as string;
        const started = await new MigrateClient(client).migrate(name, request);
        const taskId = started.task?.id as string;
        if (!o.wait) return o.json ? printJson(started) : void process.stdout.write(`${taskId}\n`);
        const cancel = () => void client.cancelTask(taskId).catch(() => undefined);
        process.once('SIGINT', cancel);
        const tty = process.stderr.isTTY && !o.json;
        let task: TaskRecord;
        try {
          task = await client.waitTask(taskId, o.json ? undefined : (t) => (tty ? process.stderr.write(`\r\x1b[K${progressLine(t)}`) : undefined));
        } finally {
          process.off('SIGINT', cancel);
          if (tty) process.stderr.write('\n');
        }
        if (task.state !== 'succeeded') throw task.error ? new OffshootError(task.error.code, task.error.message, task.error.details, 500) : new OffshootError('MIGRATION_FAILED', task.message, {}, 500);
        const result = task.result as MigrateResult;
        if (o.json) return printJson(result);
        process.stdout.write(`${result.vm} runs on ${result.to}\n`);
        process.stderr.write(
          `downtime ${result.downtimeMs ?? '?'} ms, total ${result.totalMs} ms, memory ${Math.round(result.memoryBytes / MiB)} MiB in ${result.passes} passes${result.postcopy ? ' (post-copy)' : ''}, disks ${Math.round(result.diskBytes / MiB)} MiB, path ${result.path.linkName} (VNI ${result.path.vni}, ${result.path.sourceAddress} -> ${result.path.destinationAddress})\n`,
        );
      }),
    );
}
